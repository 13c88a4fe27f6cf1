"""Smoke run of ST-MEM masked signal modelling with a tiny ViT-1D.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke_mae.py --workdir /tmp/ecgfm_mae

Hardware: any CPU; ≈26 s on 2 CPU cores including compilation. `smoke.py`'s data and
schedule; a ViT of width 32 and depth 2 over 0.16 s patches (64 samples) of each lead:
12 × 16 = 192 tokens, of which 75 % are dropped and reconstructed. Expected (measured): the
masked-patch MSE (per-patch normalised targets) falls from ≈2.2 to ≈1.0 (the per-patch mean:
40 steps learn little more), `val_reconstruction_loss` ≈1.0, `embedding_std` ≈0.1–0.2.
"""

from ml_collections import ConfigDict

from ecgfm.experiment import base_config
from ecgfm.models import model_section
from ecgfm.objectives import objective_section


def get_config() -> ConfigDict:
    """Masked modelling on the smoke data with a tiny ViT-1D."""
    config = base_config()
    config.data.synthetic_exams = 192
    config.data.preprocessing.num_samples = 1024
    config.model = model_section(
        "vit1d", patch_size=64, width=32, depth=2, num_heads=2, max_patches=16
    )
    config.objective = objective_section(
        "masked", mask_ratio=0.75, decoder_width=32, decoder_depth=1, decoder_heads=2
    )
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 5
    config.optim.weight_decay = 0.05
    config.train.steps = 40
    config.train.global_batch_size = 16
    config.train.log_every = 1
    config.train.eval_every = 20
    config.train.checkpoint_every = 10
    return config
