"""Ribeiro ResNet on CODE-II (66 labels): the supervised baseline encoder.

Command:
    ecgfm pretrain --config experiments/configs/code2_resnet.py --workdir workdirs/code2_resnet \
        --config.data.path=/data/code2

Hardware: 8 GPUs (one SLURM node, experiments/launch/slurm_gpu.sh) or a TPU v4-32 pod slice
(experiments/launch/tpu_pod.sh); ~2.7M exams, batch 512, ~100k steps, bf16 compute.
Runtime and expected macro AUROC: not yet measured (no access to CODE-II during development).
"""

import pathlib

from ml_collections import ConfigDict

from ecgfm.config import load_config


def get_config() -> ConfigDict:
    """CODE-II, 66 classes; larger batch, bf16 compute with fp32 master weights."""
    config = load_config(pathlib.Path(__file__).with_name("code15_resnet.py"))
    config.data.val_fraction = 0.01
    config.model.hparams.dtype = "bfloat16"
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 2000
    config.optim.weight_decay = 1e-4
    config.train.steps = 100_000
    config.train.global_batch_size = 512
    config.distributed.auto = True
    return config
