"""The self-supervised experiment configs: each builds, and each smoke run trains end to end."""

import json
import pathlib

import numpy as np
import pytest
from flax import nnx

from ecgfm import train
from ecgfm.config import load_config
from ecgfm.experiment import Experiment

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"
SSL = ("simclr", "clocs", "mae", "jepa")


@pytest.mark.parametrize("name", [f"code2_{n}" for n in SSL] + [f"smoke_{n}" for n in SSL])
def test_config_builds_its_model_without_labels(name):
    exp = Experiment.from_config(load_config(CONFIGS / f"{name}.py", ["data.path=/data"]))
    model = nnx.eval_shape(lambda: exp.objective.build_model(exp.model, 66, nnx.Rngs(params=0)))
    assert hasattr(model, "encoder")
    params = nnx.state(model, nnx.Param)
    assert "head" not in params  # nothing label-shaped is trained in pretraining


@pytest.mark.slow
@pytest.mark.parametrize("name", SSL)
def test_smoke_run_logs_a_finite_loss_and_health_metrics(name, tmp_path):
    config = load_config(CONFIGS / f"smoke_{name}.py", [
        "train.steps=6", "train.eval_every=6", "train.checkpoint_every=3",
        "train.async_checkpoint=false", "data.synthetic_exams=64",
    ])  # fmt: skip
    final = train.train_and_evaluate(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 7))
    for row in train_rows:
        for key in ("loss", "learning_rate", "embedding_std"):
            assert np.isfinite(row[key]), (key, row)
    # Throughput is measured from the second step on: the first is mostly compilation.
    assert all(np.isfinite(r["samples_per_second"]) for r in train_rows[1:])
    assert np.isfinite(final["val_embedding_std"]) and np.isfinite(final["val_uniformity"])
    assert any(k.endswith("loss") for k in final if k.startswith("val_"))


@pytest.mark.parametrize("name", ["smoke_simclr", "smoke_clocs", "code2_simclr", "code2_clocs"])
def test_augmentation_sampling_rate_is_the_datas(name):
    overrides = ["data.path=/data", "optim.grad_accum_steps=2"]
    exp = Experiment.from_config(load_config(CONFIGS / f"{name}.py", overrides))
    assert exp.objective.context.sampling_rate == exp.data.preprocessing.sampling_rate == 400.0
    assert exp.objective.context.accum_steps == 2
    rate = "data.preprocessing.sampling_rate=500"
    changed = load_config(CONFIGS / f"{name}.py", [*overrides, rate])
    assert Experiment.from_config(changed).objective.context.sampling_rate == 500.0
