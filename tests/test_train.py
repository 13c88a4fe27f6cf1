"""The training core: the objective's loss, macro AUROC, the sharded step, the smoke run."""

import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics
from ml_collections import ConfigDict

from ecgfm import sharding
from ecgfm.config import load_config
from ecgfm.objectives import make_objective
from ecgfm.objectives.supervised import masked_bce, masked_macro_auroc
from ecgfm.optim import make_optimizer
from ecgfm.train import init_state, jit_train_step, state_shardings

NUM_CLASSES, LENGTH = 3, 256


def _config() -> ConfigDict:
    return ConfigDict(
        {
            "model": {
                "name": "ribeiro_resnet",
                "hparams": {"widths": (8, 8, 16), "kernel_size": 5, "dropout": 0.2,
                            "input_length": LENGTH},
            },
            "objective": {"name": "supervised", "pos_weight": None},
            "optim": {
                "learning_rate": 1e-2, "schedule": "warmup_cosine", "warmup_steps": 2,
                "end_lr_fraction": 0.1, "b1": 0.9, "b2": 0.999, "weight_decay": 1e-4,
                "clip_norm": 1.0, "grad_accum_steps": 1,
            },
        }
    )  # fmt: skip


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
    num_steps = len(batches)
    config = _config()
    mesh = sharding.make_mesh(devices=devices)
    objective = make_objective(config)
    tx, schedule = make_optimizer(config.optim, num_steps)
    graphdef, _, shardings = state_shardings(config, objective, tx, NUM_CLASSES, mesh)
    init = functools.partial(init_state, config, objective, tx, NUM_CLASSES)
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
        params0 = jax.tree.map(np.asarray, state["params"])
        step_fn = jit_train_step(graphdef, shardings, mesh, objective, tx, schedule, 1)
        history = []
        for batch in batches:
            batch = jax.device_put(batch, sharding.batch_sharding(mesh))
            state, metrics = step_fn(state, batch)
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
            "data.synthetic_exams=48",
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
    config = load_config("experiments/configs/smoke_jepa.py")
    objective = make_objective(config)
    tx, _ = make_optimizer(config.optim, 10)
    mesh = sharding.make_mesh(data=2, fsdp=4)
    _, abstract, shardings = state_shardings(config, objective, tx, 6, mesh)
    params = shardings["params"]["encoder"]
    target = shardings["model_state"]["target_encoder"]
    assert jax.tree.structure(params) == jax.tree.structure(target)
    assert jax.tree.leaves(jax.tree.map(lambda p, t: p.spec == t.spec, params, target)) == [
        True
    ] * len(jax.tree.leaves(params))
    # FSDP really splits the EMA copy (it is as large as the encoder), not only the parameters.
    kernel = target["patch_embed"]["kernel"]
    assert "fsdp" in kernel.spec and abstract["model_state"]["target_encoder"]
