"""Smoke run of ST-MEM masked signal modelling with a tiny ViT-1D.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke_mae.py --workdir /tmp/ecgfm_mae

Hardware: any CPU. Measured: 26 s wall on 2 CPU cores with load average 3.5 (shared machine),
including compilation.
`smoke.py`'s data and schedule; a ViT of
width 32 and depth 2 over 0.16 s patches (64 samples) of each lead: 12 × 16 = 192 tokens, of
which 75 % are dropped and reconstructed.
Expected (measured): the masked-patch MSE (per-patch normalised targets) falls from ≈2.2 to
≈1.0 (the per-patch mean: 40 steps learn little more), `val_reconstruction_loss` ≈1.0,
`embedding_std` ≈0.1–0.2.
"""

import pathlib

from ml_collections import ConfigDict

from ecgfm.config import load_config


def vit_smoke_hparams() -> ConfigDict:
    """The tiny ViT-1D of the masked smoke runs (1024-sample windows)."""
    return ConfigDict(
        {"patch_size": 64, "width": 32, "depth": 2, "num_heads": 2, "max_patches": 16,
         "dtype": "float32"}
    )  # fmt: skip


def get_config() -> ConfigDict:
    """`smoke.py` with the masked objective on a tiny ViT-1D."""
    config = load_config(pathlib.Path(__file__).with_name("smoke.py"))
    config.model.name = "vit1d"
    config.model.hparams = vit_smoke_hparams()
    config.objective = ConfigDict(
        {
            "name": "masked",
            "mask_ratio": 0.75,
            "norm_targets": True,
            "decoder_width": 32,
            "decoder_depth": 1,
            "decoder_heads": 2,
        }
    )
    config.optim.weight_decay = 0.05
    return config
