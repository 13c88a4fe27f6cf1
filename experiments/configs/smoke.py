"""Smoke run: a tiny Ribeiro ResNet on synthetic CODE-layout data, end to end in under a minute.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke.py --workdir /tmp/ecgfm_smoke

Hardware: any CPU (2 cores: ~30–50 s including compilation). The first run writes 192
synthetic CODE-15%-layout exams into WORKDIR/data. It trains 40 steps of batch 16 on 2.56 s
windows (1024 samples at 400 Hz), checkpoints every 10 steps, evaluates at steps 20 and 40.
Expected: finite, decreasing training loss (≈0.69 → ≈0.4); val_macro_auroc is printed but,
with 40 steps, only loosely above 0.5. Used by the tests and the quick start.
"""

from ml_collections import ConfigDict

from ecgfm.data.record import LEADS


def get_config() -> ConfigDict:
    """The smoke-run configuration."""
    config = ConfigDict()
    config.seed = 0

    config.data = ConfigDict()
    config.data.source = "code_hdf5"
    config.data.path = ""  # empty: WORKDIR/data
    config.data.synthetic_exams = 192  # 0: the folder must exist
    config.data.synthetic_seed = 0
    config.data.val_fraction = 0.25
    config.data.split_seed = 0  # patient-level train/validation split
    # Every `ecgfm.data.preprocessing.Preprocessing` field, so each can be overridden from the
    # command line (e.g. --config.data.preprocessing.bandpass="(0.5, 40.0)").
    config.data.preprocessing = ConfigDict(
        {
            "sampling_rate": 400.0,
            "num_samples": 1024,
            "leads": LEADS,
            "baseline_cutoff_hz": None,
            "powerline_hz": None,
            "bandpass": None,
            "filter_order": 2,
            "notch_quality": 30.0,
            "normalization": "none",
            "input_units": "mV",
        }
    )

    config.model = ConfigDict()
    config.model.name = "ribeiro_resnet"
    config.model.hparams = ConfigDict(
        {
            "widths": (8, 16, 16),
            "kernel_size": 7,
            "dropout": 0.1,
            "input_length": 1024,
            "dtype": "float32",
        }
    )

    config.objective = ConfigDict()
    config.objective.name = "supervised"
    config.objective.pos_weight = None

    config.optim = ConfigDict()
    config.optim.learning_rate = 3e-3
    config.optim.schedule = "warmup_cosine"
    # Counts optimizer updates (train.steps / grad_accum_steps of them); the first update's
    # learning rate is 0 (see ecgfm/optim.py).
    config.optim.warmup_steps = 5
    config.optim.end_lr_fraction = 0.01
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.weight_decay = 1e-4
    config.optim.clip_norm = 1.0
    config.optim.grad_accum_steps = 1

    config.train = ConfigDict()
    config.train.steps = 40
    config.train.global_batch_size = 16
    config.train.log_every = 1
    config.train.eval_every = 20
    config.train.checkpoint_every = 10
    config.train.keep_checkpoints = 3
    config.train.async_checkpoint = True

    config.mesh = ConfigDict({"data": -1, "fsdp": 1, "model": 1})
    config.distributed = ConfigDict(
        {"coordinator_address": "", "num_processes": 0, "process_id": -1, "auto": False}
    )
    # Another workdir's checkpoints/ to continue from (its step, weights and optimizer state)
    # when this workdir has none; the data stream continues at that step.
    config.resume = ""
    # An `ecgfm export` directory whose encoder initialises a fresh run (the head is new).
    config.init_from = ""
    return config
