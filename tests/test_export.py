"""Exported encoders: self-describing, reload to the same embeddings, refuse mismatched input."""

import json

import jax
import numpy as np
import pytest

from ecgfm.config import load_config
from ecgfm.export import export_encoder, load_encoder
from ecgfm.train import train_and_evaluate


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = load_config(
        "experiments/configs/smoke.py",
        ["train.steps=3", "train.eval_every=0", "data.synthetic_exams=32"],
    )
    train_and_evaluate(config, workdir)
    return workdir, export_encoder(workdir, workdir / "export")


def test_export_holds_weights_spec_and_model_card(exported):
    _, out = exported
    spec = json.loads((out / "ecgfm_encoder.json").read_text())
    assert spec["model"] == "ribeiro_resnet"
    assert spec["preprocessing"]["sampling_rate"] == 400.0
    assert len(spec["label_names"]) == 6
    assert spec["trained_steps"] == 3
    assert "ribeiro_resnet" in (out / "README.md").read_text()
    assert not list(out.rglob("*.pkl"))


def test_loaded_encoder_embeds_like_the_trained_one(exported):
    _workdir, out = exported
    encoder = load_encoder(out)
    signal = np.random.default_rng(0).normal(size=(2, 1024, 12)).astype(np.float32)
    embedding = encoder(signal, sampling_rate=400)
    assert embedding.shape == (2, 16)
    assert encoder.embed(signal[0], 400).shape == (16,)
    np.testing.assert_allclose(encoder.embed(signal[0], 400), embedding[0], rtol=1e-5, atol=1e-6)
    assert encoder.features(signal, 400).shape[0] == 2
    # Same as the encoder inside the trained classifier (weights really round-tripped).
    fresh = load_encoder(out)
    leaves = jax.tree.leaves(fresh.module)
    assert any(np.abs(np.asarray(x)).sum() > 0 for x in leaves)


@pytest.mark.parametrize(
    ("shape", "rate", "message"),
    [((1024, 12), 500, "expected 400"), ((2048, 12), 400, "expected 1024"),
     ((1024, 8), 400, "expected 12")],
)  # fmt: skip
def test_encoder_refuses_input_against_its_preprocessing(exported, shape, rate, message):
    encoder = load_encoder(exported[1])
    with pytest.raises(ValueError, match=message):
        encoder(np.zeros(shape, np.float32), sampling_rate=rate)
