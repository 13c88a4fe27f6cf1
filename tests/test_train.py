"""The training core: the objective's loss, macro AUROC, the sharded step, the smoke run."""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics

from ecgfm import sharding, train_state
from ecgfm.config import load_config
from ecgfm.experiment import Experiment
from ecgfm.models import ModelSpec
from ecgfm.objectives.supervised import SupervisedObjective, masked_bce, masked_macro_auroc
from ecgfm.optim import OptimConfig, make_optimizer

NUM_CLASSES, LENGTH = 3, 256
MODEL = ModelSpec.create(
    "ribeiro_resnet", {"widths": (8, 8, 16), "kernel_size": 5, "dropout": 0.2,
                       "input_length": LENGTH}
)  # fmt: skip
OPTIM = OptimConfig(learning_rate=1e-2, warmup_steps=2, end_lr_fraction=0.1)


def _batches(num: int, batch_size: int = 8) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(num):
        labels = (rng.random((batch_size, NUM_CLASSES)) < 0.4).astype(np.float32)
        signal = rng.normal(size=(batch_size, LENGTH, 12)).astype(np.float32)
        signal[:, :, 0] += 2.0 * labels[:, :1]  # learnable: class 0 shifts lead I
        label_mask = (rng.random((batch_size, NUM_CLASSES)) < 0.9).astype(np.float32)
        out.append({"signal": signal, "labels": labels, "label_mask": label_mask,
                    "mask": np.ones(batch_size, np.float32)})  # fmt: skip
    return out


def _losses(devices: list, batches: list[dict]) -> tuple[list[dict], dict]:
    mesh = sharding.make_mesh(devices=devices)
    tx, schedule = make_optimizer(OPTIM, len(batches))
    training = train_state.compile_training(
        lambda rngs: MODEL.build_classifier(NUM_CLASSES, rngs), SupervisedObjective(), tx,
        schedule, mesh,
    )  # fmt: skip
    with jax.set_mesh(mesh):
        state = training.init(jax.random.key(0))
        params0 = jax.tree.map(np.asarray, state["params"])
        history = []
        for batch in batches:
            state, metrics = training.step(state, training.global_batch(batch))
            history.append({k: float(v) for k, v in metrics.items()})
    return history, {"params0": params0, "state": state}


def test_masked_bce_matches_closed_form_and_ignores_masked_entries():
    logits = jnp.array([[0.0, 2.0], [-1.0, 100.0]])
    labels = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    weight = jnp.array([[1.0, 1.0], [1.0, 0.0]])  # the last entry is a missing label
    expected = (np.log(2) + np.log1p(np.exp(2.0)) + np.log1p(np.exp(-1.0))) / 3
    assert float(masked_bce(logits, labels, weight)) == pytest.approx(expected, rel=1e-6)
    # A positive weight of 3 on class 0 triples its positive term only.
    pos = float(masked_bce(logits, labels, weight, jnp.array([3.0, 1.0])))
    assert pos == pytest.approx(expected + 2 * np.log(2) / 3, rel=1e-6)


def test_macro_auroc_equals_sklearn_and_skips_single_valued_classes():
    rng = np.random.default_rng(1)
    labels = (rng.random((200, 4)) < 0.3).astype(np.float32)
    scores = labels * 0.5 + rng.normal(size=(200, 4))
    scores[:50, 1] = 0.25  # ties
    labels[:, 3] = 0.0  # a class with no positives has no AUROC
    weight = (rng.random((200, 4)) < 0.8).astype(np.float32)
    expected = np.mean([
        sklearn.metrics.roc_auc_score(labels[weight[:, k] > 0, k], scores[weight[:, k] > 0, k])
        for k in range(3)
    ])  # fmt: skip
    assert masked_macro_auroc(scores, labels, weight) == pytest.approx(expected, abs=1e-12)
    assert masked_macro_auroc(scores, labels, weight) != pytest.approx(
        masked_macro_auroc(scores, labels, np.ones_like(weight)), abs=1e-6
    )
    assert np.isnan(masked_macro_auroc(scores[:, 3:], labels[:, 3:], weight[:, 3:]))


@pytest.mark.slow
def test_train_step_gives_finite_decreasing_loss_and_changes_parameters():
    history, out = _losses(jax.devices(), _batches(1) * 12)  # fit one batch
    losses = [m["loss"] for m in history]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0]
    assert int(out["state"]["step"]) == 12
    for name in ("learning_rate", "grad_norm", "param_norm", "update_norm"):
        assert all(m[name] > 0 for m in history[1:]), name
    changed = jax.tree.map(
        lambda a, b: not np.array_equal(a, np.asarray(b)), out["params0"], out["state"]["params"]
    )
    assert all(jax.tree.leaves(changed))


