"""The key walk both wav2vec 2.0 formats share (HuBERT-ECG's transformers names, ECG-FM's
fairseq-signals names): one table of key templates per format, one walk over the
`ecgfm.models.wav2vec2` tree, and the checks every wav2vec 2.0 file gets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from ecgfm.interop.convert import Entry, abstract_classifier, fill, linear_entries, norm_entries
from ecgfm.interop.keys import CheckpointKeyError


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Keys:
    """Where a format keeps each module; `{i}` is the conv layer's or transformer layer's index.

    `layer_*` names are relative to `layer`; `head` is the fine-tuned classifier's linear.
    """

    conv: str
    group_norm: str
    layer_norm: str
    feature_norm: str
    projection: str
    pos_conv: str
    encoder_norm: str
    layer: str
    layer_attention: str
    layer_attn_norm: str
    layer_fc1: str
    layer_fc2: str
    layer_ff_norm: str
    head: str


def entries(hparams: dict[str, Any], keys: Wav2Vec2Keys, with_head: bool) -> list[Entry]:
    """The key table of a `wav2vec2` encoder (+ linear head) stored under `keys`."""
    enc = ("encoder",)
    out = []
    for i in range(len(hparams["conv_layers"])):
        conv = keys.conv.format(i=i)
        out.append(Entry(f"{conv}.weight", ("params", *enc, "convs", i, "kernel"), "conv"))
        if hparams["conv_bias"]:
            out.append(Entry(f"{conv}.bias", ("params", *enc, "convs", i, "bias")))
        if hparams["extractor_norm"] == "layer":
            out += norm_entries(keys.layer_norm.format(i=i), (*enc, "conv_norms", i))
        elif i == 0:
            out += norm_entries(keys.group_norm.format(i=i), (*enc, "conv_norms", 0))
    if hparams["feature_norm"]:
        out += norm_entries(keys.feature_norm, (*enc, "feature_norm"))
    if hparams["project_features"]:
        out += linear_entries(keys.projection, (*enc, "feature_projection"))
    out += [
        Entry(f"{keys.pos_conv}.weight", ("params", *enc, "pos_conv", "kernel"), "conv"),
        Entry(f"{keys.pos_conv}.bias", ("params", *enc, "pos_conv", "bias")),
    ]
    out += norm_entries(keys.encoder_norm, (*enc, "encoder_norm"))
    for i in range(hparams["depth"]):
        layer, path = keys.layer.format(i=i), (*enc, "layers", i)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out += linear_entries(f"{layer}.{keys.layer_attention}.{name}", (*path, name))
        out += norm_entries(f"{layer}.{keys.layer_attn_norm}", (*path, "attn_norm"))
        out += linear_entries(f"{layer}.{keys.layer_fc1}", (*path, "fc1"))
        out += linear_entries(f"{layer}.{keys.layer_fc2}", (*path, "fc2"))
        out += norm_entries(f"{layer}.{keys.layer_ff_norm}", (*path, "ff_norm"))
    return out + (linear_entries(keys.head, ("head", "dense")) if with_head else [])


def read_arrays(
    state: dict[str, np.ndarray],
    hparams: Callable[[], dict[str, Any]],
    keys: Wav2Vec2Keys,
    source: str,
    hint: str,
) -> tuple[dict[str, Any], dict, dict, dict | None, int]:
    """(hparams, encoder params, encoder model_state, head params or None, head outputs).

    `hparams()` reads the architecture; anything in the file it cannot use (a missing field,
    a value of the wrong type, sizes that do not build) is a ValueError naming `source`, and
    every key problem a `CheckpointKeyError` listing them all.
    """
    with_head = f"{keys.head}.weight" in state
    try:
        found = hparams()
        num_classes = int(state[f"{keys.head}.weight"].shape[0]) if with_head else 1
        params, model_state = abstract_classifier("wav2vec2", found, num_classes)
    except CheckpointKeyError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as error:
        what = f"missing {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{source}: cannot read the wav2vec 2.0 architecture ({what})") from None
    if not with_head:
        params = {"encoder": params["encoder"]}
    params, model_state = fill(
        state, entries(found, keys, with_head), params, model_state, source, hint=hint
    )
    head = params["head"] if with_head else None
    return found, params["encoder"], model_state.get("encoder", {}), head, num_classes
