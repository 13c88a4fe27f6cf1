"""ST-MEM masked signal modelling of the ViT-S/1d on CODE-II (labels are not read).

Command:
    ecgfm pretrain --config experiments/configs/code2_mae.py --workdir workdirs/code2_mae \
        --config.data.path=/data/code2

Hardware: a TPU v4-32 pod slice or 8 GPUs; batch 512, 100k steps, bf16, FSDP over 4 devices.
12 leads × 54 patches = 648 tokens, 75 % dropped; decoder width 256, depth 4 (ST-MEM's).
Runtime, held-out reconstruction loss and linear-probe macro AUROC: not yet measured.
"""

import pathlib

from ml_collections import ConfigDict

from ecgfm.config import load_config


def get_config() -> ConfigDict:
    """`code2_vit.py`'s data, encoder and schedule with the masked objective."""
    config = load_config(pathlib.Path(__file__).with_name("code2_vit.py"))
    config.objective = ConfigDict(
        {
            "name": "masked",
            "mask_ratio": 0.75,
            "norm_targets": True,
            "decoder_width": 256,
            "decoder_depth": 4,
            "decoder_heads": 4,
        }
    )
    config.model.hparams.head_dropout = 0.0
    config.optim.learning_rate = 1.5e-4 * config.train.global_batch_size / 256
    return config
