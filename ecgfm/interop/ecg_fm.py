"""ECG-FM (fairseq-signals wav2vec 2.0 + CMSC `.pt` checkpoint), read without torch.

Architecture: `ecgfm.models.wav2vec2` with `input_layout="leads_as_channels"` (fairseq-signals
`in_d` = 12). A fairseq-signals checkpoint is what its `Trainer.state_dict` saves: `cfg` as
plain containers (`OmegaConf.to_container`), `model`, the optimizer's state and training
counters. The pickle names only containers, tensors and storages, so ecgfm's allowlisting
reader loads it and no code in the file runs; a file that names anything else is refused
with the name, as for every PyTorch format here.

Accepted, as bowang-lab/ECG-FM publishes them (wanglab/ecg-fm on Hugging Face):

- the pre-trained `wav2vec2_cmsc` model (`mimic_iv_ecg_physionet_pretrained.pt`): its
  pre-training modules (`mask_emb`, `quantizer.*`, `project_q.*`, `final_proj.*`,
  `target_glu.*`) are dropped and listed in the card;
- a fine-tuned `ecg_transformer_classifier` (`mimic_iv_ecg_finetuned.pt`): the backbone under
  `encoder.`, the head `proj`, which is kept. Its 17 outputs are named by ECG-FM's
  MIMIC-IV-ECG label list when the head has 17 outputs (pass `label_names` otherwise).

Read from `cfg["model"]` (or the nested pre-trained config a fine-tuned one carries):
the conv strides (`conv_feature_layers`, a Python-literal string parsed without eval),
`encoder_attention_heads` and `layer_norm_first`; everything else from the shapes. The
position convolution may sit at `conv_pos.pos_conv.0` (ECGTransformer layout) or
`encoder.pos_conv.0` (older ConvTransformer layout), weight-normalised under either PyTorch
naming; it is folded into one kernel.
"""

from __future__ import annotations

import ast
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.interop.base import Imported, sha256
from ecgfm.interop.convert import Entry, abstract_classifier, fill, fold_weight_norm
from ecgfm.interop.keys import architecture_key_error
from ecgfm.interop.torch_file import find_state_dict, read_torch_checkpoint

_PRETRAINING_ONLY = ("mask_emb", "quantizer.", "project_q.", "final_proj.", "target_glu.")
_POS_CONV_MODULES = ("conv_pos.pos_conv.0", "encoder.pos_conv.0")
_MAX_REPEAT = 64
_HINT = "expected fairseq-signals wav2vec2 / ECGTransformer keys (ECG-FM)"
# bowang-lab/ECG-FM data/mimic_iv_ecg/labels/label_def.csv, in the fine-tuned head's order.
MIMIC_IV_ECG_LABELS = (
    "Poor data quality",
    "Sinus rhythm",
    "Premature ventricular contraction",
    "Tachycardia",
    "Ventricular tachycardia",
    "Supraventricular tachycardia with aberrancy",
    "Atrial fibrillation",
    "Atrial flutter",
    "Bradycardia",
    "Accessory pathway conduction",
    "Atrioventricular block",
    "1st degree atrioventricular block",
    "Bifascicular block",
    "Right bundle branch block",
    "Left bundle branch block",
    "Infarction",
    "Electronic pacemaker",
)


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's `conv_feature_layers` string, e.g. "[(256, 2, 2)] * 4", without `eval`:
    only list/tuple literals of integers joined by `+` and `* n` (n ≤ 64) are accepted."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            items = [value(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Mult) and not (
                isinstance(right, int) and 0 <= right <= _MAX_REPEAT and isinstance(left, list)
            ):
                raise ValueError(f"conv_feature_layers {spec!r}: only `[...] * n`, n ≤ 64")
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"conv_feature_layers {spec!r}: unsupported expression")

    try:
        layers = value(ast.parse(spec, mode="eval").body)
    except (SyntaxError, TypeError, RecursionError) as error:
        raise ValueError(f"conv_feature_layers {spec!r} is not a list literal ({error})") from None
    if not isinstance(layers, list) or not all(
        isinstance(layer, tuple) and len(layer) == 3 for layer in layers
    ):
        raise ValueError(f"conv_feature_layers {spec!r}: expected a list of (dim, kernel, stride)")
    return layers


def _model_cfg(checkpoint: Any) -> dict[str, Any]:
    """The model section that holds `conv_feature_layers` (a fine-tuned checkpoint nests the
    pre-trained one's config), or {} when the file has no config."""
    cfg = checkpoint.get("cfg") if isinstance(checkpoint, dict) else None
    queue = [cfg.get("model")] if isinstance(cfg, dict) else []
    while queue:
        section = queue.pop(0)
        if not isinstance(section, dict):
            continue
        if "conv_feature_layers" in section:
            return section
        queue += [v for v in section.values() if isinstance(v, dict)]
    return {}


