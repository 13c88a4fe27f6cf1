"""Fill an ecgfm model's parameters from a foreign state dict, by an explicit key table.

Each format lists `Entry(original_key, path, kind)`: where the original's array goes in the
`{"params": ..., "model_state": ...}` pure dicts of an ecgfm `Classifier` (encoder + head),
and how its layout changes:

    copy        same layout (Keras kernels are already [K, C_in, C_out] / [D_in, D_out])
    conv        PyTorch Conv1d weight [C_out, C_in/groups, K] → Flax [K, C_in/groups, C_out]
    linear      PyTorch Linear weight [D_out, D_in] → Flax [D_in, D_out]
    squeeze0    drop a leading axis of 1 (ST-MEM's pos_embedding [1, N, D])
    row:I       row I of a stacked Flax array (ST-MEM's per-lead nn.ParameterList)
    flatten_ct  PyTorch `x.view(B, -1)` of [B, C, T] features → Flax's [T, C] flatten order

The original's expected shapes follow from the ecgfm model's shapes through the same table,
so the whole file is checked before anything is copied, and `CheckpointKeyError` lists every
missing, unexpected or mis-shaped key at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from ecgfm import models
from ecgfm.interop.keys import CheckpointKeyError, check_state_dict


@dataclasses.dataclass(frozen=True)
class Entry:
    """One original array: its key, where it goes, how its layout changes."""

    key: str
    path: tuple[Any, ...]
    kind: str = "copy"


def linear_entries(key: str, path: tuple[Any, ...], bias: bool = True) -> list[Entry]:
    """A PyTorch `nn.Linear` at `key` → the Flax `nnx.Linear` at `path` (under "params")."""
    out = [Entry(f"{key}.weight", ("params", *path, "kernel"), "linear")]
    return out + ([Entry(f"{key}.bias", ("params", *path, "bias"))] if bias else [])


def norm_entries(key: str, path: tuple[Any, ...]) -> list[Entry]:
    """A PyTorch LayerNorm/GroupNorm at `key` → the Flax norm's scale and bias at `path`."""
    return [
        Entry(f"{key}.weight", ("params", *path, "scale")),
        Entry(f"{key}.bias", ("params", *path, "bias")),
    ]


