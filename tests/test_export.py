"""Exported encoders: self-describing, reload to the same embeddings, refuse mismatched input."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from ecgfm import checkpoint, sharding, train_state
from ecgfm.config import load_config
from ecgfm.experiment import Experiment
from ecgfm.export import export_encoder, load_encoder
from ecgfm.optim import make_optimizer
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


def test_exporting_again_replaces_the_export(exported, tmp_path):
    workdir, out = exported
    again = tmp_path / "export"
    shutil.copytree(out, again)
    assert export_encoder(workdir, again) == again
    assert json.loads((again / "ecgfm_encoder.json").read_text())["trained_steps"] == 3
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in out.iterdir())
    load_encoder(again)


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
    [((1024, 12), 500, "expected 400"), ((1024, 8), 400, "expected 12")],
)  # fmt: skip
def test_encoder_refuses_input_against_its_preprocessing(exported, shape, rate, message):
    encoder = load_encoder(exported[1])
    with pytest.raises(ValueError, match=message):
        encoder(np.zeros(shape, np.float32), sampling_rate=rate)


def test_encoder_embeds_any_length_and_is_one_type_with_an_identity(exported):
    # Trained on 1024 samples (2.56 s); a 2.5 s window and a 10 s record embed alike.
    import ecgfm
    from ecgfm.encoder import Encoder

    encoder = ecgfm.load_encoder(exported[1])
    assert isinstance(encoder, Encoder)
    for length in (1000, 4000):
        assert encoder(np.zeros((2, length, 12), np.float32), sampling_rate=400).shape == (2, 16)
    described = encoder.describe()
    assert described["path"] == str(exported[1].resolve())
    assert described["hash"] == encoder.checkpoint_hash and len(encoder.checkpoint_hash) == 64
    twin = encoder.random_twin(seed=0)
    assert twin.architecture == encoder.architecture and twin.preprocessing == encoder.preprocessing
    assert twin.checkpoint_hash != encoder.checkpoint_hash


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_encoder_refuses_non_finite_input(exported, bad):
    encoder = load_encoder(exported[1])
    signal = np.zeros((2, 1024, 12), np.float32)
    signal[1, 500, 3] = bad
    with pytest.raises(ValueError, match=r"NaN/Inf .*\(1, 500, 3\)"):
        encoder(signal, sampling_rate=400)


def _smoke(workdir, *overrides: str):
    """The smoke config on the packed synthetic dataset the run in `workdir` built."""
    (build,) = (workdir / "data" / "tfds" / "code").iterdir()
    return load_config(
        "experiments/configs/smoke.py",
        ["train.eval_every=0", f"data.path={workdir / 'data' / 'tfds'}",
         f"data.build={build.name}", *overrides],
    )  # fmt: skip


def _training(config, mesh) -> train_state.Training:
    exp = Experiment.from_config(config)
    tx, schedule = make_optimizer(exp.optim, exp.train.steps)
    build = lambda rngs: exp.objective.build_model(exp.model, 6, rngs)  # noqa: E731
    return train_state.compile_training(build, exp.objective, tx, schedule, mesh)


def _pure(tree) -> dict:
    return jax.tree.map(np.asarray, tree)


def test_init_from_takes_the_exported_encoder_on_the_run_mesh_and_keeps_a_fresh_head(exported):
    workdir, out = exported
    config = _smoke(workdir, f"init_from={out}")
    mesh = sharding.make_mesh(data=4, fsdp=2)  # FSDP splits the kernels: not one device
    training = _training(config, mesh)
    shardings = training.shardings
    with jax.set_mesh(mesh):
        fresh = training.init(jax.random.key(config.seed))
        head = _pure(fresh["params"]["head"])
        scratch_encoder = _pure(fresh["params"]["encoder"])
        state = train_state.encoder_init(fresh, pathlib.Path(config.init_from))

    exported_model = load_encoder(out).module
    expected_params = _pure(nnx.to_pure_dict(nnx.state(exported_model, nnx.Param)))
    expected_stats = _pure(nnx.to_pure_dict(nnx.state(exported_model, nnx.BatchStat)))
    jax.tree.map(np.testing.assert_array_equal, _pure(state["params"]["encoder"]), expected_params)
    stats = {k: v for k, v in state["model_state"]["encoder"].items() if k in expected_stats}
    jax.tree.map(np.testing.assert_array_equal, _pure(stats), expected_stats)
    assert not np.array_equal(
        scratch_encoder["stem_conv"]["kernel"], expected_params["stem_conv"]["kernel"]
    )
    jax.tree.map(np.testing.assert_array_equal, _pure(state["params"]["head"]), head)
    # Laid out as the run needs it, not gathered on one device.
    kernel = state["params"]["encoder"]["units"][0]["conv1"]["kernel"]
    assert kernel.sharding == shardings["params"]["encoder"]["units"][0]["conv1"]["kernel"]
    assert len(kernel.sharding.device_set) == 8


def test_resume_continues_another_workdirs_run_at_its_step(exported, tmp_path):
    workdir, _ = exported  # trained 3 steps
    # Learning rate 0: the parameters after step 4 are those the resumed checkpoint holds.
    config = _smoke(workdir, "train.steps=4", f"resume={workdir}", "optim.learning_rate=0.0")
    train_and_evaluate(config, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [4]

    target = _training(config, sharding.make_mesh()).target
    source = checkpoint.restore_state(workdir / "checkpoints", target)
    resumed = checkpoint.restore_state(tmp_path / "checkpoints", target)
    assert int(source["step"]) == 3 and int(resumed["step"]) == 4
    jax.tree.map(np.testing.assert_array_equal, _pure(resumed["params"]), _pure(source["params"]))


def test_a_changed_config_on_an_existing_workdir_is_refused_and_nothing_lost(exported, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(exported[0], workdir, ignore=shutil.ignore_patterns("export"))
    before = {
        p.relative_to(workdir): p.read_bytes()
        for p in workdir.rglob("*")
        if p.is_file() and "data" not in p.parts
    }
    config = _smoke(workdir, "train.steps=6", "model.hparams.widths=(8, 16, 32)")
    with pytest.raises(checkpoint.CheckpointMismatchError, match="do not match this config"):
        train_and_evaluate(config, workdir)
    after = {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    assert all(after.get(path) == content for path, content in before.items())


def test_safetensors_export_round_trips_bit_exactly(exported, tmp_path):
    workdir, out = exported
    hf = export_encoder(workdir, tmp_path / "hf", layout="safetensors")
    assert sorted(p.name for p in hf.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not list(hf.rglob("*.pkl"))
    orbax, shared = load_encoder(out), load_encoder(hf)
    for a, b in zip(jax.tree.leaves(nnx.state(orbax.module)),
                    jax.tree.leaves(nnx.state(shared.module)), strict=True):  # fmt: skip
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert shared.config == orbax.config
    signal = np.random.default_rng(1).normal(size=(2, 1024, 12)).astype(np.float32)
    np.testing.assert_array_equal(orbax(signal, 400), shared(signal, 400))
