"""Smoke run of a supervised S4: a tiny bidirectional S4D encoder with a pooled linear head.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke_s4.py --workdir /tmp/ecgfm_s4

Hardware: any CPU. Measured: 30 s wall on 2 CPU cores with load average 3.7–4.0 (shared
machine), including compilation; 48 s under a load of 5.5.
`smoke.py`'s data, objective and schedule (192 synthetic CODE-layout exams, masked BCE on their
6 labels, 40 steps of batch 16, 2.56 s windows of 1024 samples at 400 Hz, evaluation at steps
20 and 40). The encoder is the ECG benchmark's supervised S4 at toy size: a linear input
encoder, two bidirectional S4D blocks of width 32 (state size 16), mean pooling, a linear head.
Expected (measured): finite, decreasing training loss (≈0.80 → ≈0.29), val_loss ≈0.29 and
val_macro_auroc ≈0.69 at step 40 (loosely above 0.5 after 40 steps, like `smoke.py`).
"""

from ml_collections import ConfigDict

from ecgfm.data.record import LEADS


def get_config() -> ConfigDict:
    """`smoke.py`'s fields, with the S4 encoder."""
    config = ConfigDict()
    config.seed = 0

    config.data = ConfigDict()
    config.data.source = "code_hdf5"
    config.data.path = ""  # empty: WORKDIR/data
    config.data.synthetic_exams = 192  # 0: the folder must exist
    config.data.synthetic_seed = 0
    config.data.val_fraction = 0.25
    config.data.split_seed = 0  # patient-level train/validation split
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
    config.model.name = "s4"
    config.model.hparams = ConfigDict(
        {
            "width": 32,
            "depth": 2,
            "state_size": 16,
            "bidirectional": True,
            "stem_widths": (),  # a linear input encoder, as the benchmark's S4Model
            "init": "lin",
            "dropout": 0.1,
            "dtype": "float32",
        }
    )

    config.objective = ConfigDict()
    config.objective.name = "supervised"
    config.objective.pos_weight = None

    config.optim = ConfigDict()
    config.optim.learning_rate = 3e-3
    config.optim.schedule = "warmup_cosine"
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
    config.resume = ""
    config.init_from = ""
    return config
