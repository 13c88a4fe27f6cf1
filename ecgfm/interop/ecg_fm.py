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

Read from the model config: the conv strides (`conv_feature_layers`, a Python-literal string
parsed without eval), `encoder_attention_heads` and `layer_norm_first`; everything else from
the shapes. A fine-tuned file's encoder is read as fairseq-signals builds it, from the
pre-trained config nested in `cfg.model.args` when present (the fine-tuning section holds
defaults). A bare state_dict has no config: pass all three (`conv_feature_layers`, `heads`,
`layer_norm_first`). The position convolution may sit at `conv_pos.pos_conv.0`
(ECGTransformer layout) or `encoder.pos_conv.0` (older ConvTransformer layout),
weight-normalised under either PyTorch naming (folded into one kernel) or already folded.
A fine-tuned head's activation follows its criterion (`cfg.criterion._name`).
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.interop import wav2vec2
from ecgfm.interop.base import Imported, sha256
from ecgfm.interop.convert import fold_weight_norm
from ecgfm.interop.keys import architecture_key_error
from ecgfm.interop.torch_file import find_state_dict, read_torch_checkpoint

_PRETRAINING_ONLY = ("mask_emb", "quantizer.", "project_q.", "final_proj.", "target_glu.")
_POS_CONV_MODULES = ("conv_pos.pos_conv.0", "encoder.pos_conv.0")
_MAX_LAYERS = 64
# What the encoder is built from, in a fairseq-signals model config.
_ARCHITECTURE_FIELDS = (
    "conv_feature_layers", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
    "encoder_attention_heads", "layer_norm_first", "extractor_mode", "in_d", "conv_bias",
    "conv_pos", "conv_pos_groups",
)  # fmt: skip
# fairseq-signals criterions for the classifier → what turns its logits into predictions.
CRITERION_ACTIVATIONS = {
    "binary_cross_entropy_with_logits": "sigmoid",  # ECG-FM's fine-tuning (diagnosis.yaml)
    "binary_cross_entropy": "sigmoid",
    "cross_entropy": "softmax",
    "mse": "none",
}
KEYS = wav2vec2.Wav2Vec2Keys(
    conv="feature_extractor.conv_layers.{i}.0",
    group_norm="feature_extractor.conv_layers.{i}.2",
    layer_norm="feature_extractor.conv_layers.{i}.2.1",
    feature_norm="layer_norm",
    projection="post_extract_proj",
    pos_conv=_POS_CONV_MODULES[0],
    encoder_norm="encoder.layer_norm",
    layer="encoder.layers.{i}",
    layer_attention="self_attn",
    layer_attn_norm="self_attn_layer_norm",
    layer_fc1="fc1",
    layer_fc2="fc2",
    layer_ff_norm="final_layer_norm",
    head="proj",
)
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
    only list/tuple literals of integers joined by `+` and `* n` are accepted, and at most
    64 layers."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            items = [value(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Mult) and not (
                isinstance(left, list) and isinstance(right, int) and 0 <= right <= _MAX_LAYERS
            ):
                raise ValueError(f"conv_feature_layers {spec!r}: only `[...] * n` is supported")
            result = left + right if isinstance(node.op, ast.Add) else left * right
            if isinstance(result, list) and len(result) > _MAX_LAYERS:
                raise ValueError(f"conv_feature_layers {spec!r}: more than {_MAX_LAYERS} layers")
            return result
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


def model_config(checkpoint: Any) -> tuple[dict[str, Any], list[str]]:
    """(the model section the encoder was built from, notes), or ({}, []) without a config.

    A fine-tuned classifier's `cfg.model` inherits every architecture field with its default,
    while fairseq-signals builds its encoder from the pre-trained model's config, stored in
    `cfg.model.args` (`TransformerModel.from_pretrained`): that one is used when present.
    """
    cfg = checkpoint.get("cfg") if isinstance(checkpoint, dict) else None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict):
        return {}, []
    args = model.get("args")
    nested = args.get("model") if isinstance(args, dict) else None
    if not isinstance(nested, dict) or "conv_feature_layers" not in nested:
        return model, []
    differ = sorted(
        k for k in _ARCHITECTURE_FIELDS if k in model and k in nested and model[k] != nested[k]
    )
    notes = [
        "Architecture from the pre-trained config nested in the fine-tuned one (cfg.model.args."
        "model), which fairseq-signals builds the encoder from"
        + (f"; the fine-tuning section's defaults differ on {', '.join(differ)}" if differ else "")
        + "."
    ]
    return nested, notes


def _strip_finetuning_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A fine-tuned classifier's backbone lives under `encoder.`; its head is `proj`."""
    if "proj.weight" not in state and not any(k.startswith("encoder.encoder.") for k in state):
        return state
    return {k if k.startswith("proj.") else k.removeprefix("encoder."): v for k, v in state.items()}


def _pos_conv_module(state: dict[str, np.ndarray]) -> str:
    for module in _POS_CONV_MODULES:
        if any(k.startswith(f"{module}.") for k in state):
            return module
    return _POS_CONV_MODULES[0]  # reported missing with the other key problems


def _pos_conv_shape(state: dict[str, np.ndarray], module: str) -> tuple[int, int, int]:
    """[width, width / groups, taps] of the position conv, folded or weight-normalised."""
    for name in ("weight", "weight_v", "parametrizations.weight.original1"):
        if f"{module}.{name}" in state:
            shape = np.shape(state[f"{module}.{name}"])
            if len(shape) != 3:
                raise ValueError(f"{module}.{name} has shape {list(shape)}, not [D, D/groups, K]")
            return tuple(int(n) for n in shape)
    raise KeyError(f"{module}.weight_v")


