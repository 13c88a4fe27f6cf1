"""Smoke run of JEPA: a tiny ViT-1D predicts its EMA copy's features of masked blocks.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke_jepa.py --workdir /tmp/ecgfm_jepa

Hardware: any CPU; ≈31 s on 2 CPU cores including compilation. `smoke.py`'s data and
schedule, `smoke_mae.py`'s ViT; 4 target blocks of 6 leads × 2 patches of the 12 × 16 token
grid. Expected (measured): the smooth-L1 prediction loss falls from ≈0.72 to ≈0.36,
`val_prediction_loss` ≈0.36; `embedding_std` ≈0.1 (watch it: 0 would be collapse).
"""

from ml_collections import ConfigDict

from ecgfm.experiment import base_config
from ecgfm.models import model_section
from ecgfm.objectives import objective_section


def get_config() -> ConfigDict:
    """JEPA on the smoke data with a tiny ViT-1D."""
    config = base_config()
    config.data.synthetic_exams = 192
    config.data.preprocessing.num_samples = 1024
    config.model = model_section(
        "vit1d", patch_size=64, width=32, depth=2, num_heads=2, max_patches=16
    )
    config.objective = objective_section(
        "jepa", num_blocks=4, block_leads=6, block_patches=2, ema_momentum=0.99,
        decoder_width=32, decoder_depth=1, decoder_heads=2,
    )  # fmt: skip
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 5
    config.optim.weight_decay = 0.05
    config.train.steps = 40
    config.train.global_batch_size = 16
    config.train.log_every = 1
    config.train.eval_every = 20
    config.train.checkpoint_every = 10
    return config
