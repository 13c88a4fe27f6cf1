"""Optimizer: schedules reach their documented values; norms and biases are not decayed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ecgfm import models
from ecgfm.optim import OptimConfig, make_optimizer, make_schedule, weight_decay_mask


def _optim(**overrides) -> OptimConfig:
    base = dict(
        learning_rate=1e-2, schedule="warmup_cosine", warmup_steps=10, end_lr_fraction=0.1,
        b1=0.9, b2=0.999, weight_decay=0.1, clip_norm=0.0, grad_accum_steps=1,
    )  # fmt: skip
    return OptimConfig(**(base | overrides))


def test_warmup_cosine_rises_linearly_then_decays_to_the_end_fraction():
    schedule = make_schedule(_optim(), total_steps=100)
    assert float(schedule(0)) == 0.0  # documented: the first update only fills Adam's moments
    assert float(schedule(5)) == pytest.approx(5e-3)
    assert float(schedule(10)) == pytest.approx(1e-2)
    # Halfway through the cosine part: (peak + end) / 2.
    assert float(schedule(55)) == pytest.approx((1e-2 + 1e-3) / 2, rel=1e-4)
    assert float(schedule(100)) == pytest.approx(1e-3)


def test_one_cycle_peaks_at_pct_start():
    schedule = make_schedule(_optim(schedule="one_cycle", pct_start=0.3), total_steps=100)
    values = np.array([float(schedule(i)) for i in range(100)])
    assert int(values.argmax()) == 30
    assert values.max() == pytest.approx(1e-2)


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="linear"):
        _optim(schedule="linear")


@pytest.mark.parametrize(
    ("field", "value"),
    [("learning_rate", -1.0), ("grad_accum_steps", 0), ("warmup_steps", -1), ("b2", 1.0),
     ("weight_decay", -0.1), ("end_lr_fraction", 2.0)],
)  # fmt: skip
def test_impossible_settings_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"{field} is {value}"):
        _optim(**{field: value})


def test_decay_mask_spares_biases_and_norm_scales():
    params = {
        "conv": {"kernel": jnp.ones((3, 4, 5)), "bias": jnp.ones(5)},
        "bn": {"scale": jnp.ones(5), "bias": jnp.ones(5)},
        "units": {0: {"kernel": jnp.ones((5, 5))}},
    }
    mask = weight_decay_mask(params)
    assert mask == {
        "conv": {"kernel": True, "bias": False},
        "bn": {"scale": False, "bias": False},
        "units": {0: {"kernel": True}},
    }


def _decay_by_kind(family: str) -> dict[str, set[bool]]:
    model = nnx.eval_shape(lambda: models.build_model(family, None, 5, nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    decided: dict[str, set[bool]] = {}
    for path, decays in jax.tree_util.tree_flatten_with_path(weight_decay_mask(params))[0]:
        names = [str(getattr(k, "key", k)) for k in path]
        if names[-1] in ("lead_embed", "position_embed", "sep_embed"):
            kind = "embedding"
        elif names[-1] == "kernel":
            kind = "kernel"
        else:
            assert names[-1] in ("scale", "bias"), names  # norms' scales, all biases
            kind = "scale_or_bias"
        decided.setdefault(kind, set()).add(bool(decays))
    return decided


@pytest.mark.parametrize("family", ["ribeiro_resnet", "xresnet1d", "vit1d"])
def test_decay_mask_on_the_real_models_decays_kernels_only(family):
    decided = _decay_by_kind(family)
    assert decided.pop("kernel") == {True}
    assert decided.pop("scale_or_bias") == {False}
    if family == "vit1d":  # the learned position and lead tables are embeddings
        assert decided.pop("embedding") == {False}
    assert not decided


def test_decay_mask_refuses_a_parameter_it_cannot_classify():
    with pytest.raises(ValueError, match="'w'"):
        weight_decay_mask({"layer": {"w": jnp.ones((2, 2))}})


def test_adamw_decays_kernels_but_not_biases_with_zero_gradient():
    tx, _ = make_optimizer(_optim(schedule="constant", weight_decay=0.5), total_steps=10)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    zero = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}
    updates, _ = tx.update(zero, tx.init(params), params)
    # Decoupled decay: update = -lr · wd · w for the kernel, nothing for the bias.
    np.testing.assert_allclose(updates["kernel"], -1e-2 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_array_equal(updates["bias"], np.zeros(2))


def test_gradient_accumulation_applies_the_mean_every_k_steps():
    k = 3
    tx, _ = make_optimizer(
        _optim(schedule="constant", weight_decay=0.0, grad_accum_steps=k), total_steps=30
    )
    params = {"kernel": jnp.zeros(2)}
    state = tx.init(params)
    for i in range(k):
        updates, state = tx.update({"kernel": jnp.full(2, float(i + 1))}, state, params)
        if i < k - 1:
            np.testing.assert_array_equal(updates["kernel"], np.zeros(2))
    # First Adam step of a constant gradient moves every coordinate by -lr.
    np.testing.assert_allclose(updates["kernel"], [-1e-2, -1e-2], rtol=1e-4)
