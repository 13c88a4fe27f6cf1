"""CPC: the InfoNCE terms against a NumPy transcription, device-count invariance, the settings,
health metrics, a short fit, and the configs end to end."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict
from ssl_helpers import fit, loss_on_mesh, objective_and_model, synthetic_exams

from ecgfm import train
from ecgfm.config import ConfigError, load_config, settings_from
from ecgfm.experiment import Experiment
from ecgfm.objectives.cpc import CpcSettings, cpc_terms, sequence_negative_indices

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"


def tiny_config(**objective) -> ConfigDict:
    """A causal S4 (stem 16, width 16, depth 2) on 64-sample signals with the CPC objective."""
    config = ConfigDict()
    config.model = ConfigDict(
        {"name": "s4", "hparams": ConfigDict(
            {"width": 16, "depth": 2, "state_size": 8, "bidirectional": False,
             "stem_widths": (16,), "dropout": 0.0})}
    )  # fmt: skip
    config.objective = ConfigDict(
        {"name": "cpc", "steps_ahead": (1, 3), "predictor_hidden": 8, **objective}
    )
    return config


def numpy_cpc(pred, z, weight, steps, negatives, negative_index=None):
    """CPC's InfoNCE written out anchor by anchor: per exam and step, the mean over anchors t
    of −log(exp(p·z⁺) / Σ_candidates exp(p·z)) and whether z⁺ scores highest."""
    b, t = z.shape[:2]
    nll, correct = np.zeros((b, len(steps))), np.zeros((b, len(steps)))
    for i, k in enumerate(steps):
        for e in range(b):
            if weight[e] == 0:
                continue
            terms, hits = [], []
            for a in range(t - k):
                positive = z[e, a + k]
                if negatives == "batch":
                    others = [z[c, a + k] for c in range(b) if c != e and weight[c] > 0]
                else:
                    others = [z[e, s] for s in negative_index[k][e, a]]
                scores = np.array([pred[e, a, i] @ c for c in [positive, *others]])
                terms.append(-(scores[0] - np.log(np.sum(np.exp(scores)))))
                hits.append(scores[0] > scores[1:].max())
            nll[e, i], correct[e, i] = np.mean(terms), np.mean(hits)
    return nll, correct


@pytest.fixture(scope="module")
def small_arrays():
    rng = np.random.default_rng(0)
    pred, z = rng.normal(size=(5, 9, 2, 4)), rng.normal(size=(5, 9, 4))
    return pred, z, np.array([1, 1, 0, 1, 1], np.float32)  # exam 2 is padding


def test_batch_negatives_loss_equals_numpy_reference(small_arrays):
    pred, z, weight = small_arrays
    nll, correct = cpc_terms(pred, z, weight, (1, 3), negatives="batch")
    expected_nll, expected_correct = numpy_cpc(pred, z, weight, (1, 3), "batch")
    np.testing.assert_allclose(nll, expected_nll, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(correct, expected_correct)
    assert (np.asarray(nll)[2] == 0).all()  # padding contributes nothing


def test_sequence_negatives_loss_equals_numpy_reference(small_arrays):
    pred, z, weight = small_arrays
    key = jax.random.key(7)
    nll, correct = cpc_terms(
        pred, z, weight, (1, 3), negatives="sequence", key=key, num_negatives=6
    )
    index = {
        k: np.asarray(sequence_negative_indices(jax.random.fold_in(key, k), 5, 9 - k, k, 6))
        for k in (1, 3)
    }
    expected_nll, expected_correct = numpy_cpc(pred, z, weight, (1, 3), "sequence", index)
    np.testing.assert_allclose(nll, expected_nll, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(correct, expected_correct)


def test_sequence_negatives_are_every_other_time_step_never_the_positive():
    # 12 steps, step 2, 10 anchors: each anchor's 2000 draws cover exactly the 11 steps other
    # than its positive, about uniformly.
    index = np.asarray(sequence_negative_indices(jax.random.key(0), 1, 10, 2, 2000))
    for anchor in range(10):
        values, counts = np.unique(index[0, anchor], return_counts=True)
        assert values.tolist() == [s for s in range(12) if s != anchor + 2]
        assert counts.min() > 120  # expected 2000 / 11 ≈ 182


def test_predicting_the_future_perfectly_gives_full_accuracy_and_low_loss():
    # Unit-norm latents: the dot-product score of p_t = 30 · z_{t+k} is highest for z_{t+k}.
    z = np.random.default_rng(1).normal(size=(4, 10, 8))
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    pred = 30 * np.stack([np.roll(z, -k, axis=1) for k in (1, 2)], axis=2)
    nll, correct = cpc_terms(pred, z, np.ones(4), (1, 2), negatives="batch")
    assert np.all(np.asarray(correct) == 1.0)
    assert float(np.max(nll)) < 0.01


@pytest.mark.parametrize("negatives", ["batch", "sequence"])
def test_loss_is_the_same_on_one_and_eight_devices(negatives):
    config = tiny_config(negatives=negatives, num_negatives=16)
    one, one_metrics = loss_on_mesh(config, jax.devices()[:1])
    eight, eight_metrics = loss_on_mesh(config, jax.devices()[:8])
    assert eight == pytest.approx(one, rel=1e-5)
    assert set(one_metrics) == {
        "loss", "accuracy", "accuracy_step1", "accuracy_step3", "embedding_std"
    }  # fmt: skip
    for name, value in one_metrics.items():
        assert np.isfinite(value)
        assert eight_metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6)


def test_settings_are_a_frozen_dataclass_and_misspelt_keys_are_named():
    objective, _ = objective_and_model(tiny_config())
    assert objective.settings == CpcSettings(steps_ahead=(1, 3), predictor_hidden=8)
    assert settings_from(CpcSettings, {"steps_ahead": [1, 3]}, "objective").steps_ahead == (1, 3)
    with pytest.raises(ConfigError) as error:
        objective_and_model(tiny_config(step_ahead=(2,)))
    message = str(error.value)
    assert "objective.step_ahead (did you mean 'steps_ahead'?)" in message
    assert "steps_ahead, negatives, num_negatives, predictor_hidden" in message
    with pytest.raises(ValueError, match="negatives"):
        CpcSettings(negatives="memory_bank")
    with pytest.raises(ValueError, match="distinct positive"):
        CpcSettings(steps_ahead=(0, 2))


def test_context_network_must_be_causal_and_have_a_stem():
    def build(config):
        objective, model = objective_and_model(config)
        return objective.build_model(model, 0, nnx.Rngs(0))

    config = tiny_config()
    config.model.hparams.bidirectional = True
    with pytest.raises(ValueError, match="causal"):
        build(config)
    config = tiny_config()
    config.model.hparams.stem_widths = ()
    with pytest.raises(ValueError, match="stem_widths"):
        build(config)
    config = tiny_config()
    config.model = ConfigDict({"name": "vit1d", "hparams": ConfigDict()})
    with pytest.raises(ValueError, match="S4"):
        build(config)


def test_eval_outputs_and_metrics_report_accuracy_per_step():
    objective, spec = objective_and_model(tiny_config())
    model = objective.build_model(spec, 0, nnx.Rngs(params=0))
    signal, _ = synthetic_exams(6, seed=1)
    batch = {"signal": jnp.asarray(signal), "mask": jnp.asarray([1, 1, 1, 1, 0, 0], jnp.float32)}
    outputs = jax.tree.map(np.asarray, nnx.jit(objective.eval_outputs)(model, batch))
    assert outputs["embedding"].shape == (6, 16)
    metrics = objective.eval_metrics(outputs)
    for name in ("prediction_loss", "accuracy", "accuracy_step1", "accuracy_step3",
                 "embedding_std", "uniformity"):  # fmt: skip
        assert np.isfinite(metrics[name]), name
    assert 0.0 <= metrics["accuracy_step1"] <= 1.0


def predictable_exams(n: int, seed: int) -> np.ndarray:
    """`[n, 64, 12]` sums of two sinusoids (random frequency, phase and per-lead gain) with a
    little noise: the next samples follow from the past, unlike `ssl_helpers`' white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(64)[None, :, None] / 64
    waves = sum(
        np.sin(2 * np.pi * rng.uniform(1, 6, (n, 1, 1)) * t + rng.uniform(0, 2 * np.pi, (n, 1, 1)))
        for _ in range(2)
    )
    signal = waves * rng.uniform(0.5, 1.5, (n, 1, 12)) + 0.1 * rng.normal(size=(n, 64, 12))
    return signal.astype(np.float32)


