"""Ribeiro et al.'s ResNet on CODE-15% (6 labels), as in their Nature Communications paper.

Prepare the data once, then train (the prepare step stores the spec this config expects):
    ecgfm prepare code --src /data/code15 --data-dir /data/tfds \
        --config experiments/configs/code15_resnet.py
    ecgfm pretrain --config experiments/configs/code15_resnet.py --workdir workdirs/code15_resnet \
        --config.data.path=/data/tfds

Hardware: 1 GPU (A100/H100) or a TPU v4-8; ~345k exams, 4096 samples at 400 Hz, batch 64,
50 epochs ≈ 270k steps. Runtime (not yet measured): roughly a day on one A100 at fp32.
Expected: validation macro AUROC ≈ 0.95–0.97 (the paper reports per-class F1 on its own test
set, not AUROC; treat this as an estimate until measured).
"""

from ml_collections import ConfigDict

from ecgfm.experiment import base_config
from ecgfm.models import model_section


def get_config() -> ConfigDict:
    """Ribeiro ResNet, CODE-15%, the paper's optimiser settings (Adam 1e-3, batch 64)."""
    config = base_config()
    config.data.path = ""  # required: the --data-dir of `ecgfm prepare code`
    config.data.preprocessing.num_samples = 4096  # 10.24 s at 400 Hz
    config.data.worker_count = 4
    config.model = model_section("ribeiro_resnet", dropout=0.2, input_length=4096)
    config.model.hparams.input_length = config.data.preprocessing.get_ref("num_samples")
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 1000
    config.optim.weight_decay = 0.0
    config.train.steps = 270_000
    config.train.global_batch_size = 64
    config.train.log_every = 100
    config.train.eval_every = 5000
    config.train.checkpoint_every = 2000
    return config
