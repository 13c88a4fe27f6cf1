"""JEPA: multi-block masks, the EMA target inside the jitted step, training and invariance."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict
from ssl_helpers import fresh_state, objective_and_model, probe_auroc, synthetic_exams

from ecgfm import sharding, train_state
from ecgfm.objectives.jepa import block_indices, context_indices

MOMENTUM = 0.9


def tiny_config(**objective) -> ConfigDict:
    """A width-32, depth-2 ViT-1D on 64-sample signals with the JEPA objective."""
    config = ConfigDict()
    config.model = ConfigDict(
        {"name": "vit1d", "hparams": ConfigDict(
            {"patch_size": 16, "width": 32, "depth": 2, "num_heads": 2, "max_patches": 4})}
    )  # fmt: skip
    config.objective = ConfigDict(
        {"name": "jepa", "num_blocks": 2, "block_leads": 6, "block_patches": 2,
         "ema_momentum": MOMENTUM, "decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2,
         **objective}
    )  # fmt: skip
    return config


def test_target_blocks_are_lead_by_time_rectangles_and_context_avoids_them():
    blocks = np.asarray(block_indices(jax.random.key(0), 8, 12, 4, 3, 6, 2))
    assert blocks.shape == (8, 3, 12)
    for block in blocks.reshape(-1, 12):
        leads, patches = np.divmod(block, 4)
        assert np.ptp(leads) == 5 and np.ptp(patches) == 1  # 6 consecutive leads × 2 patches
        assert len(set(block)) == 12
    context = np.asarray(context_indices(jax.random.key(1), jnp.asarray(blocks), 48, 12))
    for exam in range(8):
        assert len(set(context[exam])) == 12
        assert not set(context[exam]) & set(blocks[exam].ravel())


def step_fn(config):
    objective, model = objective_and_model(config)
    tx = optax.adam(3e-3)
    state, graphdef = fresh_state(objective, model, tx)
    step = jax.jit(
        functools.partial(
            train_state.train_step, graphdef, objective=objective, tx=tx,
            schedule=optax.constant_schedule(3e-3), accum_steps=1,
        )
    )  # fmt: skip
    return state, step, graphdef


@pytest.fixture(scope="module")
def jepa_run():
    config = tiny_config()
    state, step, graphdef = step_fn(config)
    signal, _ = synthetic_exams(32, seed=3)
    batch = {"signal": jnp.asarray(signal), "mask": jnp.ones(32)}
    states, losses = [state], []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        if len(states) < 3:
            states.append(
                {k: jax.tree.map(np.asarray, state[k]) for k in ("params", "model_state")}
            )
    return config, states, losses, state, graphdef


def test_target_encoder_starts_as_a_copy_and_is_not_optimised(jepa_run):
    _, states, _, _, _ = jepa_run
    first = states[0]
    assert "target_encoder" not in first["params"]  # the optimizer never sees it
    target = jax.tree.leaves(first["model_state"]["target_encoder"])
    online = jax.tree.leaves(first["params"]["encoder"])
    assert len(target) == len(online)
    for t, o in zip(target, online, strict=True):
        np.testing.assert_array_equal(t, o)


def test_ema_update_runs_inside_the_jitted_step(jepa_run):
    _, states, _, _, _ = jepa_run
    before, after = states[1], states[2]
    # target ← m · target + (1 − m) · online, with the weights the step's gradient is taken at.
    expected = jax.tree.map(
        lambda t, o: MOMENTUM * t + (1 - MOMENTUM) * o,
        before["model_state"]["target_encoder"],
        before["params"]["encoder"],
    )
    for got, want in zip(
        jax.tree.leaves(after["model_state"]["target_encoder"]),
        jax.tree.leaves(expected),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_prediction_loss_decreases(jepa_run):
    _, _, losses, _, _ = jepa_run
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])


def test_probe_beats_a_random_encoder(jepa_run):
    _, states, _, state, graphdef = jepa_run
    trained, random = probe_auroc(graphdef, state, 4), probe_auroc(graphdef, states[0], 4)
    assert trained > random + 0.02, (trained, random)


def test_loss_is_the_same_on_one_and_eight_devices():
    objective, model = objective_and_model(tiny_config())
    graphdef, state = nnx.split(objective.build_model(model, 0, nnx.Rngs(params=0)))
    signal, _ = synthetic_exams(16, seed=2)

    def loss_on(devices):
        mesh = sharding.make_mesh(devices=devices)
        batch = jax.device_put(
            {"signal": signal, "mask": np.ones(16, np.float32)}, sharding.batch_sharding(mesh)
        )

        @jax.jit
        def loss(state, batch):
            rngs = nnx.Rngs(dropout=0, augment=1)
            return objective.loss_fn(nnx.merge(graphdef, state), batch, rngs, train=True)[0]

        with jax.set_mesh(mesh):
            return float(loss(jax.device_put(state, NamedSharding(mesh, PartitionSpec())), batch))

    assert loss_on(jax.devices()[:8]) == pytest.approx(loss_on(jax.devices()[:1]), rel=1e-5)


def test_with_accumulation_the_target_moves_once_per_optimizer_step_by_the_momentum():
    # Two micro-batches per optimizer step: the online weights stay put during the cycle, and
    # the target must end one EMA step with `MOMENTUM` closer to them, not two.
    objective, model = objective_and_model(tiny_config(), accum_steps=2)
    tx = optax.MultiSteps(optax.adam(3e-3), every_k_schedule=2)
    state, graphdef = fresh_state(objective, model, tx)
    # Move the target away from the online encoder so that the momentum shows.
    state["model_state"]["target_encoder"] = jax.tree.map(
        lambda t: t + 0.5, state["model_state"]["target_encoder"]
    )
    before = {k: jax.tree.map(np.asarray, state[k]) for k in ("params", "model_state")}
    step = jax.jit(
        functools.partial(
            train_state.train_step, graphdef, objective=objective, tx=tx,
            schedule=optax.constant_schedule(3e-3), accum_steps=2,
        )
    )  # fmt: skip
    for seed in (5, 6):
        signal, _ = synthetic_exams(8, seed=seed)
        state, _ = step(state, {"signal": jnp.asarray(signal), "mask": jnp.ones(8)})
    expected = jax.tree.map(
        lambda t, o: MOMENTUM * t + (1 - MOMENTUM) * o,
        before["model_state"]["target_encoder"],
        before["params"]["encoder"],
    )
    for got, want in zip(
        jax.tree.leaves(state["model_state"]["target_encoder"]),
        jax.tree.leaves(expected),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The optimizer did step once: the online encoder moved.
    moved = jax.tree.map(
        lambda a, b: not np.allclose(a, b), state["params"]["encoder"], before["params"]["encoder"]
    )
    assert any(jax.tree.leaves(moved))


def test_the_momentum_per_micro_batch_compounds_to_the_configured_one_per_update():
    objective, _ = objective_and_model(tiny_config())
    assert objective.micro_batch_momentum == pytest.approx(MOMENTUM)
    objective, _ = objective_and_model(tiny_config(), accum_steps=4)
    assert objective.micro_batch_momentum**4 == pytest.approx(MOMENTUM)
