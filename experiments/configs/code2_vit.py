"""ViT-S/1d on CODE-II (66 labels), supervised.

Command:
    ecgfm pretrain --config experiments/configs/code2_vit.py --workdir workdirs/code2_vit \
        --config.data.path=/data/code2

Hardware: a TPU v4-32 pod slice or 8 GPUs; batch 512, 100k steps, bf16, FSDP over 4 devices.
Runtime and expected macro AUROC: not yet measured.
"""

import pathlib

from ml_collections import ConfigDict

from ecgfm.config import load_config


def get_config() -> ConfigDict:
    """ViT over 0.1875 s patches (75 samples at 400 Hz) of each lead; AdamW with warm-up."""
    config = load_config(pathlib.Path(__file__).with_name("code2_resnet.py"))
    config.data.preprocessing.num_samples = 4050  # 54 patches of 75 samples
    config.data.preprocessing.normalization = "per_lead_standardize"
    config.model.name = "vit1d"
    config.model.hparams = ConfigDict(
        {"patch_size": 75, "width": 384, "depth": 12, "num_heads": 6, "max_patches": 54,
         "dropout": 0.0, "head_dropout": 0.1, "dtype": "bfloat16"}
    )  # fmt: skip
    config.optim.learning_rate = 5e-4
    config.optim.weight_decay = 0.05
    config.optim.warmup_steps = 5000
    config.mesh.fsdp = 4
    return config
