"""CLOCS (CMSC) pretraining of the Ribeiro ResNet on CODE-II (labels are not read).

Command:
    ecgfm pretrain --config experiments/configs/code2_clocs.py --workdir workdirs/code2_clocs \
        --config.data.path=/data/code2

Hardware: 8 GPUs or a TPU v4-32 pod slice; global batch 512, 100k steps, bf16 compute. The
encoder sees adjacent 5 s halves of each 10 s exam (CLOCS' CMSC; `objective.view=cmlc` for
lead-disjoint views). Runtime and linear-probe macro AUROC: not yet measured.
"""

import pathlib

from ml_collections import ConfigDict

from ecgfm.config import load_config


def get_config() -> ConfigDict:
    """`code2_resnet.py`'s data, encoder and schedule with the contrastive objective, CLOCS."""
    config = load_config(pathlib.Path(__file__).with_name("code2_resnet.py"))
    config.objective = ConfigDict(
        {
            "name": "contrastive",
            "method": "clocs",
            "view": "cmsc",
            "temperature": 0.1,
            "projection_hidden": 512,
            "projection_dim": 128,
            "augmentations": (),
            "augment_probability": 0.8,
        }
    )
    # The time-based augmentations work in seconds: the data's rate, linked so it cannot drift.
    config.objective.sampling_rate = config.data.preprocessing.get_ref("sampling_rate")
    # view=patient pairs different exams of one patient: set data.patient_pairs=True too.
    config.data.patient_pairs = False
    return config
