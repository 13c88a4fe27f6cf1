"""HuBERT-ECG (Hugging Face folder: `config.json` + `model.safetensors`), read without torch.

Architecture: `ecgfm.models.wav2vec2` with `input_layout="leads_concatenated"`: HuBERT-ECG is
transformers' `HubertModel` (`HuBERTECG` adds only pre-training heads), fed the 12 leads laid
end to end (Edoar-do/HuBERT-ECG `hubert_ecg/dataset.py`: `reshape(-1)`). Every
hyperparameter comes from `config.json` (fields left out there take `HubertConfig`'s
defaults, as transformers does). Accepted:

- a pre-trained model (`HuBERTECG`): its `final_proj.*`, `label_embedding.*` and
  `masked_spec_embed` serve pre-training only; they are dropped and listed in the card;
- a fine-tuned `HuBERTECGForClassification` with the linear head (`hubert_ecg.*` +
  `classifier.weight/bias`): the head is kept. Its MLP and label-embedding heads are not
  supported (their keys are reported as unexpected).

The position convolution's weight norm may be stored either way PyTorch names it
(`weight_g`/`weight_v`, or `parametrizations.weight.original0/1`); both are folded into one
kernel. `model.safetensors` is read with `safetensors` (no code runs); a `pytorch_model.bin`
with ecgfm's torch-free reader.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.interop.base import Imported, sha256
from ecgfm.interop.convert import Entry, abstract_classifier, fill, fold_weight_norm
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
_PRETRAINING_ONLY = ("final_proj.", "label_embedding.", "masked_spec_embed")
_POS_CONV = "encoder.pos_conv_embed.conv"
_HINT = "expected transformers HubertModel keys (HuBERT-ECG), optionally under `hubert_ecg.`"
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
        except (SafetensorError, OSError) as error:
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


def _entries(hparams: dict, with_head: bool) -> list[Entry]:
    def linear(key, path):
        return [
            Entry(f"{key}.weight", ("params", *path, "kernel"), "linear"),
            Entry(f"{key}.bias", ("params", *path, "bias")),
        ]

    def norm(key, path):
        return [
            Entry(f"{key}.weight", ("params", *path, "scale")),
            Entry(f"{key}.bias", ("params", *path, "bias")),
        ]

    enc = ("encoder",)
    entries = []
    for i in range(len(hparams["conv_layers"])):
        key = f"feature_extractor.conv_layers.{i}"
        entries.append(Entry(f"{key}.conv.weight", ("params", *enc, "convs", i, "kernel"), "conv"))
        if hparams["conv_bias"]:
            entries.append(Entry(f"{key}.conv.bias", ("params", *enc, "convs", i, "bias")))
        if i == 0 or hparams["extractor_norm"] == "layer":
            entries += norm(f"{key}.layer_norm", (*enc, "conv_norms", i))
    if hparams["feature_norm"]:
        entries += norm("feature_projection.layer_norm", (*enc, "feature_norm"))
    entries += linear("feature_projection.projection", (*enc, "feature_projection"))
    entries += [
        Entry(f"{_POS_CONV}.weight", ("params", *enc, "pos_conv", "kernel"), "conv"),
        Entry(f"{_POS_CONV}.bias", ("params", *enc, "pos_conv", "bias")),
    ]
    entries += norm("encoder.layer_norm", (*enc, "encoder_norm"))
    for i in range(hparams["depth"]):
        key, path = f"encoder.layers.{i}", (*enc, "layers", i)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            entries += linear(f"{key}.attention.{name}", (*path, name))
        entries += norm(f"{key}.layer_norm", (*path, "attn_norm"))
        entries += linear(f"{key}.feed_forward.intermediate_dense", (*path, "fc1"))
        entries += linear(f"{key}.feed_forward.output_dense", (*path, "fc2"))
        entries += norm(f"{key}.final_layer_norm", (*path, "ff_norm"))
    return entries + (linear("classifier", ("head", "dense")) if with_head else [])


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
    state = _read_state(weights)
    with_head = "classifier.weight" in state
    if with_head or any(k.startswith("hubert_ecg.") for k in state):
        state = {k.removeprefix("hubert_ecg."): v for k, v in state.items()}
    dropped = sorted(k for k in state if k.startswith(_PRETRAINING_ONLY))
    state = fold_weight_norm({k: v for k, v in state.items() if k not in dropped}, _POS_CONV, 2)
    hparams = infer_hparams(config)
    num_classes = int(state["classifier.weight"].shape[0]) if with_head else 1
    params, model_state = abstract_classifier("wav2vec2", hparams, num_classes)
    if not with_head:
        params = {"encoder": params["encoder"]}
    hint = _HINT + (
        "; the MLP and label-embedding classification heads are not supported"
        if any(k.startswith(("classifier.0.", "label_embedding.weight")) for k in state)
        else ""
    )
    params, model_state = fill(
        state, _entries(hparams, with_head), params, model_state, str(weights), hint=hint
    )
    multi_label = config.get("task_type", "multi_label") != "multi_class"
    rate, seconds = 100, 5
    return Imported(
        model="wav2vec2",
        hparams=hparams,
        params=params["encoder"],
        model_state=model_state.get("encoder", {}),
        head_params=params["head"] if with_head else None,
        head={
            "num_classes": num_classes,
            "activation": "sigmoid" if multi_label else "softmax",
            "meaning": f"the fine-tuned classifier's {num_classes} outputs "
            + ("(multi-label: sigmoid)" if multi_label else "(multi-class: softmax)")
            + " on the mean of the last hidden state",
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
            "Filter: HuBERT-ECG's `ecg_preprocessing` (code/utils.py) band-passes 0.05–47 Hz "
            "with a 151-tap Hamming FIR applied forward-backward at 500 Hz (biosppy "
            "`filter_signal`); ecgfm applies a zero-phase Butterworth band-pass with the same "
            "corners at 100 Hz: the pass band matches, the roll-off does not exactly.",
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
