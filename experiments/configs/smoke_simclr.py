"""Smoke run of SimCLR: the smoke ResNet pretrained with two augmented views, no labels read.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke_simclr.py --workdir /tmp/ecgfm_simclr

Hardware: any CPU. Measured: 25 s wall on 2 CPU cores with load average 2.3 (shared machine),
including compilation.
Data, model, optimizer and schedule are `smoke.py`'s (192 synthetic CODE-layout exams, 40 steps
of batch 16, 2.56 s windows). Expected (measured): the NT-Xent loss falls from ≈2.4 to ≈0.5,
val_loss ≈1.1 at step 40; train and val `embedding_std` stay ≈0.4–0.5 (a collapsed encoder
logs ≈0), `uniformity` below 0.
"""

import pathlib

from ml_collections import ConfigDict

from ecgfm.config import load_config


def get_config() -> ConfigDict:
    """`smoke.py` with the contrastive objective, SimCLR variant."""
    config = load_config(pathlib.Path(__file__).with_name("smoke.py"))
    config.model.hparams.dropout = 0.0
    config.objective = ConfigDict(
        {
            "name": "contrastive",
            "method": "simclr",
            "view": "",
            "temperature": 0.1,
            "projection_hidden": 64,
            "projection_dim": 32,
            "augmentations": ("random_crop_resize", "amplitude_scale", "gaussian_noise"),
            "augment_probability": 0.8,
        }
    )
    # The time-based augmentations work in seconds: the data's rate, linked so it cannot drift.
    config.objective.sampling_rate = config.data.preprocessing.get_ref("sampling_rate")
    return config
