"""Smoke run: a tiny Ribeiro ResNet on synthetic CODE-layout data, packed and trained in a minute.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke.py --workdir /tmp/ecgfm_smoke

Hardware: any CPU (2 cores: ≈30–60 s including compilation). The first run writes 192
synthetic CODE-15%-layout exams into WORKDIR/data and builds them into a packed TFDS dataset
(synth → prepare, 80/10/10 by patient), then trains 40 steps of batch 16 on 2.56 s windows
(1024 samples at 400 Hz, random crops of the 7 s / 10 s exams), checkpoints every 10 steps,
evaluates at steps 20 and 40. With `--config.data.path=DATA_DIR` it trains on what
`ecgfm prepare code --src … --data-dir DATA_DIR --config experiments/configs/smoke.py` built.
Expected: finite, decreasing training loss (≈0.69 → ≈0.4); val_macro_auroc is printed but,
with 40 steps and 19 validation exams, only loosely above 0.5. Used by the tests.
"""

from ml_collections import ConfigDict

from ecgfm.experiment import base_config
from ecgfm.models import model_section


def get_config() -> ConfigDict:
    """The smoke-run configuration."""
    config = base_config()
    config.data.synthetic_exams = 192  # used while data.path is empty
    config.data.preprocessing.num_samples = 1024
    config.model = model_section(
        "ribeiro_resnet", widths=(8, 16, 16), kernel_size=7, dropout=0.1, input_length=1024
    )
    # The flatten head is built for the window: linked, so overriding one moves the other.
    config.model.hparams.input_length = config.data.preprocessing.get_ref("num_samples")
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 5
    config.train.steps = 40
    config.train.global_batch_size = 16
    config.train.log_every = 1
    config.train.eval_every = 20
    config.train.checkpoint_every = 10
    return config
