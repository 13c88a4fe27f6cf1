"""Smoke run of JEPA: a tiny ViT-1D predicts its EMA copy's features of masked blocks.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke_jepa.py --workdir /tmp/ecgfm_jepa

Hardware: any CPU. Measured: 31 s wall on 2 CPU cores with load average 3.3 (shared machine),
including compilation.
`smoke.py`'s data and schedule, the ViT of
`smoke_mae.py`; 4 target blocks of 6 leads × 2 patches of the 12 × 16 token grid.
Expected (measured): the smooth-L1 prediction loss falls from ≈0.72 to ≈0.36,
`val_prediction_loss` ≈0.36; `embedding_std` ≈0.1 (watch it: 0 would be collapse).
"""

import pathlib

from ml_collections import ConfigDict

from ecgfm.config import load_config


def get_config() -> ConfigDict:
    """`smoke.py` with the JEPA objective on `smoke_mae.py`'s tiny ViT-1D."""
    config = load_config(pathlib.Path(__file__).with_name("smoke_mae.py"))
    config.objective = ConfigDict(
        {
            "name": "jepa",
            "num_blocks": 4,
            "block_leads": 6,
            "block_patches": 2,
            "context_fraction": 1.0,
            "ema_momentum": 0.99,
            "decoder_width": 32,
            "decoder_depth": 1,
            "decoder_heads": 2,
        }
    )
    return config
