"""ST-MEM masked modelling: token dropping, training, probe quality and device invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import ConfigDict
from ssl_helpers import (
    fit,
    fresh_state,
    loss_on_mesh,
    objective_and_model,
    probe_auroc,
    synthetic_exams,
)

from ecgfm.objectives import masked
from ecgfm.objectives.masked import patchify, random_token_split


def tiny_config(**objective) -> ConfigDict:
    """A width-32, depth-2 ViT-1D on 64-sample signals with the masked objective."""
    config = ConfigDict()
    config.model = ConfigDict(
        {"name": "vit1d", "hparams": ConfigDict(
            {"patch_size": 16, "width": 32, "depth": 2, "num_heads": 2, "max_patches": 4})}
    )  # fmt: skip
    config.objective = ConfigDict(
        {"name": "masked", "mask_ratio": 0.75, "decoder_width": 32, "decoder_depth": 1,
         "decoder_heads": 2, **objective}
    )  # fmt: skip
    return config


def test_patches_are_lead_major_like_the_vit_tokens():
    signal = np.arange(2 * 8 * 3, dtype=np.float32).reshape(2, 8, 3)  # [B, T, C]
    patches = np.asarray(patchify(jnp.asarray(signal), 4))
    assert patches.shape == (2, 6, 4)
    np.testing.assert_array_equal(patches[1, 2 * 2 + 1], signal[1, 4:8, 2])  # lead 2, patch 1


def test_every_exam_keeps_the_same_number_of_distinct_tokens():
    kept, dropped = random_token_split(jax.random.key(0), 5, 48, 12)
    assert kept.shape == (5, 12) and dropped.shape == (5, 36)
    for k, d in zip(np.asarray(kept), np.asarray(dropped), strict=True):
        assert sorted(np.concatenate([k, d])) == list(range(48))
    assert len({tuple(sorted(k)) for k in np.asarray(kept)}) == 5  # a different mask per exam


def test_masked_objective_needs_the_vit():
    config = tiny_config()
    config.model = ConfigDict({"name": "ribeiro_resnet", "hparams": ConfigDict()})
    objective, model = objective_and_model(config)
    with pytest.raises(ValueError, match="vit1d"):
        objective.build_model(model, 0, nnx.Rngs(params=0))


def test_loss_is_the_same_on_one_and_eight_devices():
    config = tiny_config()
    (one, _), (eight, _) = (
        loss_on_mesh(config, jax.devices()[:1]),
        loss_on_mesh(config, jax.devices()[:8]),
    )
    assert eight == pytest.approx(one, rel=1e-5)


@pytest.fixture(scope="module")
def mae_run():
    config = tiny_config(norm_targets=False)
    signal, _ = synthetic_exams(32, seed=3)
    return config, fit(config, signal, steps=30)


def test_reconstruction_loss_decreases(mae_run):
    _, (losses, _, _) = mae_run
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])


def test_probe_beats_a_random_encoder(mae_run):
    config, (_, state, graphdef) = mae_run
    random_state, _ = fresh_state(*objective_and_model(config), optax.adam(1e-3))
    trained, random = probe_auroc(graphdef, state, 4), probe_auroc(graphdef, random_state, 4)
    assert trained > random + 0.02, (trained, random)


@pytest.mark.parametrize("norm_targets", [True, False])
def test_loss_ignores_the_patches_the_encoder_sees(norm_targets, monkeypatch):
    # The targets at kept positions are NaN: a loss that read them would be NaN or change.
    config = tiny_config(norm_targets=norm_targets)
    objective, spec = objective_and_model(config)
    model = objective.build_model(spec, 0, nnx.Rngs(params=0))
    signal = jnp.asarray(synthetic_exams(4, seed=5)[0])
    key = jax.random.key(3)
    loss = jax.jit(
        lambda x: objective.reconstruction_loss(model, x, key, train=False, rngs=None)[0]
    )
    clean = np.asarray(loss(signal))
    kept, _ = random_token_split(key, 4, 48, 12)  # 25 % of 48 tokens kept, same key and draw

    def nan_at_kept(signal_btc, patch_size):
        patches = patchify(signal_btc, patch_size)
        return patches.at[jnp.arange(4)[:, None], kept].set(jnp.nan)

    monkeypatch.setattr(masked, "patchify", nan_at_kept)
    poisoned = np.asarray(loss(signal))
    assert np.isfinite(poisoned).all()
    np.testing.assert_array_equal(poisoned, clean)
