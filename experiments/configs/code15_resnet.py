"""Ribeiro et al.'s ResNet on CODE-15% (6 labels), as in their Nature Communications paper.

Command:
    ecgfm pretrain --config experiments/configs/code15_resnet.py --workdir workdirs/code15_resnet \
        --config.data.path=/data/code15

Hardware: 1 GPU (A100/H100) or a TPU v4-8; ~345k exams, 4096 samples at 400 Hz, batch 64,
50 epochs ≈ 270k steps. Runtime (not yet measured): roughly a day on one A100 at fp32.
Expected: validation macro AUROC ≈ 0.95–0.97 (the paper reports per-class F1 on its own test
set, not AUROC; treat this as an estimate until measured).
"""

import pathlib

from ml_collections import ConfigDict

from ecgfm.config import load_config


def get_config() -> ConfigDict:
    """Ribeiro ResNet, CODE-15%, the paper's optimiser settings (Adam 1e-3, batch 64)."""
    # Same fields as the smoke config (one place defines them); values below replace them.
    config = load_config(pathlib.Path(__file__).with_name("smoke.py"))
    config.data.path = ""  # required: the raw CODE-15% folder (exams.csv + exams_part*.hdf5)
    config.data.synthetic_exams = 0
    config.data.val_fraction = 0.02
    config.data.split_seed = 0  # patient-level train/validation split
    config.data.preprocessing.num_samples = 4096  # 10.24 s at 400 Hz
    config.model.hparams = ConfigDict(
        {"widths": (64, 128, 196, 256, 320), "kernel_size": 16, "dropout": 0.2,
         "input_length": 4096, "dtype": "float32"}
    )  # fmt: skip
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 1000
    config.optim.weight_decay = 0.0
    config.train.steps = 270_000
    config.train.global_batch_size = 64
    config.train.log_every = 100
    config.train.eval_every = 5000
    config.train.checkpoint_every = 2000
    config.train.async_checkpoint = True
    return config
