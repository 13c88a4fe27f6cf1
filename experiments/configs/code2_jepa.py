"""JEPA pretraining of the ViT-S/1d on CODE-II (labels are not read).

Command:
    ecgfm pretrain --config experiments/configs/code2_jepa.py --workdir workdirs/code2_jepa \
        --config.data.path=/data/code2

Hardware: a TPU v4-32 pod slice or 8 GPUs; batch 512, 100k steps, bf16, FSDP over 4 devices
(the EMA target encoder is replicated). 4 target blocks of 6 leads × 8 patches (1.5 s) of the
12 × 54 token grid; predictor width 192, depth 6. Runtime and linear-probe macro AUROC: not yet
measured.
"""

import pathlib

from ml_collections import ConfigDict

from ecgfm.config import load_config


def get_config() -> ConfigDict:
    """`code2_vit.py`'s data, encoder and schedule with the JEPA objective."""
    config = load_config(pathlib.Path(__file__).with_name("code2_vit.py"))
    config.objective = ConfigDict(
        {
            "name": "jepa",
            "num_blocks": 4,
            "block_leads": 6,
            "block_patches": 8,
            "context_fraction": 1.0,
            "ema_momentum": 0.996,
            "decoder_width": 192,
            "decoder_depth": 6,
            "decoder_heads": 6,
        }
    )
    config.model.hparams.head_dropout = 0.0
    return config
