"""JEPA pretraining of the ViT-S/1d on CODE-II (labels are not read).

Prepare as for `code2_vit.py` (the same spec), then:
    ecgfm pretrain --config experiments/configs/code2_jepa.py --workdir workdirs/code2_jepa \
        --config.data.path=/data/tfds_vit

Hardware: a TPU v4-32 pod slice or 8 GPUs; batch 512, 100k steps, bf16, FSDP over 4 devices
(the EMA target encoder is sharded like the encoder). 4 target blocks of 6 leads × 8 patches
(1.5 s) of the 12 × 54 token grid; predictor width 192, depth 6. Runtime and linear-probe
macro AUROC: not yet measured.
"""

from ml_collections import ConfigDict

from ecgfm.experiment import base_config
from ecgfm.models import model_section
from ecgfm.objectives import objective_section


def get_config() -> ConfigDict:
    """CODE-II, ViT-S/1d, I-JEPA's multi-block masking on the lead × time grid."""
    config = base_config()
    config.data.path = ""  # required: the --data-dir of `ecgfm prepare code --config <this>`
    config.data.preprocessing.num_samples = 4050  # 54 patches of 75 samples
    config.data.preprocessing.normalization = "per_lead_standardize"
    config.data.worker_count = 8
    config.model = model_section(
        "vit1d", patch_size=75, width=384, depth=12, num_heads=6, max_patches=54,
        dtype="bfloat16",
    )  # fmt: skip
    config.objective = objective_section(
        "jepa", num_blocks=4, block_leads=6, block_patches=8, ema_momentum=0.996,
        decoder_width=192, decoder_depth=6, decoder_heads=6,
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
