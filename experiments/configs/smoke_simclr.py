"""Smoke run of SimCLR: the smoke ResNet pretrained with two augmented views, no labels read.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke_simclr.py --workdir /tmp/ecgfm_simclr

Hardware: any CPU; ≈25 s on 2 CPU cores including compilation. `smoke.py`'s data (192
synthetic CODE-layout exams, packed), encoder without dropout, 40 steps of batch 16 on 2.56 s
windows. Expected (measured): the NT-Xent loss falls from ≈2.4 to ≈0.5, val_loss ≈1.1 at step
40; train and val `embedding_std` stay ≈0.4–0.5 (a collapsed encoder logs ≈0), `uniformity`
below 0.
"""

from ml_collections import ConfigDict

from ecgfm.experiment import base_config
from ecgfm.models import model_section
from ecgfm.objectives import objective_section


def get_config() -> ConfigDict:
    """SimCLR on the smoke data and encoder."""
    config = base_config()
    config.data.synthetic_exams = 192
    config.data.preprocessing.num_samples = 1024
    config.model = model_section(
        "ribeiro_resnet", widths=(8, 16, 16), kernel_size=7, dropout=0.0, input_length=1024
    )
    config.objective = objective_section(
        "contrastive",
        method="simclr",
        temperature=0.1,
        projection_hidden=64,
        projection_dim=32,
        augmentations=("random_crop_resize", "amplitude_scale", "gaussian_noise"),
    )
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 5
    config.train.steps = 40
    config.train.global_batch_size = 16
    config.train.log_every = 1
    config.train.eval_every = 20
    config.train.checkpoint_every = 10
    return config