def test_cpc_fit_lowers_the_loss_and_raises_accuracy():
    config = tiny_config()
    signal = predictable_exams(16, seed=3)
    losses, state, graphdef = fit(config, signal, steps=30)
    assert np.isfinite(losses).all()
    # Below chance, log(16 candidates) ≈ 2.77, and still falling.
    assert np.mean(losses[-5:]) < 0.9 * np.log(16) and losses[-1] < losses[-6]
    model = nnx.merge(graphdef, state["params"], state["model_state"])
    objective, _ = objective_and_model(config)
    batch = {"signal": jnp.asarray(signal), "mask": jnp.ones(16)}
    metrics = objective.eval_metrics(
        jax.tree.map(np.asarray, nnx.jit(objective.eval_outputs)(model, batch))
    )
    for step in (1, 3):
        assert metrics[f"accuracy_step{step}"] > 2 / 16, metrics  # chance: 1 of 16 candidates


@pytest.mark.parametrize("name", ["smoke_cpc", "code2_cpc_s4"])
def test_cpc_configs_build_an_s4_encoder_and_no_head(name):
    exp = Experiment.from_config(load_config(CONFIGS / f"{name}.py", ["data.path=/data"]))
    model = nnx.eval_shape(lambda: exp.objective.build_model(exp.model, 66, nnx.Rngs(params=0)))
    assert exp.model.name == "s4" and not exp.model.hparams.bidirectional
    params = nnx.state(model, nnx.Param)
    assert "head" not in params
    if name == "code2_cpc_s4":  # the counts its docstring compares with ECG-CPC's 3.8 M
        size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
        assert (size(params), size(params["encoder"])) == (3_742_720, 3_217_920)


@pytest.mark.slow
def test_smoke_cpc_trains_logs_per_step_accuracy_and_exports(tmp_path):
    from ecgfm.export import export_encoder, load_encoder

    config = load_config(CONFIGS / "smoke_cpc.py", [
        "train.steps=8", "train.eval_every=8", "train.checkpoint_every=4",
        "train.async_checkpoint=false", "data.synthetic_exams=64",
    ])  # fmt: skip
    final = train.train_and_evaluate(config, tmp_path / "run")
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 8 and np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    for key in ("accuracy_step1", "accuracy_step4", "accuracy_step12", "embedding_std"):
        assert all(np.isfinite(r[key]) for r in rows if "loss" in r), key
    assert np.isfinite(final["val_prediction_loss"]) and np.isfinite(final["val_accuracy_step12"])
    encoder = load_encoder(export_encoder(tmp_path / "run", tmp_path / "encoder"))
    assert encoder.config["model"] == "s4" and encoder.config["objective"] == "cpc"
    signal = np.random.default_rng(0).normal(size=(2, 1024, 12)).astype(np.float32)
    assert encoder.embed(signal, sampling_rate=400.0).shape == (2, 32)
