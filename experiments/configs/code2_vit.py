"""ViT-S/1d on CODE-II (66 labels), supervised.

Prepare the data once with this config's spec (`ecgfm prepare code --src /data/code2
--data-dir /data/tfds_vit --config experiments/configs/code2_vit.py`), then:
    ecgfm pretrain --config experiments/configs/code2_vit.py --workdir workdirs/code2_vit \
        --config.data.path=/data/tfds_vit

Hardware: a TPU v4-32 pod slice or 8 GPUs; batch 512, 100k steps, bf16, FSDP over 4 devices.
Runtime and expected macro AUROC: not yet measured.
"""

from ml_collections import ConfigDict

from ecgfm.experiment import base_config
from ecgfm.models import model_section


def get_config() -> ConfigDict:
    """ViT over 0.1875 s patches (75 samples at 400 Hz) of each lead; AdamW with warm-up."""
    config = base_config()
    config.data.path = ""  # required: the --data-dir of `ecgfm prepare code --config <this>`
    config.data.preprocessing.num_samples = 4050  # 54 patches of 75 samples
    config.data.preprocessing.normalization = "per_lead_standardize"
    config.data.worker_count = 8
    config.model = model_section(
        "vit1d", patch_size=75, width=384, depth=12, num_heads=6, max_patches=54,
        head_dropout=0.1, dtype="bfloat16",
    )  # fmt: skip
    config.optim.learning_rate = 5e-4
    config.optim.weight_decay = 0.05
    config.optim.warmup_steps = 5000
    config.train.steps = 100_000
    config.train.global_batch_size = 512
    config.train.log_every = 100
    config.train.eval_every = 5000
    config.train.checkpoint_every = 2000
    config.mesh.fsdp = 4
    return config
