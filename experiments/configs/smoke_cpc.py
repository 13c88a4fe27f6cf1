"""Smoke run of CPC: a tiny causal S4D encoder predicts its own latents 1, 4 and 12 samples ahead.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke_cpc.py --workdir /tmp/ecgfm_cpc

Hardware: any CPU. Measured: 33 s wall on 2 CPU cores with load average 1.9–3.7 (shared
machine), including compilation; 89 s under a load of 5.5. The run is deterministic.
`smoke.py`'s data and schedule (192 synthetic CODE-layout exams, packed, 40 steps of batch 16,
2.56 s windows of 1024 samples at 400 Hz, evaluation at steps 20 and 40), no labels read. The
encoder is ECG-CPC's shape at toy size: a pointwise stem of two 32-wide layers gives per-sample
latents, a causal S4D stack (width 32, depth 2, state size 16) the context; negatives are the
other exams of the global batch at the same time step (16 candidates: chance accuracy 1/16).
Expected (measured): the InfoNCE loss falls from ≈5.7 to ≈1.7 (chance is log 16 ≈ 2.8 once the
scores are calibrated; they start too large), the prediction accuracy rises from ≈0.05 to ≈0.4
(`accuracy_step1` ≈0.46 > `accuracy_step4` ≈0.44 > `accuracy_step12` ≈0.33: the further ahead,
the harder), `val_prediction_loss` ≈1.78 and `val_accuracy` ≈0.41 at step 40 (≈2.3 and ≈0.25 at
step 20); `embedding_std` stays ≈0.45–0.6.
"""

from ml_collections import ConfigDict

from ecgfm.experiment import base_config
from ecgfm.models import model_section
from ecgfm.objectives import objective_section


def get_config() -> ConfigDict:
    """The smoke data and schedule, with a tiny causal S4 and the CPC objective."""
    config = base_config()
    config.data.synthetic_exams = 192
    config.data.preprocessing.num_samples = 1024
    config.model = model_section(
        "s4", width=32, depth=2, state_size=16,
        bidirectional=False,  # CPC's context network must be causal
        stem_widths=(32, 32), init="lin", dropout=0.1,
    )  # fmt: skip
    config.objective = objective_section(
        "cpc", steps_ahead=(1, 4, 12), negatives="batch", predictor_hidden=32
    )
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 5
    config.train.steps = 40
    config.train.global_batch_size = 16
    config.train.log_every = 1
    config.train.eval_every = 20
    config.train.checkpoint_every = 10
    return config
