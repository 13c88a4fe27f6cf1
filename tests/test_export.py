"""Exported encoders: self-describing, reload to the same embeddings, refuse mismatched input."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

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


# --- What load_encoder, read_spec and export_encoder refuse, naming the folder ---------------


def _edit_spec(folder: pathlib.Path, edit) -> None:
    path = folder / "ecgfm_encoder.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _without(spec: dict, key: str) -> dict:
    return {k: v for k, v in spec.items() if k != key}


def _hparams(spec: dict, **hparams) -> dict:
    return {**spec, "hparams": {**spec["hparams"], **hparams}}


SPEC_DAMAGE = {
    "format_version 999": (lambda s: {**s, "format_version": 999},
                           "format_version 999 is not one this ecgfm reads (1)"),
    "no format_version": (lambda s: _without(s, "format_version"),
                          "its spec has no format_version; this ecgfm reads format_version 1"),
    "format_version true": (lambda s: {**s, "format_version": True}, "format_version True"),
    "no preprocessing": (lambda s: _without(s, "preprocessing"), "its spec has no preprocessing"),
    "null preprocessing": (lambda s: {**s, "preprocessing": None}, "has no preprocessing"),
    "preprocessing of another kind": (lambda s: {**s, "preprocessing": {"rate": 400}},
                                      "its preprocessing spec is invalid"),
    "no model": (lambda s: _without(s, "model"), "model None is not a family this ecgfm knows"),
    "unknown model": (lambda s: {**s, "model": "resnet9000"}, "model 'resnet9000' is not a"),
    "no hparams": (lambda s: _without(s, "hparams"), "no hparams object"),
    "unknown hparam": (lambda s: _hparams(s, depth=3), "its hparams do not fit"),
    "a kernel of size 0": (lambda s: _hparams(s, kernel_size=0),
                           "do not fit ribeiro_resnet (ribeiro_resnet: model.hparams: kernel_size"),
    "hparams of another size": (lambda s: _hparams(s, widths=[8, 16, 32]),
                                "its weights do not read as the architecture"),
    "labels not strings": (lambda s: {**s, "label_names": [1, 2]}, "label_names"),
    "spec is a list": (lambda s: [s], "its spec is a JSON list, not an object"),
    "head without classes": (lambda s: {**s, "head": {"activation": "sigmoid"}},
                             "its head has num_classes None"),
}  # fmt: skip


@pytest.mark.parametrize("damage", list(SPEC_DAMAGE))
def test_load_encoder_refuses_a_damaged_spec_naming_the_folder(exported, tmp_path, damage):
    from ecgfm.export import EncoderFormatError

    edit, expected = SPEC_DAMAGE[damage]
    folder = tmp_path / "encoder"
    shutil.copytree(exported[1], folder)
    _edit_spec(folder, edit)
    with pytest.raises(EncoderFormatError) as refused:
        load_encoder(folder)
    assert str(refused.value).startswith(f"{folder}: ")
    assert expected in str(refused.value)


def test_load_encoder_refuses_unreadable_or_missing_files(exported, tmp_path):
    from ecgfm.export import EncoderFormatError, EncoderNotFoundError, read_spec

    folder = tmp_path / "encoder"
    shutil.copytree(exported[1], folder)
    shutil.rmtree(folder / "encoder")
    with pytest.raises(EncoderFormatError, match=rf"^{folder}: it has no encoder/ folder"):
        load_encoder(folder)
    (folder / "ecgfm_encoder.json").write_text('{"format_version": 1, "mod')  # torn
    with pytest.raises(EncoderFormatError, match=rf"^{folder}: ecgfm_encoder.json does not read"):
        read_spec(folder)
    with pytest.raises(EncoderNotFoundError, match=rf"^{tmp_path / 'none'}: no such folder"):
        load_encoder(tmp_path / "none")
    assert issubclass(EncoderNotFoundError, FileNotFoundError)


def test_load_encoder_refuses_damaged_weight_files(exported, tmp_path):
    from ecgfm.export import EncoderFormatError

    folder = tmp_path / "encoder"
    shutil.copytree(exported[1], folder)
    for path in (folder / "encoder").rglob("*"):
        if path.is_file() and path.stat().st_size > 1000:
            path.write_bytes(b"\0" * 64)
    with pytest.raises(EncoderFormatError, match=rf"^{folder}: its weights do not read"):
        load_encoder(folder)


def _nan_weights(exported_folder: pathlib.Path, out: pathlib.Path, layout: str) -> pathlib.Path:
    from ecgfm.export import read_encoder_arrays, write_encoder

    spec, params, model_state, _ = read_encoder_arrays(exported_folder)
    kernel = np.array(params["stem_conv"]["kernel"])
    kernel[0, 0, 0] = np.nan
    params["stem_conv"]["kernel"] = kernel
    return write_encoder(out, params, model_state, spec, layout=layout)


@pytest.mark.parametrize("layout", ["orbax", "safetensors"])
def test_load_encoder_refuses_non_finite_weights(exported, tmp_path, layout):
    from ecgfm.export import EncoderFormatError

    folder = _nan_weights(exported[1], tmp_path / layout, layout)
    expected = (rf"^{folder}: 1 weight array\(s\) hold NaN/Inf \(encoder/params/stem_conv/kernel\)"
                ": every embedding would be NaN")  # fmt: skip
    with pytest.raises(EncoderFormatError, match=expected):
        load_encoder(folder)


def test_safetensors_folders_are_checked_alike(exported, tmp_path):
    from ecgfm.export import EncoderFormatError

    hf = export_encoder(exported[0], tmp_path / "hf", layout="safetensors")
    config = json.loads((hf / "config.json").read_text())
    config["ecgfm"]["format_version"] = 999
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(EncoderFormatError, match=rf"^{hf}: format_version 999"):
        load_encoder(hf)
    del config["ecgfm"]
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(EncoderFormatError, match=rf"^{hf}: config.json has no 'ecgfm' entry"):
        load_encoder(hf)
    hf = export_encoder(exported[0], tmp_path / "hf2", layout="safetensors")
    (hf / "model.safetensors").write_bytes((hf / "model.safetensors").read_bytes()[:200])
    with pytest.raises(EncoderFormatError, match=rf"^{hf}: its weights do not read"):
        load_encoder(hf)


def test_export_refuses_a_workdir_without_a_run_or_checkpoint(exported, tmp_path):
    from ecgfm.checkpoint import NoCheckpointError

    with pytest.raises(NoCheckpointError, match=rf"^{tmp_path / 'none'} is not the workdir"):
        export_encoder(tmp_path / "none", tmp_path / "out")
    started = tmp_path / "started"  # killed before its first checkpoint
    started.mkdir()
    for name in ("config.json", "data_spec.json"):
        shutil.copy(exported[0] / name, started / name)
    with pytest.raises(NoCheckpointError, match=rf"^{started} holds no finished checkpoint"):
        export_encoder(started, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_skips_a_non_finite_checkpoint_and_refuses_when_none_is_finite(exported, tmp_path):
    """A checkpoint holding NaN (as an ecgfm from before the finiteness check could write) is
    never exported: the newest finite one is, or nothing."""
    import orbax.checkpoint as ocp

    workdir = tmp_path / "run"
    shutil.copytree(exported[0], workdir, ignore=shutil.ignore_patterns("export", "data"))
    config = ConfigDict(json.loads((workdir / "config.json").read_text()))
    target = _training(config, sharding.make_mesh()).target
    state = checkpoint.restore_state(workdir / "checkpoints", target)
    state["params"]["encoder"]["stem_conv"]["kernel"] = (
        state["params"]["encoder"]["stem_conv"]["kernel"].at[0, 0, 0].set(np.nan)
    )
    with ocp.CheckpointManager(workdir / "checkpoints") as manager:  # no checksum, no check
        manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    out = export_encoder(workdir, tmp_path / "out")
    assert json.loads((out / "ecgfm_encoder.json").read_text())["trained_steps"] == 3
    assert np.isfinite(load_encoder(out)(np.zeros((1024, 12), np.float32), 400)).all()

    shutil.rmtree(workdir / "checkpoints" / "3")
    expected = r"\(steps 4\) is damaged.*hold NaN/Inf \(params/encoder/stem_conv"
    with pytest.raises(checkpoint.CheckpointDamagedError, match=expected):
        export_encoder(workdir, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