def abstract_classifier(
    name: str, hparams: Mapping[str, Any], num_classes: int
) -> tuple[dict, dict]:
    """`(params, model_state)` shape trees of family `name`'s encoder + head (no allocation)."""
    model = nnx.eval_shape(lambda: models.build_model(name, hparams, num_classes, nnx.Rngs(0)))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def _leaf(tree: Any, path: Sequence[Any]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: Sequence[Any], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def original_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the original stores for an ecgfm array of `shape` under `kind`."""
    if kind == "copy":
        return shape
    if kind in ("conv", "linear", "flatten_ct"):
        return shape[::-1]
    if kind == "squeeze0":
        return (1, *shape)
    if kind.startswith("row:"):
        return shape[1:]
    raise ValueError(f"unknown entry kind {kind!r}")


def _to_ecgfm(kind: str, array: np.ndarray) -> np.ndarray:
    if kind == "copy":
        return array
    if kind == "conv":
        return np.transpose(array, (2, 1, 0))
    if kind == "linear":
        return array.T
    if kind == "squeeze0":
        return array[0]
    raise ValueError(f"unknown entry kind {kind!r}")


def fill(
    state: Mapping[str, np.ndarray],
    entries: Iterable[Entry],
    params: dict,
    model_state: dict,
    source: str,
    *,
    ignored: Iterable[str] = (),
    hint: str = "",
    flatten_width: int | None = None,
) -> tuple[dict, dict]:
    """`(params, model_state)` pure dicts of host arrays taken from `state` by `entries`.

    Raises `CheckpointKeyError` listing all key problems; every ecgfm array must be covered.
    """
    trees = {"params": params, "model_state": model_state}
    entries = list(entries)
    expected: dict[str, tuple[int, ...]] = {}
    for entry in entries:
        shape = tuple(_leaf(trees, entry.path).shape)
        expected[entry.key] = original_shape(entry.kind, shape)
    check_state_dict(state, expected, source, ignored=ignored, hint=hint)

    out: dict[str, dict] = {"params": {}, "model_state": {}}
    rows: dict[tuple, np.ndarray] = {}
    for entry in entries:
        target = _leaf(trees, entry.path)
        array = np.asarray(state[entry.key])
        if entry.kind.startswith("row:"):
            stacked = rows.setdefault(entry.path, np.zeros(target.shape, target.dtype))
            stacked[int(entry.kind[4:])] = array
            _set(out, entry.path, stacked)
            continue
        if entry.kind == "flatten_ct":
            array = _flatten_ct(array, flatten_width)
        else:
            array = _to_ecgfm(entry.kind, array)
        _set(out, entry.path, np.ascontiguousarray(array, dtype=target.dtype))

    def covered(tree: dict, got: dict, prefix: tuple) -> list[str]:
        missing = []
        for key, value in tree.items():
            if isinstance(value, dict):
                missing += covered(value, got.get(key, {}), (*prefix, key))
            elif key not in got:
                missing.append("/".join(map(str, (*prefix, key))))
        return missing

    if uncovered := covered(params, out["params"], ("params",)) + covered(
        model_state, out["model_state"], ("model_state",)
    ):
        raise AssertionError(f"{source}: the key table leaves ecgfm arrays unset: {uncovered}")
    return out["params"], out["model_state"]


def _flatten_ct(array: np.ndarray, channels: int | None) -> np.ndarray:
    """PyTorch Linear weight over `x.view(B, -1)` of `[B, C, T]` → Flax kernel over `[T, C]`."""
    if channels is None:
        raise ValueError("flatten_ct needs flatten_width (the channels C)")
    num_outputs, num_inputs = array.shape
    positions = num_inputs // channels
    w = array.reshape(num_outputs, channels, positions).transpose(0, 2, 1)
    return w.reshape(num_outputs, num_inputs).T


# The two ways PyTorch names a weight-normalised weight's magnitude g and direction v:
# `torch.nn.utils.weight_norm` (weight_g, weight_v) and its successor
# `torch.nn.utils.parametrizations.weight_norm` (original0, original1).
WEIGHT_NORM_NAMES = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)


def fold_weight_norm(
    state: dict[str, np.ndarray], module: str, dim: int, source: str
) -> dict[str, np.ndarray]:
    """`state` with `module`'s weight-normalised weight as one `<module>.weight`: g · v / ‖v‖,
    the norm taken over every axis but `dim` (PyTorch `weight_norm(dim=dim)`), in float64.

    Either naming is accepted; a state without either pair is returned unchanged (its missing
    `<module>.weight` is then reported with the other key problems).
    """
    for g_name, v_name in WEIGHT_NORM_NAMES:
        g_key, v_key = f"{module}.{g_name}", f"{module}.{v_name}"
        if g_key in state and v_key in state:
            g = np.asarray(state[g_key], np.float64)
            v = np.asarray(state[v_key], np.float64)
            expected = tuple(n if a == dim else 1 for a, n in enumerate(v.shape))
            if g.shape != expected:
                raise CheckpointKeyError(
                    source, [], [], [(g_key, g.shape, expected)],
                    f"weight_norm(dim={dim}) keeps one magnitude per index of {v_key}'s axis {dim}",
                )  # fmt: skip
            axes = tuple(a for a in range(v.ndim) if a != dim)
            norm = np.sqrt(np.sum(v * v, axis=axes, keepdims=True))
            folded = {k: a for k, a in state.items() if k not in (g_key, v_key)}
            folded[f"{module}.weight"] = (g * v / norm).astype(np.asarray(state[v_key]).dtype)
            return folded
    return state


def split_classifier(params: dict, model_state: dict) -> tuple[dict, dict, dict]:
    """(encoder params, encoder model_state, head params) of a Classifier's pure dicts."""
    return params["encoder"], model_state.get("encoder", {}), params["head"]


def host(tree: Any) -> Any:
    """Host numpy copies of every leaf."""
    return jax.tree.map(np.asarray, tree)