@pytest.mark.slow
def test_one_device_and_eight_devices_give_the_same_loss_curve():
    assert len(jax.devices()) == 8, "conftest sets 8 fake CPU devices"
    one, _ = _losses(jax.devices()[:1], _batches(4))
    eight, _ = _losses(jax.devices(), _batches(4))
    np.testing.assert_allclose(
        [m["loss"] for m in one], [m["loss"] for m in eight], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        [m["grad_norm"] for m in one], [m["grad_norm"] for m in eight], rtol=1e-4
    )


@pytest.mark.slow
def test_smoke_config_trains_evaluates_and_writes_its_workdir(tmp_path):
    from ecgfm.train import train_and_evaluate

    config = load_config(
        "experiments/configs/smoke.py",
        [
            "train.steps=6",
            "train.eval_every=3",
            "train.checkpoint_every=3",
            "data.synthetic_exams=64",
        ],
    )
    started = time.perf_counter()
    final = train_and_evaluate(config, tmp_path)
    elapsed = time.perf_counter() - started
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if "loss" in line]
    assert [line["step"] for line in train_lines] == [1, 2, 3, 4, 5, 6]
    for line in train_lines:
        assert {"learning_rate", "grad_norm"} <= set(line)
        assert np.isfinite(line["loss"])
    # Throughput: not for step 1 (compilation); the seconds it implies for the later steps
    # (timed from the end of the evaluation at step 3 for step 4) add up to less than the run.
    timed = {
        line["step"]: line["samples_per_second"] for line in lines if "samples_per_second" in line
    }
    assert sorted(timed) == [2, 3, 4, 5, 6]
    seconds = sum(config.train.global_batch_size / rate for rate in timed.values())
    assert 0 < seconds < elapsed
    evals = [line for line in lines if "val_macro_auroc" in line]
    assert [line["step"] for line in evals] == [3, 6]
    assert 0.0 <= final["val_macro_auroc"] <= 1.0
    assert (tmp_path / "config.json").is_file()
    spec = json.loads((tmp_path / "data_spec.json").read_text())
    assert spec["preprocessing"]["num_samples"] == 1024
    assert len(spec["label_names"]) == 6  # the CODE-15% labels
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [
        "3", "6"
    ]  # fmt: skip
    assert list((tmp_path / "tensorboard").iterdir())
    # Rerunning the finished run trains nothing and reports what it logged last.
    assert train_and_evaluate(config, tmp_path) == final
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == len(lines)


def test_jepa_ema_target_is_sharded_like_the_parameters_it_tracks():
    exp = Experiment.from_config(load_config("experiments/configs/smoke_jepa.py"))
    tx, schedule = make_optimizer(exp.optim, 10)
    mesh = sharding.make_mesh(data=2, fsdp=4)
    training = train_state.compile_training(
        lambda rngs: exp.objective.build_model(exp.model, 6, rngs), exp.objective, tx, schedule,
        mesh,
    )  # fmt: skip
    shardings, abstract = training.shardings, training.target
    params = shardings["params"]["encoder"]
    target = shardings["model_state"]["target_encoder"]
    assert jax.tree.structure(params) == jax.tree.structure(target)
    assert jax.tree.leaves(jax.tree.map(lambda p, t: p.spec == t.spec, params, target)) == [
        True
    ] * len(jax.tree.leaves(params))
    # FSDP really splits the EMA copy (it is as large as the encoder), not only the parameters.
    kernel = target["patch_embed"]["kernel"]
    assert "fsdp" in kernel.spec and abstract["model_state"]["target_encoder"]


@pytest.mark.slow
def test_a_diverging_step_is_never_saved_and_the_rerun_resumes_from_the_last_finite_one(tmp_path):
    from ecgfm.train import NonFiniteError, train_and_evaluate

    sane = ["data.synthetic_exams=64", "train.eval_every=0", "train.checkpoint_every=1",
            "train.keep_checkpoints=5"]  # fmt: skip
    train_and_evaluate(load_config("experiments/configs/smoke.py", [*sane, "train.steps=3"]),
                       tmp_path)  # fmt: skip
    # A learning rate that overflows the weights on the next update.
    diverging = [*sane, "train.steps=6", "optim.learning_rate=1e30", "optim.schedule=constant"]
    with pytest.raises(NonFiniteError, match=r"at step 4; stopping without saving it\. The batch "
                       r"held records \d+, .* newest checkpoint \(step 3\)"):  # fmt: skip
        train_and_evaluate(load_config("experiments/configs/smoke.py", diverging), tmp_path)
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [1, 2, 3]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert (
        max(json.loads(line)["step"] for line in lines) == 3
    )  # nothing of the diverged step was logged either
    resumed = load_config("experiments/configs/smoke.py", [*sane, "train.steps=5"])
    final = train_and_evaluate(resumed, tmp_path)
    assert np.isfinite(final["loss"])
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5]
