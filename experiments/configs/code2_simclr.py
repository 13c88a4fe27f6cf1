"""SimCLR pretraining of the Ribeiro ResNet on CODE-II (labels are not read).

Command:
    ecgfm pretrain --config experiments/configs/code2_simclr.py --workdir workdirs/code2_simclr \
        --config.data.path=/data/code2

Hardware: 8 GPUs or a TPU v4-32 pod slice; global batch 512 (1,022 negatives per view, the
similarity matrix spans all devices), 100k steps, bf16 compute. Runtime and the linear-probe
macro AUROC of the exported encoder: not yet measured (no access to CODE-II here).
"""

import pathlib

from ml_collections import ConfigDict

from ecgfm.config import load_config


def get_config() -> ConfigDict:
    """`code2_resnet.py`'s data, encoder and schedule with the contrastive objective."""
    config = load_config(pathlib.Path(__file__).with_name("code2_resnet.py"))
    config.objective = ConfigDict(
        {
            "name": "contrastive",
            "method": "simclr",
            "view": "",
            "temperature": 0.1,
            "projection_hidden": 512,
            "projection_dim": 128,
            "augmentations": ("random_crop_resize", "three_kg", "amplitude_scale",
                              "gaussian_noise", "baseline_wander"),
            "augment_probability": 0.8,
        }
    )  # fmt: skip
    # The time-based augmentations work in seconds: the data's rate, linked so it cannot drift.
    config.objective.sampling_rate = config.data.preprocessing.get_ref("sampling_rate")
    return config