def _strip_finetuning_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A fine-tuned classifier's backbone lives under `encoder.`; its head is `proj`."""
    if "proj.weight" not in state and not any(k.startswith("encoder.encoder.") for k in state):
        return state
    return {k if k.startswith("proj.") else k.removeprefix("encoder."): v for k, v in state.items()}


def infer_hparams(
    state: dict[str, np.ndarray], cfg: dict[str, Any], *, heads: int | None = None
) -> dict[str, Any]:
    """`wav2vec2` hyperparameters from the state_dict's shapes and the model config."""
    if "conv_feature_layers" not in cfg:
        raise ValueError(
            "the checkpoint has no cfg.model.conv_feature_layers, and the conv strides cannot "
            "be read from the shapes; pass conv_feature_layers (ECG-FM: '[(256, 2, 2)] * 4')"
        )
    conv_layers = parse_conv_layers(str(cfg["conv_feature_layers"]))
    first = state["feature_extractor.conv_layers.0.0.weight"]
    pos_module = next(m for m in _POS_CONV_MODULES if f"{m}.bias" in state)
    v_key = next(k for k in state if k.startswith(pos_module) and k.endswith(("_v", "original1")))
    width, per_group, conv_pos = (int(n) for n in state[v_key].shape)
    depth = len({m[1] for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    layer_norm_mode = "feature_extractor.conv_layers.0.2.1.weight" in state
    return {
        "input_layout": "leads_as_channels",
        "num_leads": int(first.shape[1]),
        "conv_layers": [list(layer) for layer in conv_layers],
        "conv_bias": "feature_extractor.conv_layers.0.0.bias" in state,
        "extractor_norm": "layer" if layer_norm_mode else "group",
        "feature_norm": True,
        "project_features": "post_extract_proj.weight" in state,
        "width": width,
        "depth": depth,
        "heads": int(heads or cfg.get("encoder_attention_heads", 12)),
        "mlp_dim": int(state["encoder.layers.0.fc1.weight"].shape[0]),
        "conv_pos": conv_pos,
        "conv_pos_groups": width // per_group,
        "layer_norm_first": bool(cfg.get("layer_norm_first", False)),
        "layer_norm_eps": 1e-5,
    }


def _entries(hparams: dict, pos_module: str, with_head: bool) -> list[Entry]:
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
        entries.append(Entry(f"{key}.0.weight", ("params", *enc, "convs", i, "kernel"), "conv"))
        if hparams["conv_bias"]:
            entries.append(Entry(f"{key}.0.bias", ("params", *enc, "convs", i, "bias")))
        if hparams["extractor_norm"] == "layer":
            entries += norm(f"{key}.2.1", (*enc, "conv_norms", i))
        elif i == 0:
            entries += norm(f"{key}.2", (*enc, "conv_norms", 0))
    entries += norm("layer_norm", (*enc, "feature_norm"))
    if hparams["project_features"]:
        entries += linear("post_extract_proj", (*enc, "feature_projection"))
    entries += [
        Entry(f"{pos_module}.weight", ("params", *enc, "pos_conv", "kernel"), "conv"),
        Entry(f"{pos_module}.bias", ("params", *enc, "pos_conv", "bias")),
    ]
    entries += norm("encoder.layer_norm", (*enc, "encoder_norm"))
    for i in range(hparams["depth"]):
        key, path = f"encoder.layers.{i}", (*enc, "layers", i)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            entries += linear(f"{key}.self_attn.{name}", (*path, name))
        entries += norm(f"{key}.self_attn_layer_norm", (*path, "attn_norm"))
        entries += linear(f"{key}.fc1", (*path, "fc1"))
        entries += linear(f"{key}.fc2", (*path, "fc2"))
        entries += norm(f"{key}.final_layer_norm", (*path, "ff_norm"))
    return entries + (linear("proj", ("head", "dense")) if with_head else [])


def read(
    src: str | pathlib.Path,
    *,
    conv_feature_layers: str | None = None,
    heads: int | None = None,
    label_names: Sequence[str] | None = None,
) -> Imported:
    """An ECG-FM (fairseq-signals) `.pt` checkpoint, pre-trained or fine-tuned.

    `conv_feature_layers` and `heads` override the file's config (needed only for a bare
    state_dict); `label_names` names the fine-tuned head's outputs.
    """
    src = pathlib.Path(src)
    checkpoint = read_torch_checkpoint(src)
    state = _strip_finetuning_prefix(find_state_dict(checkpoint, ("model", "state_dict")))
    dropped = sorted(k for k in state if k.startswith(_PRETRAINING_ONLY))
    state = {k: v for k, v in state.items() if k not in dropped}
    cfg = _model_cfg(checkpoint)
    if conv_feature_layers is not None:
        cfg = cfg | {"conv_feature_layers": conv_feature_layers}
    try:
        hparams = infer_hparams(state, cfg, heads=heads)
    except (KeyError, StopIteration) as error:
        missing = error if isinstance(error, KeyError) else KeyError("conv_pos.pos_conv.0.bias")
        raise architecture_key_error(str(src), missing, state, _HINT) from None
    pos_module = next(m for m in _POS_CONV_MODULES if f"{m}.bias" in state)
    state = fold_weight_norm(state, pos_module, 2)
    with_head = "proj.weight" in state
    num_classes = int(state["proj.weight"].shape[0]) if with_head else 1
    params, model_state = abstract_classifier("wav2vec2", hparams, num_classes)
    if not with_head:
        params = {"encoder": params["encoder"]}
    params, model_state = fill(
        state, _entries(hparams, pos_module, with_head), params, model_state, str(src), hint=_HINT
    )
    notes = [
        "500 Hz, 2500 samples (5 s), leads I, II, III, aVR, aVL, aVF, V1–V6, no filter: "
        "ECG-FM notebooks/infer_quickstart.ipynb (ecg-transform: reorder leads, "
        "`LinearResample(500)`, `Standardize()`, `SegmentNonoverlapping(2500)`) and "
        "fairseq-signals scripts/preprocess/ecg (`segment_seconds=5`).",
        "Normalisation: each lead to zero mean and unit standard deviation (ddof 0; a "
        "constant lead becomes zeros). ECG-FM standardises the whole record, then cuts 5 s "
        "segments; ecgfm standardises the window it feeds the model. ECG-FM resamples by "
        "linear interpolation, ecgfm by polyphase filtering.",
        "Evaluation in ECG-FM: non-overlapping 5 s segments; ecgfm's protocol windows the "
        "record and aggregates (--aggregation).",
        "The embedding is the mean over time of the transformer's output (fairseq-signals "
        "`extract_features`). The fine-tuned classifier divides the sum over time by the "
        "count of non-zero entries per feature, which equals the mean unless an output is "
        "exactly zero.",
    ]
    if hparams["heads"] == 12 and "encoder_attention_heads" not in cfg and heads is None:
        notes.append("Attention heads: 12, fairseq-signals' default (the file's config has none).")
    if with_head and label_names is None and num_classes == len(MIMIC_IV_ECG_LABELS):
        label_names = MIMIC_IV_ECG_LABELS
        notes.append(
            "Label names: the head has 17 outputs, named as ECG-FM's fine-tuned MIMIC-IV-ECG "
            "model's (data/mimic_iv_ecg/labels/label_def.csv); pass label_names for another "
            "fine-tuning."
        )
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(f"{len(label_names)} label names for a head with {num_classes} outputs")
    return Imported(
        model="wav2vec2",
        hparams=hparams,
        params=params["encoder"],
        model_state=model_state.get("encoder", {}),
        head_params=params["head"] if with_head else None,
        head={
            "num_classes": num_classes,
            "activation": "sigmoid",
            "meaning": f"the fine-tuned classifier's {num_classes} label probabilities "
            "(multi-label: fairseq-signals trains it with binary cross-entropy on logits)",
        }
        if with_head
        else None,
        preprocessing=Preprocessing(
            sampling_rate=500, num_samples=2500, normalization="per_lead_standardize"
        ),
        notes=notes,
        label_names=list(label_names or []),
        source={
            "format": "ecg_fm (fairseq-signals PyTorch checkpoint, read without torch or "
            "pickle code)",
            "file": f"{src.name} (sha256 {sha256(src)})",
            "paper": 'McKeen, K., Masood, S. et al. "ECG-FM: an open electrocardiogram '
            'foundation model", JAMIA Open 8(5):ooaf122, 2025; arXiv:2408.05178',
            "architecture": "Jwoo5/fairseq-signals fairseq_signals/models/wav2vec2/"
            "wav2vec2_cmsc.py, models/ecg_transformer.py, modules/conv_feature_extraction.py, "
            "modules/transformer_encoder.py, models/classification/ecg_transformer_classifier.py",
            "weights": "huggingface.co/wanglab/ecg-fm (linked from bowang-lab/ECG-FM)",
        },
        license="MIT (bowang-lab/ECG-FM, Copyright (c) 2024 WangLab @ U of T; "
        "Jwoo5/fairseq-signals); the weights' Hugging Face page lists MIT",
        title=f"ECG-FM wav2vec 2.0 (width {hparams['width']}, depth {hparams['depth']})",
        summary="ECG-FM's wav2vec 2.0 + CMSC self-supervised transformer, imported from its "
        "fairseq-signals checkpoint.",
        objective="self-supervised (wav2vec 2.0 contrastive + CMSC + random lead masking)"
        + (f", then supervised head ({num_classes} outputs)" if with_head else ""),
        training_data="MIMIC-IV-ECG and PhysioNet 2021 (paper)",
        ignored_keys=dropped,
    )
