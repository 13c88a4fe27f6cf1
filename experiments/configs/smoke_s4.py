"""Smoke run of a supervised S4: a tiny bidirectional S4D encoder with a pooled linear head.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke_s4.py --workdir /tmp/ecgfm_s4

Hardware: any CPU. Measured: 30 s wall on 2 CPU cores with load average 3.7–4.0 (shared
machine), including compilation; 48 s under a load of 5.5. `smoke.py`'s data, objective and
schedule (192 synthetic CODE-layout exams, packed, masked BCE on their 6 labels, 40 steps of
batch 16, 2.56 s windows of 1024 samples at 400 Hz, evaluation at steps 20 and 40). The encoder
is the ECG benchmark's supervised S4 at toy size: a linear input encoder, two bidirectional S4D
blocks of width 32 (state size 16), mean pooling, a linear head. Expected (measured): finite,
decreasing training loss (≈0.80 → ≈0.29), val_loss ≈0.29 and val_macro_auroc ≈0.69 at step 40
(loosely above 0.5 after 40 steps, like `smoke.py`).
"""

from ml_collections import ConfigDict

from ecgfm.experiment import base_config
from ecgfm.models import model_section


def get_config() -> ConfigDict:
    """The smoke data, objective and schedule, with a tiny bidirectional S4."""
    config = base_config()
    config.data.synthetic_exams = 192
    config.data.preprocessing.num_samples = 1024
    config.model = model_section(
        "s4", width=32, depth=2, state_size=16, bidirectional=True,
        stem_widths=(),  # a linear input encoder, as the benchmark's S4Model
        init="lin", dropout=0.1,
    )  # fmt: skip
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 5
    config.train.steps = 40
    config.train.global_batch_size = 16
    config.train.log_every = 1
    config.train.eval_every = 20
    config.train.checkpoint_every = 10
    return config
