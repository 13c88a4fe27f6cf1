"""HuBERT-ECG (Hugging Face folder: `config.json` + `model.safetensors`), read without torch.

Architecture: `ecgfm.models.wav2vec2` with `input_layout="leads_concatenated"`: HuBERT-ECG is
transformers' `HubertModel` (`HuBERTECG` adds only pre-training heads), fed the 12 leads laid
end to end (Edoar-do/HuBERT-ECG `hubert_ecg/dataset.py`: `reshape(-1)`). Every
hyperparameter comes from `config.json` (fields left out there take `HubertConfig`'s
defaults, as transformers does). Accepted:

- a pre-trained model (`HuBERTECG`): its `final_proj.N.*`, `label_embedding.N.*` and
  `masked_spec_embed` serve pre-training only; they are dropped and listed in the card;
- a fine-tuned `HuBERTECGForClassification` with the linear head (`hubert_ecg.*` +
  `classifier.weight/bias`): the head is kept, its activation from `task_type`
  (multi_label: sigmoid, multi_class: softmax, regression: none). Its MLP and
  label-embedding heads are refused (by `config.json`, else by their keys).

The position convolution's weight norm may be stored either way PyTorch names it
(`weight_g`/`weight_v`, or `parametrizations.weight.original0/1`); both are folded into one
kernel. `model.safetensors` is read with `safetensors` (no code runs); a `pytorch_model.bin`
with ecgfm's torch-free reader.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import numpy as np

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.interop import wav2vec2
from ecgfm.interop.base import Imported, sha256
from ecgfm.interop.convert import fold_weight_norm
from ecgfm.interop.torch_file import find_state_dict, read_torch_checkpoint

# transformers' HubertConfig defaults: `save_pretrained` writes only the fields that differ.
HUBERT_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "feat_extract_activation": "gelu",
    "feat_extract_norm": "group",
    "feat_proj_layer_norm": True,
    "conv_dim": [512, 512, 512, 512, 512, 512, 512],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_bias": False,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "do_stable_layer_norm": False,
    "layer_norm_eps": 1e-5,
    "conv_pos_batch_norm": False,
}
# Pre-training only: `HuBERTECG`'s per-codebook `final_proj.N` and `label_embedding.N`, and
# HubertModel's mask embedding (a classifier's own `label_embedding.weight` is not one of them).
_PRETRAINING_ONLY = re.compile(r"(final_proj|label_embedding)\.\d+\.|masked_spec_embed$")
_POS_CONV = "encoder.pos_conv_embed.conv"
KEYS = wav2vec2.Wav2Vec2Keys(
    conv="feature_extractor.conv_layers.{i}.conv",
    group_norm="feature_extractor.conv_layers.{i}.layer_norm",
    layer_norm="feature_extractor.conv_layers.{i}.layer_norm",
    feature_norm="feature_projection.layer_norm",
    projection="feature_projection.projection",
    pos_conv=_POS_CONV,
    encoder_norm="encoder.layer_norm",
    layer="encoder.layers.{i}",
    layer_attention="attention",
    layer_attn_norm="layer_norm",
    layer_fc1="feed_forward.intermediate_dense",
    layer_fc2="feed_forward.output_dense",
    layer_ff_norm="final_layer_norm",
    head="classifier",
)
# HuBERTECGClassificationConfig.task_type → what turns the head's outputs into predictions.
ACTIVATIONS = {"multi_label": "sigmoid", "multi_class": "softmax", "regression": "none"}
_HINT = (
    "expected transformers HubertModel keys (HuBERT-ECG), optionally under `hubert_ecg.`, and "
    "the linear `classifier` (the MLP and label-embedding heads are not supported)"
)
_LICENSE = (
    "CC BY-NC 4.0 (code: Edoar-do/HuBERT-ECG README and pyproject.toml; weights: the "
    "Hugging Face model cards): non-commercial use only"
)


def _files(src: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(config.json, weights file) of a HF folder, or of a weights file beside its config."""
    folder = src if src.is_dir() else src.parent
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (HuBERT-ECG's architecture is in it)")
    if not src.is_dir():
        return config, src
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return config, folder / name
    if (folder / "model.safetensors.index.json").is_file():
        raise ValueError(f"{folder}: sharded safetensors are not supported; merge the shards")
    raise FileNotFoundError(f"{folder}: neither model.safetensors nor pytorch_model.bin")


def _read_state(weights: pathlib.Path) -> dict[str, np.ndarray]:
    if weights.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(str(weights))
        except (SafetensorError, OSError, TypeError) as error:
            # TypeError: a dtype numpy lacks (bfloat16); such files are not published.
            raise ValueError(f"{weights}: not a readable safetensors file ({error})") from None
    return find_state_dict(read_torch_checkpoint(weights), ("state_dict", "model"))


def _conv_layers(c: dict[str, Any]) -> list[list[int]]:
    try:
        return [
            list(x) for x in zip(c["conv_dim"], c["conv_kernel"], c["conv_stride"], strict=True)
        ]
    except (TypeError, ValueError):
        raise ValueError(
            "conv_dim, conv_kernel and conv_stride must be lists of one length"
        ) from None


def infer_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """`wav2vec2` hyperparameters from a HuBERT-ECG `config.json` (HubertConfig fields)."""
    c = HUBERT_DEFAULTS | config
    for field in ("hidden_act", "feat_extract_activation"):
        if c[field] != "gelu":
            raise ValueError(f"{field} is {c[field]!r}; only 'gelu' (HuBERT-ECG's) is supported")
    if c["conv_pos_batch_norm"]:
        raise ValueError(
            "conv_pos_batch_norm is set; only the weight-normalised position conv "
            "(HuBERT-ECG's) is supported"
        )
    if c["feat_extract_norm"] not in ("group", "layer"):
        raise ValueError(f"feat_extract_norm {c['feat_extract_norm']!r} is not 'group' or 'layer'")
    return {
        "input_layout": "leads_concatenated",
        "num_leads": 12,
        "conv_layers": _conv_layers(c),
        "conv_bias": bool(c["conv_bias"]),
        "extractor_norm": c["feat_extract_norm"],
        "feature_norm": bool(c["feat_proj_layer_norm"]),
        "project_features": True,
        "width": int(c["hidden_size"]),
        "depth": int(c["num_hidden_layers"]),
        "heads": int(c["num_attention_heads"]),
        "mlp_dim": int(c["intermediate_size"]),
        "conv_pos": int(c["num_conv_pos_embeddings"]),
        "conv_pos_groups": int(c["num_conv_pos_embedding_groups"]),
        "layer_norm_first": bool(c["do_stable_layer_norm"]),
        "layer_norm_eps": float(c["layer_norm_eps"]),
    }


def _label_names(config: dict, num_classes: int) -> list[str]:
    """`id2label`'s names in output order, unless they are transformers' LABEL_i placeholders."""
    id2label = config.get("id2label") or {}
    try:
        names = [str(id2label[key]) for key in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        return []
    if len(names) != num_classes or names == [f"LABEL_{i}" for i in range(num_classes)]:
        return []
    return names


def read(src: str | pathlib.Path) -> Imported:
    """A HuBERT-ECG folder (or its weights file beside `config.json`)."""
    src = pathlib.Path(src)
    config_path, weights = _files(src)
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object")
    if config.get("use_label_embedding") or config.get("classifier_hidden_size"):
        raise ValueError(
            f"{config_path}: a HuBERT-ECG classifier with an MLP or label-embedding head "
            "(classifier_hidden_size / use_label_embedding); only the linear head is supported"
        )
    task_type = config.get("task_type", "multi_label")
    if task_type not in ACTIVATIONS:
        raise ValueError(
            f"{config_path}: unknown task_type {task_type!r}; known: {list(ACTIVATIONS)}"
        )
    # A classifier keeps the backbone under `hubert_ecg.`; a pre-trained model has no prefix.
    state = {k.removeprefix("hubert_ecg."): v for k, v in _read_state(weights).items()}
    dropped = sorted(k for k in state if _PRETRAINING_ONLY.match(k))
    state = {k: v for k, v in state.items() if k not in dropped}
    state = fold_weight_norm(state, _POS_CONV, 2, str(weights))
    hparams, params, model_state, head_params, num_classes = wav2vec2.read_arrays(
        state, lambda: infer_hparams(config), KEYS, str(weights), _HINT
    )
    with_head = head_params is not None
    rate, seconds = 100, 5
    return Imported(
        model="wav2vec2",
        hparams=hparams,
        params=params,
        model_state=model_state,
        head_params=head_params,
        head={
            "num_classes": num_classes,
            "activation": ACTIVATIONS[task_type],
            "meaning": f"the fine-tuned classifier's {num_classes} outputs ({task_type}: "
            f"{ACTIVATIONS[task_type]}) on the mean of the last hidden state",
        }
        if with_head
        else None,
        preprocessing=Preprocessing(
            sampling_rate=rate,
            num_samples=rate * seconds,
            bandpass=(0.05, 47.0),
            normalization="per_lead_min_max",
        ),
        notes=[
            "Input: leads I, II, III, aVR, aVL, aVF, V1–V6, 5 s at 100 Hz (500 samples per "
            "lead), laid end to end into 6,000 samples (hubert_ecg/dataset.py: a 5 s crop at "
            "500 Hz, `reshape(-1)`, then `scipy.signal.decimate(x, 5)` of the whole "
            "concatenation). ecgfm resamples each lead to 100 Hz (polyphase), so the samples "
            "next to a lead boundary differ slightly from the original's, whose decimation "
            "filter runs across the boundary.",
            "Filter: HuBERT-ECG's `ecg_preprocessing` (code/utils.py at a8af142) band-passes "
            "0.05–47 Hz with a 151-tap Hamming FIR applied forward-backward at 500 Hz (biosppy "
            "`filter_signal`; the repository's commit 4daf6b7 instead applies a 150-tap "
            "`firwin` once, causally, delaying the signal 75 samples); ecgfm applies a "
            "zero-phase Butterworth band-pass with the same corners at 100 Hz: the pass band "
            "matches, the roll-off does not exactly.",
            "Scaling: each lead to [-1, 1] by its minimum and maximum, `2 (x - min) / (max - "
            "min + 1e-8) - 1` (code/utils.py `scaling`). The original scales the whole record "
            "before cropping; ecgfm scales the window it feeds the model.",
            "Evaluation in HuBERT-ECG (scripts/evaluate.py): outputs averaged over 3 random "
            "5 s crops; ecgfm's protocol windows the record and aggregates (--aggregation).",
            "The embedding is the mean of `last_hidden_state` over time, what the fine-tuning "
            "classifier reads (hubert_ecg/modeling_classification.py).",
        ],
        label_names=_label_names(config, num_classes) if with_head else [],
        source={
            "format": "hubert_ecg (Hugging Face folder: config.json + safetensors)",
            "file": f"{weights.name} (sha256 {sha256(weights)})",
            "paper": 'Coppola, E., Savardi, M. et al. "HuBERT-ECG as a self-supervised '
            'foundation model for broad and scalable cardiac applications", medRxiv 2024, '
            "doi:10.1101/2024.11.14.24317328",
            "architecture": "transformers models/hubert/modeling_hubert.py (HubertModel); "
            "Edoar-do/HuBERT-ECG hubert_ecg/modeling.py (HuBERTECG), "
            "hubert_ecg/modeling_classification.py (HuBERTECGForClassification)",
            "weights": "huggingface.co/Edoardo-BS (hubert-ecg-small, -base, -large)",
        },
        license=_LICENSE,
        title=f"HuBERT-ECG (width {hparams['width']}, depth {hparams['depth']})",
        summary="HuBERT-ECG's self-supervised HuBERT encoder over the 12 leads laid end to end, "
        "imported from its Hugging Face folder.",
        objective="self-supervised (HuBERT masked prediction of clustered targets)"
        + (f", then supervised head ({num_classes} outputs)" if with_head else ""),
        training_data="HuBERT-ECG's pre-training collection of public 12-lead ECG datasets "
        "(listed in the paper)",
        ignored_keys=dropped,
    )
