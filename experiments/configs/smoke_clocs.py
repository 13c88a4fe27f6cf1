"""Smoke run of CLOCS (CMSC): adjacent halves of an exam are positives, cross-view negatives.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke_clocs.py --workdir /tmp/ecgfm_clocs

Hardware: any CPU. Measured: 19 s wall on 2 CPU cores with load average 2.7 (shared machine),
including compilation.
`smoke.py`'s data and schedule; the encoder sees 1.28 s halves (512 samples) of each 2.56 s
window. Expected (measured): the loss falls from ≈2.1 to ≈0.7, val_loss ≈2.1 at step 40;
`embedding_std` stays ≈0.3–0.5. Set
`objective.view=cmlc` for lead-disjoint views of one window.
"""

import pathlib

from ml_collections import ConfigDict

from ecgfm.config import load_config


def get_config() -> ConfigDict:
    """`smoke.py` with the contrastive objective, CLOCS CMSC variant."""
    config = load_config(pathlib.Path(__file__).with_name("smoke.py"))
    config.model.hparams.dropout = 0.0
    config.objective = ConfigDict(
        {
            "name": "contrastive",
            "method": "clocs",
            "view": "cmsc",
            "temperature": 0.1,
            "projection_hidden": 64,
            "projection_dim": 32,
            "augmentations": (),
            "augment_probability": 0.8,
        }
    )
    # The time-based augmentations work in seconds: the data's rate, linked so it cannot drift.
    config.objective.sampling_rate = config.data.preprocessing.get_ref("sampling_rate")
    # view=patient pairs different exams of one patient: set data.patient_pairs=True too.
    config.data.patient_pairs = False
    return config
