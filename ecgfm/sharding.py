"""The device mesh and the one table that maps logical axis names to mesh axes.

Parameters declare what their dimensions mean with a `logical_axes` metadata entry, e.g. a
transformer MLP kernel `nnx.Param(w, logical_axes=("embed", "mlp"))`. `LOGICAL_AXIS_RULES`
maps each logical name to mesh axes (MaxText style), so changing the parallelism of every
model is one edit here:

- data parallel: `make_mesh(data=-1)` — every parameter replicated, the batch split.
- FSDP: `make_mesh(data=2, fsdp=4)` — "embed"/"conv_out" dimensions split over "fsdp", the
  batch over ("data", "fsdp"); XLA gathers each weight where it is used.
- tensor parallel: `model > 1` splits "mlp" and "heads" dimensions.

We use our own metadata key rather than Flax's `out_sharding`: Flax shards a variable with
`out_sharding` eagerly at creation, which needs a mesh whenever a model is built (even on one
CPU); ours is inert until `state_shardings` reads it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "model")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes (`config.mesh`); `data=-1` takes the devices the others leave."""

    data: int = -1
    fsdp: int = 1
    model: int = 1

    def __post_init__(self) -> None:
        if self.data == 0 or self.data < -1 or self.fsdp < 1 or self.model < 1:
            raise ValueError(
                f"mesh sizes must be positive (data may be -1), got data={self.data}, "
                f"fsdp={self.fsdp}, model={self.model}"
            )

    def make(self) -> Mesh:
        """The mesh over every device of every process."""
        return make_mesh(self.data, self.fsdp, self.model)


MeshAxes = str | tuple[str, ...] | None

LOGICAL_AXIS_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),
    # FSDP: the wide dimension of every large weight is split over "fsdp".
    ("embed", "fsdp"),
    ("conv_out", "fsdp"),
    # Tensor parallelism inside transformer blocks.
    ("mlp", "model"),
    ("heads", "model"),
    # Small or odd-sized dimensions stay whole.
    ("kv", None),
    ("conv_in", None),
    ("kernel", None),
    ("classes", None),
    ("leads", None),
    ("length", None),
    ("patch", None),
    ("ssm_state", None),  # the N/2 modes of an S4D layer: few, kept whole
)


def make_mesh(
    data: int = -1, fsdp: int = 1, model: int = 1, *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A ("data", "fsdp", "model") mesh; `data=-1` takes every device the others leave.

    Axis types are `Auto`: the models carry no activation sharding annotations, so XLA
    propagates shardings from the jitted step's in/out shardings (GSPMD). `Explicit` axes would
    make every op's output sharding part of its type, and ops such as a convolution contracting
    an fsdp-split weight dimension would need hand-written `reshard` calls.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data == -1:
        if len(devices) % (fsdp * model):
            raise ValueError(
                f"{len(devices)} devices do not split into fsdp={fsdp} × model={model}"
            )
        data = len(devices) // (fsdp * model)
    shape = (data, fsdp, model)
    if math.prod(shape) != len(devices):
        sizes = dict(zip(MESH_AXES, shape, strict=True))
        raise ValueError(f"mesh {sizes} needs {math.prod(shape)} devices, got {len(devices)}")
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_mesh_spec(
    logical_axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Sequence[tuple[str, MeshAxes]] = LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """The mesh PartitionSpec for an array whose dimensions carry `logical_axes`.

    A dimension stays replicated (None) when its rule names no mesh axis, when the mesh axes it
    names have size 1, when its size is not divisible by their product (e.g. a width of 196 on
    fsdp=8: we replicate rather than pad), or when an earlier dimension already uses one of
    those mesh axes. An unknown logical name raises, so a typo cannot silently replicate.
    """
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    table = dict(rules)
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for name, size in zip(logical_axes, shape, strict=True):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
        target = table[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if mesh.shape[a] > 1)
        n_shards = math.prod(mesh.shape[a] for a in axes)
        if not axes or size % n_shards or used.intersection(axes):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def _variable_sharding(
    variable: Any, mesh: Mesh, rules: Sequence[tuple[str, MeshAxes]]
) -> NamedSharding:
    value = variable.get_value() if isinstance(variable, nnx.Variable) else variable
    logical = (
        variable.get_metadata().get("logical_axes") if isinstance(variable, nnx.Variable) else None
    )
    if logical is None:
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, logical_to_mesh_spec(logical, np.shape(value), mesh, rules))


def state_shardings(
    state: Any, mesh: Mesh, rules: Sequence[tuple[str, MeshAxes]] = LOGICAL_AXIS_RULES
) -> Any:
    """NamedShardings with the structure of an `nnx.state`/`nnx.split` state (abstract or not).

    Variables without `logical_axes` metadata (BatchNorm, LayerNorm, batch statistics) and
    plain arrays are replicated. The result can be given to `jax.jit(in_shardings=...,
    out_shardings=...)` or `jax.device_put(state, ...)`.
    """

    def leaf_sharding(x: Any) -> Any:
        sharding = _variable_sharding(x, mesh, rules)
        return x.replace(sharding) if isinstance(x, nnx.Variable) else sharding

    return jax.tree.map(leaf_sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) dimension over every data-parallel mesh axis."""
    return NamedSharding(mesh, PartitionSpec(dict(LOGICAL_AXIS_RULES)["batch"]))
