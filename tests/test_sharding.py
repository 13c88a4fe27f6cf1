"""Meshes and logical-axis sharding rules, on the 8 fake CPU devices conftest.py sets up."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, PartitionSpec

from ecgfm.models import build_model
from ecgfm.sharding import (
    batch_sharding,
    logical_to_mesh_spec,
    make_mesh,
    state_shardings,
)

VIT = {"patch_size": 25, "width": 64, "depth": 2, "num_heads": 4, "max_patches": 10}


def test_make_mesh_fills_the_data_axis_with_the_remaining_devices():
    assert len(jax.devices()) == 8
    mesh = make_mesh(fsdp=4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "model": 1}
    assert tuple(mesh.axis_types) == (AxisType.Auto,) * 3
    assert dict(make_mesh().shape) == {"data": 8, "fsdp": 1, "model": 1}
    with pytest.raises(ValueError, match="devices"):
        make_mesh(fsdp=3)
    with pytest.raises(ValueError, match="devices"):
        make_mesh(data=4, fsdp=4)


def test_rules_map_logical_names_to_mesh_axes():
    fsdp = make_mesh(data=2, fsdp=4)
    assert logical_to_mesh_spec(("embed", "mlp"), (64, 256), fsdp) == PartitionSpec("fsdp", None)
    tensor = make_mesh(data=1, fsdp=2, model=4)
    assert logical_to_mesh_spec(("embed", "mlp"), (64, 256), tensor) == PartitionSpec(
        "fsdp", "model"
    )
    assert logical_to_mesh_spec(("kernel", "conv_in", "conv_out"), (16, 64, 128), fsdp) == (
        PartitionSpec(None, None, "fsdp")
    )


def test_rules_replicate_when_a_dimension_cannot_be_split():
    data_only = make_mesh()
    assert logical_to_mesh_spec(("embed", "mlp"), (64, 256), data_only) == PartitionSpec(None, None)
    fsdp8 = make_mesh(data=1, fsdp=8)
    # 196 channels (Ribeiro's third unit) do not split 8 ways: that dimension stays whole.
    assert logical_to_mesh_spec(("kernel", "conv_in", "conv_out"), (16, 128, 196), fsdp8) == (
        PartitionSpec(None, None, None)
    )
    # A mesh axis shards at most one dimension of an array.
    assert logical_to_mesh_spec(("embed", "embed"), (64, 64), fsdp8) == PartitionSpec("fsdp", None)
    with pytest.raises(ValueError, match="no rule"):
        logical_to_mesh_spec(("embedding",), (64,), fsdp8)


def test_batch_sharding_splits_records_over_data_and_fsdp():
    mesh = make_mesh(data=2, fsdp=4)
    batch = jax.device_put(jnp.zeros((16, 100, 12)), batch_sharding(mesh))
    shard_shapes = {shard.data.shape for shard in batch.addressable_shards}
    assert shard_shapes == {(2, 100, 12)}


def test_ribeiro_state_falls_back_to_replicated_where_widths_do_not_divide():
    model = nnx.eval_shape(lambda: build_model("ribeiro_resnet", {}, 6, nnx.Rngs(0)))
    shardings = state_shardings(nnx.state(model), make_mesh(data=1, fsdp=8))
    units = shardings["encoder"]["units"]
    assert units[0]["conv1"]["kernel"].get_value().spec == PartitionSpec(None, None, "fsdp")  # 128
    assert units[1]["conv1"]["kernel"].get_value().spec == PartitionSpec(None, None, None)  # 196
    assert units[0]["bn1"]["mean"].get_value().spec == PartitionSpec()


@pytest.fixture(scope="module")
def vit():
    return nnx.jit(lambda: build_model("vit1d", {**VIT, "dropout": 0.1}, 5, nnx.Rngs(0)))()


def test_vit_large_parameters_are_split_over_fsdp(vit):
    mesh = make_mesh(data=2, fsdp=4)
    state = jax.device_put(nnx.state(vit), state_shardings(nnx.state(vit), mesh))
    query = state["encoder"]["blocks"][0]["attention"]["query"]["kernel"].get_value()
    assert query.shape == (64, 4, 16)
    assert query.sharding.spec == PartitionSpec("fsdp", None, None)
    assert {s.data.shape for s in query.addressable_shards} == {(16, 4, 16)}
    mlp_out = state["encoder"]["blocks"][0]["mlp_out"]["kernel"].get_value()
    assert mlp_out.sharding.spec == PartitionSpec(None, "fsdp")
    leads = state["encoder"]["lead_embed"].get_value()
    assert leads.sharding.spec == PartitionSpec(None, "fsdp")
    norm = state["encoder"]["final_norm"]["scale"].get_value()
    assert norm.sharding.spec == PartitionSpec()


@pytest.mark.parametrize("train", [False, True])
def test_sharded_forward_matches_the_unsharded_one(vit, train):
    graphdef, state = nnx.split(vit)
    x = jax.random.normal(jax.random.key(0), (8, 250, 12))
    key = jax.random.key(3)

    def forward(state, x, key):
        return nnx.merge(graphdef, state)(x, train=train, rngs=nnx.Rngs(dropout=key))

    expected = jax.jit(forward)(state, x, key)
    mesh = make_mesh(data=2, fsdp=4)
    with jax.set_mesh(mesh):
        sharded_state = jax.device_put(state, state_shardings(state, mesh))
        sharded_x = jax.device_put(x, batch_sharding(mesh))
        got = jax.jit(forward)(sharded_state, sharded_x, key)
    # Dropout masks come from the global key, so they do not depend on the device count.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
