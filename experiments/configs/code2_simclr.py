"""SimCLR pretraining of the Ribeiro ResNet on CODE-II (labels are not read).

Prepare as for `code2_resnet.py` (the same spec), then:
    ecgfm pretrain --config experiments/configs/code2_simclr.py --workdir workdirs/code2_simclr \
        --config.data.path=/data/tfds

Hardware: 8 GPUs or a TPU v4-32 pod slice; global batch 512 (negatives span the whole global
batch), 100k steps, bf16 compute. Runtime and linear-probe macro AUROC: not yet measured.
"""

from ml_collections import ConfigDict

from ecgfm.experiment import base_config
from ecgfm.models import model_section
from ecgfm.objectives import objective_section


def get_config() -> ConfigDict:
    """CODE-II, the Ribeiro ResNet, SimCLR with ECG augmentations (3KG among them)."""
    config = base_config()
    config.data.path = ""  # required: the --data-dir of `ecgfm prepare code`
    config.data.preprocessing.num_samples = 4096
    config.data.worker_count = 8
    config.model = model_section("ribeiro_resnet", input_length=4096, dtype="bfloat16")
    config.model.hparams.input_length = config.data.preprocessing.get_ref("num_samples")
    config.objective = objective_section(
        "contrastive", method="simclr", temperature=0.1, projection_hidden=512,
        projection_dim=128,
        augmentations=("random_crop_resize", "three_kg", "amplitude_scale", "gaussian_noise",
                       "baseline_wander"),
    )  # fmt: skip
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 2000
    config.train.steps = 100_000
    config.train.global_batch_size = 512
    config.train.log_every = 100
    config.train.eval_every = 5000
    config.train.checkpoint_every = 2000
    return config
