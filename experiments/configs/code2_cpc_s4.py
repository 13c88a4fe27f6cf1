"""CPC pretraining of an S4D encoder on CODE-II: the recipe of ECG-CPC (labels are not read).

Prepare CODE-II at this config's 240 Hz once, then train:
    ecgfm prepare code --src /data/code2 --data-dir /data/tfds_240 \
        --config experiments/configs/code2_cpc_s4.py
    ecgfm pretrain --config experiments/configs/code2_cpc_s4.py --workdir workdirs/code2_cpc_s4 \
        --config.data.path=/data/tfds_240

Hardware: 1 GPU is enough (3.7 M parameters; batch 32 of 2,400 samples); bf16 is not used
(the reference trained its S4 models at `--precision 32`). Runtime and the linear-probe macro
AUROC of the exported encoder: not yet measured (no access to CODE-II here).

Where each setting comes from:
- ECG-CPC (Al-Masud, Lopez Alcaraz & Strodthoff, "Benchmarking ECG FMs: A Reality Check
  Across Clinical Tasks", ICLR 2026, arXiv 2509.25095): an S4 model pretrained with CPC on
  HEEDB (10 M samples), 3.8 M parameters, 1.741 GFLOPs (the authors' announcement),
  512-dimensional features (the benchmark code's `CPCWrapper.feature_dim`), 240 Hz input (its
  `run.sh`: `--architecture cpc --fs-model 240 --input-size 2.5`, the window of its downstream
  evaluation; both read in the fork mkeoliya/ecg-fm-benchmarking, AI4HealthUOL's repository
  itself was not readable here). Hence `sampling_rate` 240.
- The CPC/S4 architecture and optimiser are Mehari & Strodthoff's S4 CPC, whose code the
  benchmark builds on (tmehari/ssm_ecg `code/pretraining.py`; the S4 command in its header:
  `--normalize --epochs 200 --lr 0.0001 --batch-size 32 --input-size 1000 --precision 32
  --fc-encoder --negatives-from-same-seq-only --mlp --s4`, with the script's defaults
  `--steps-predicted 12 --n-false-negatives 128 --n-hidden 512 --s4-d-state 8
  --s4-d-model 512 --s4-n-layers 4 --s4-dropout 0.2`, AdamW with weight decay 1e-3 and no
  learning-rate schedule or clipping): a pointwise "fc encoder" of 4 × 512 (conv k=1 →
  BatchNorm → ReLU) for the latents, a causal 4-layer S4 (d_model 512, d_state 8) as the
  context network, an MLP projection (512 → ReLU → 512, no bias) predicting the latent 12
  steps ahead, 128 negatives from the same sequence. With these shapes our model has
  3,742,720 parameters in pretraining (3,217,920 exported), against ECG-CPC's reported 3.8 M.

Where this config differs, and why:
- S4D layers instead of the reference's DPLR S4 (see `ecgfm/models/s4.py`).
- 10 s windows (2,400 samples at 240 Hz): Mehari & Strodthoff pretrain on 10 s (1,000
  samples at 100 Hz); ECG-CPC's pretraining window was not found in the sources we could
  read, nor its learning rate, batch size or number of steps — we keep the S4 CPC's.
- `normalization="none"`: the reference's `--normalize` divides by fixed per-lead PTB-XL
  statistics (a global scale, which the stem's BatchNorm absorbs); ecgfm has no such option.
- `train.steps`: the reference trains 200 epochs over its (much smaller) collection; 300k
  steps of 32 are ~3.5 epochs of CODE-II's ~2.7 M exams, our choice for a first run.
"""

from ml_collections import ConfigDict

from ecgfm.experiment import base_config
from ecgfm.models import model_section
from ecgfm.objectives import objective_section


def get_config() -> ConfigDict:
    """CODE-II, the S4 CPC recipe at 240 Hz."""
    config = base_config()
    config.data.path = ""  # required: the --data-dir of `ecgfm prepare code --config <this>`
    config.data.preprocessing.sampling_rate = 240.0
    config.data.preprocessing.num_samples = 2400  # 10 s
    config.data.worker_count = 8
    config.model = model_section(
        "s4", width=512, depth=4, state_size=8,
        bidirectional=False,  # CPC's context network must be causal
        stem_widths=(512, 512, 512, 512), init="lin", dropout=0.2,
    )  # fmt: skip
    config.objective = objective_section(
        "cpc", steps_ahead=(12,), negatives="sequence", num_negatives=128, predictor_hidden=512
    )
    config.optim.learning_rate = 1e-4
    config.optim.schedule = "constant"
    config.optim.weight_decay = 1e-3
    config.optim.clip_norm = 0.0
    config.train.steps = 300_000
    config.train.global_batch_size = 32
    config.train.log_every = 100
    config.train.eval_every = 10_000
    config.train.checkpoint_every = 5_000
    return config
