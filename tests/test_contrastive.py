"""SimCLR and CLOCS: the InfoNCE loss, collapse metrics, training, and device-count invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict
from ssl_helpers import (
    fit,
    fresh_state,
    loss_on_mesh,
    objective_and_model,
    probe_auroc,
    synthetic_exams,
)

from ecgfm.objectives import health
from ecgfm.objectives.contrastive import info_nce


def tiny_config(**objective) -> ConfigDict:
    """A width-32, depth-2 ViT-1D on 64-sample signals with the contrastive objective."""
    config = ConfigDict()
    config.model = ConfigDict(
        {"name": "vit1d", "hparams": ConfigDict(
            {"patch_size": 16, "width": 32, "depth": 2, "num_heads": 2, "max_patches": 4})}
    )  # fmt: skip
    config.objective = ConfigDict(
        {"name": "contrastive", "projection_hidden": 32, "projection_dim": 16, **objective}
    )
    return config


def numpy_info_nce(za, zb, temperature, intra_view_negatives):
    """Direct transcription of NT-Xent (SimCLR eq. 1) and of CLOCS' cross-view InfoNCE."""
    za = za / np.linalg.norm(za, axis=1, keepdims=True)
    zb = zb / np.linalg.norm(zb, axis=1, keepdims=True)
    b = len(za)
    terms = []
    if intra_view_negatives:
        z = np.concatenate([za, zb])
        for i in range(2 * b):
            positive = (i + b) % (2 * b)
            others = [k for k in range(2 * b) if k != i]
            denominator = sum(np.exp(z[i] @ z[k] / temperature) for k in others)
            terms.append(-np.log(np.exp(z[i] @ z[positive] / temperature) / denominator))
    else:
        for anchors, candidates in ((za, zb), (zb, za)):
            for i in range(b):
                denominator = sum(np.exp(anchors[i] @ c / temperature) for c in candidates)
                terms.append(
                    -np.log(np.exp(anchors[i] @ candidates[i] / temperature) / denominator)
                )
    return np.mean(terms)


@pytest.mark.parametrize("intra", [True, False], ids=["simclr", "clocs"])
def test_info_nce_equals_numpy_reference(intra):
    rng = np.random.default_rng(0)
    za, zb = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    got = info_nce(za, zb, jnp.ones(6), 0.5, intra_view_negatives=intra)
    np.testing.assert_allclose(got, numpy_info_nce(za, zb, 0.5, intra), rtol=1e-5)


@pytest.mark.parametrize("intra", [True, False], ids=["simclr", "clocs"])
def test_padded_exams_are_neither_anchors_nor_negatives(intra):
    rng = np.random.default_rng(1)
    za, zb = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    weight = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
    got = info_nce(za, zb, weight, 0.5, intra_view_negatives=intra)
    np.testing.assert_allclose(got, numpy_info_nce(za[:4], zb[:4], 0.5, intra), rtol=1e-5)


def test_health_metrics_flag_a_collapsed_representation():
    collapsed = np.tile(np.array([[1.0, 2.0, 3.0]]), (8, 1))
    ones = jnp.ones(8)
    assert float(health.embedding_std(collapsed, ones)) == pytest.approx(0.0, abs=1e-4)
    assert float(health.uniformity(collapsed, ones)) == pytest.approx(0.0, abs=1e-5)
    assert float(health.alignment(collapsed, 5 * collapsed, ones)) == pytest.approx(0.0, abs=1e-6)
    # ±e_k in 4-D: per-dimension std 1/2 over 8 points, √D × 1/2 = 1; pairwise ‖zi − zj‖² is
    # 2 (48 ordered pairs) or 4 (8 pairs, e_k and −e_k) → log((48 e^-4 + 8 e^-8) / 56).
    spread = np.concatenate([np.eye(4), -np.eye(4)])
    assert float(health.embedding_std(spread, ones)) == pytest.approx(1.0, rel=1e-4)
    expected = np.log((48 * np.exp(-4.0) + 8 * np.exp(-8.0)) / 56)
    assert float(health.uniformity(spread, ones)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    "objective",
    [
        {"method": "simclr", "augmentations": ("amplitude_scale", "gaussian_noise", "three_kg")},
        {"method": "clocs", "view": "cmsc"},
        {"method": "clocs", "view": "cmlc"},
    ],
    ids=["simclr", "cmsc", "cmlc"],
)
def test_loss_is_the_same_on_one_and_eight_devices(objective):
    config = tiny_config(**objective)
    one, one_metrics = loss_on_mesh(config, jax.devices()[:1])
    eight, eight_metrics = loss_on_mesh(config, jax.devices()[:8])
    assert eight == pytest.approx(one, rel=1e-5)
    for name in ("alignment", "uniformity", "embedding_std"):
        assert eight_metrics[name] == pytest.approx(one_metrics[name], rel=1e-4, abs=1e-6)


@pytest.fixture(scope="module")
def simclr_run():
    config = tiny_config(method="simclr", augmentations=("amplitude_scale", "gaussian_noise"))
    signal, _ = synthetic_exams(32, seed=3)
    return config, fit(config, signal, steps=30)


def test_simclr_loss_decreases(simclr_run):
    _, (losses, _, _) = simclr_run
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


def test_simclr_probe_beats_a_random_encoder(simclr_run):
    config, (_, state, graphdef) = simclr_run
    random_state, _ = fresh_state(*objective_and_model(config), optax.adam(1e-3))
    trained, random = probe_auroc(graphdef, state, 4), probe_auroc(graphdef, random_state, 4)
    assert trained > random + 0.02, (trained, random)


def test_simclr_without_augmentations_is_refused():
    # Its two views would be the same signal: the loss is trivially minimised.
    for objective in ({"method": "simclr", "augmentations": ()}, {"method": "simclr"}):
        with pytest.raises(ValueError, match="identical views"):
            objective_and_model(tiny_config(**objective))
    with pytest.raises(ValueError, match="identical views"):
        objective_and_model(
            tiny_config(method="simclr", augmentations=("amplitude_scale",), augment_probability=0)
        )
    objective_and_model(tiny_config(method="clocs", view="cmsc", augmentations=()))  # views differ


def test_time_based_augmentations_need_the_sampling_rate():
    names = ("amplitude_scale", "baseline_wander")
    with pytest.raises(ValueError, match="sampling_rate"):
        objective_and_model(tiny_config(method="simclr", augmentations=names))
    objective_and_model(tiny_config(method="simclr", augmentations=names, sampling_rate=500.0))
