"""Smoke run of CPC: a tiny causal S4D encoder predicts its own latents 1, 4 and 12 samples ahead.

Command (CPU is enough):
    ecgfm pretrain --config experiments/configs/smoke_cpc.py --workdir /tmp/ecgfm_cpc

Hardware: any CPU. Measured: 33 s wall on 2 CPU cores with load average 1.9–3.7 (shared
machine), including compilation; 89 s under a load of 5.5. The run is deterministic.
`smoke.py`'s data and schedule (192 synthetic CODE-layout exams, 40 steps of batch 16, 2.56 s
windows of 1024 samples at 400 Hz, evaluation at steps 20 and 40), no labels read. The encoder
is ECG-CPC's shape at toy size: a pointwise stem of two 32-wide layers gives per-sample
latents, a causal S4D stack (width 32, depth 2, state size 16) the context; negatives are the
other exams of the global batch at the same time step (16 candidates: chance accuracy 1/16).
Expected (measured): the InfoNCE loss falls from ≈5.7 to ≈1.7 (chance is log 16 ≈ 2.8 once
the scores are calibrated; they start too large), the prediction accuracy rises from ≈0.05 to
≈0.4 (`accuracy_step1` ≈0.46 > `accuracy_step4` ≈0.44 > `accuracy_step12` ≈0.33: the
further ahead, the harder), `val_prediction_loss` ≈1.78 and `val_accuracy` ≈0.41 at step
40 (≈2.3 and ≈0.25 at step 20); `embedding_std` stays ≈0.45–0.6.
"""

from ml_collections import ConfigDict

from ecgfm.data.record import LEADS


def get_config() -> ConfigDict:
    """`smoke.py`'s fields, with the S4 encoder and the CPC objective."""
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
            "bidirectional": False,  # CPC's context network must be causal
            "stem_widths": (32, 32),
            "init": "lin",
            "dropout": 0.1,
            "dtype": "float32",
        }
    )

    config.objective = ConfigDict()
    config.objective.name = "cpc"
    config.objective.steps_ahead = (1, 4, 12)
    config.objective.negatives = "batch"
    config.objective.num_negatives = 128  # used by negatives="sequence" only
    config.objective.predictor_hidden = 32

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
