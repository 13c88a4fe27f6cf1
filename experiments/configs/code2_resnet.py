"""Ribeiro ResNet on CODE-II (66 labels): the supervised baseline encoder.

Prepare the data once (`ecgfm prepare code --src /data/code2 --data-dir /data/tfds --config
experiments/configs/code2_resnet.py`; on a cluster through Beam, see the README), then:
    ecgfm pretrain --config experiments/configs/code2_resnet.py --workdir workdirs/code2_resnet \
        --config.data.path=/data/tfds

Hardware: 8 GPUs (one SLURM node, experiments/launch/slurm_gpu.sh) or a TPU v4-32 pod slice
(experiments/launch/tpu_pod.sh); ~2.7M exams, batch 512, ~100k steps, bf16 compute, 8 grain
workers per host. Runtime and expected macro AUROC: not yet measured (no access to CODE-II
during development).
"""

from ml_collections import ConfigDict

from ecgfm.experiment import base_config
from ecgfm.models import model_section


def get_config() -> ConfigDict:
    """CODE-II, 66 classes; bf16 compute with fp32 master weights."""
    config = base_config()
    config.data.path = ""  # required: the --data-dir of `ecgfm prepare code`
    config.data.preprocessing.num_samples = 4096
    config.data.worker_count = 8
    config.model = model_section("ribeiro_resnet", dropout=0.2, input_length=4096, dtype="bfloat16")
    config.model.hparams.input_length = config.data.preprocessing.get_ref("num_samples")
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 2000
    config.optim.weight_decay = 1e-4
    config.train.steps = 100_000
    config.train.global_batch_size = 512
    config.train.log_every = 100
    config.train.eval_every = 5000
    config.train.checkpoint_every = 2000
    return config
