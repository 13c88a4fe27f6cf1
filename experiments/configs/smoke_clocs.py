"""Smoke run of CLOCS (CMSC): adjacent halves of an exam are positives, cross-view negatives.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke_clocs.py --workdir /tmp/ecgfm_clocs

Hardware: any CPU; ≈20 s on 2 CPU cores including compilation. `smoke.py`'s data and
schedule; the encoder sees 1.28 s halves (512 samples) of each 2.56 s window. Expected
(measured): the loss falls from ≈2.1 to ≈0.7, val_loss ≈2.1 at step 40; `embedding_std` stays
≈0.3–0.5. `--config.objective.view=cmlc` contrasts lead-disjoint views of one window;
`view=patient` two exams of one patient (with `--config.data.patient_pairs=true`).
"""

from ml_collections import ConfigDict

from ecgfm.experiment import base_config
from ecgfm.models import model_section
from ecgfm.objectives import objective_section


def get_config() -> ConfigDict:
    """CLOCS (CMSC) on the smoke data; the encoder sees half windows."""
    config = base_config()
    config.data.synthetic_exams = 192
    config.data.preprocessing.num_samples = 1024
    config.model = model_section(
        "ribeiro_resnet", widths=(8, 16, 16), kernel_size=7, dropout=0.0, input_length=1024
    )
    config.objective = objective_section(
        "contrastive", method="clocs", view="cmsc", temperature=0.1, projection_hidden=64,
        projection_dim=32,
    )  # fmt: skip
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 5
    config.train.steps = 40
    config.train.global_batch_size = 16
    config.train.log_every = 1
    config.train.eval_every = 20
    config.train.checkpoint_every = 10
    return config