def infer_hparams(
    state: dict[str, np.ndarray],
    cfg: dict[str, Any],
    *,
    heads: int | None = None,
    layer_norm_first: bool | None = None,
) -> dict[str, Any]:
    """`wav2vec2` hyperparameters from the state_dict's shapes and the model config."""
    missing = [
        option
        for option, given in (("conv_feature_layers", None), ("encoder_attention_heads", heads),
                              ("layer_norm_first", layer_norm_first))
        if option not in cfg and given is None
    ]  # fmt: skip
    if missing:
        raise ValueError(
            f"the checkpoint's config does not give {', '.join(missing)}, which the shapes "
            "cannot tell; pass them (ECG-FM: conv_feature_layers='[(256, 2, 2)] * 4', "
            "heads=12, layer_norm_first=False)"
        )
    conv_layers = parse_conv_layers(str(cfg["conv_feature_layers"]))
    stored = len({k.split(".")[2] for k in state if k.startswith("feature_extractor.conv_layers.")})
    if stored != len(conv_layers):
        raise ValueError(
            f"conv_feature_layers has {len(conv_layers)} layers, the state_dict {stored}"
        )
    first = state["feature_extractor.conv_layers.0.0.weight"]
    width, per_group, conv_pos = _pos_conv_shape(state, _pos_conv_module(state))
    depth = len({m[1] for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    return {
        "input_layout": "leads_as_channels",
        "num_leads": int(first.shape[1]),
        "conv_layers": [list(layer) for layer in conv_layers],
        "conv_bias": "feature_extractor.conv_layers.0.0.bias" in state,
        "extractor_norm": "layer"
        if "feature_extractor.conv_layers.0.2.1.weight" in state
        else "group",
        "feature_norm": True,
        "project_features": "post_extract_proj.weight" in state,
        "width": width,
        "depth": depth,
        "heads": int(heads if heads is not None else cfg["encoder_attention_heads"]),
        "mlp_dim": int(state["encoder.layers.0.fc1.weight"].shape[0]),
        "conv_pos": conv_pos,
        "conv_pos_groups": width // per_group,
        "layer_norm_first": bool(
            layer_norm_first if layer_norm_first is not None else cfg["layer_norm_first"]
        ),
        "layer_norm_eps": 1e-5,
    }


def _activation(checkpoint: Any) -> tuple[str, str]:
    """(activation, why) of a fine-tuned head, from the criterion it was trained with."""
    cfg = checkpoint.get("cfg") if isinstance(checkpoint, dict) else None
    criterion = cfg.get("criterion") if isinstance(cfg, dict) else None
    name = criterion.get("_name") if isinstance(criterion, dict) else None
    if name is None:
        return "sigmoid", "no criterion recorded; ECG-FM's heads are multi-label"
    if name not in CRITERION_ACTIVATIONS:
        return "none", f"criterion {name!r} is not known here, so the outputs are raw"
    return CRITERION_ACTIVATIONS[name], f"trained with fairseq-signals' {name}"


def read(
    src: str | pathlib.Path,
    *,
    conv_feature_layers: str | None = None,
    heads: int | None = None,
    layer_norm_first: bool | None = None,
    label_names: Sequence[str] | None = None,
) -> Imported:
    """An ECG-FM (fairseq-signals) `.pt` checkpoint, pre-trained or fine-tuned.

    `conv_feature_layers`, `heads` and `layer_norm_first` override the file's config (a bare
    state_dict needs all three); `label_names` names the fine-tuned head's outputs.
    """
    src = pathlib.Path(src)
    checkpoint = read_torch_checkpoint(src)
    state = _strip_finetuning_prefix(find_state_dict(checkpoint, ("model", "state_dict")))
    dropped = sorted(k for k in state if k.startswith(_PRETRAINING_ONLY))
    state = {k: v for k, v in state.items() if k not in dropped}
    cfg, notes = model_config(checkpoint)
    if conv_feature_layers is not None:
        cfg = cfg | {"conv_feature_layers": conv_feature_layers}
    keys = dataclasses.replace(KEYS, pos_conv=_pos_conv_module(state))
    state = fold_weight_norm(state, keys.pos_conv, 2, str(src))

    def architecture() -> dict[str, Any]:
        try:
            return infer_hparams(state, cfg, heads=heads, layer_norm_first=layer_norm_first)
        except KeyError as error:
            raise architecture_key_error(str(src), error, state, _HINT) from None

    hparams, params, model_state, head_params, num_classes = wav2vec2.read_arrays(
        state, architecture, keys, str(src), _HINT
    )
    with_head = head_params is not None
    activation, trained_with = _activation(checkpoint) if with_head else ("none", "")
    notes += [
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
    if with_head and label_names is None and num_classes == len(MIMIC_IV_ECG_LABELS):
        label_names = MIMIC_IV_ECG_LABELS
        notes.append(
            "Label names: the head has 17 outputs, named as ECG-FM's fine-tuned MIMIC-IV-ECG "
            "model's (data/mimic_iv_ecg/labels/label_def.csv); pass label_names for another "
            "fine-tuning."
        )
    if label_names is not None and len(label_names) != num_classes:
        raise ValueError(
            f"{src}: {len(label_names)} label names for a head with {num_classes} outputs"
        )
    return Imported(
        model="wav2vec2",
        hparams=hparams,
        params=params,
        model_state=model_state,
        head_params=head_params,
        head={
            "num_classes": num_classes,
            "activation": activation,
            "meaning": f"the fine-tuned classifier's {num_classes} outputs ({activation} "
            f"applied; {trained_with})",
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
