"""The data module: every run reads a packed dataset through grain, prepared as its config says."""

import dataclasses
import pathlib

import jax
import numpy as np
import pytest

from ecgfm import train_state
from ecgfm.config import ConfigError, load_config
from ecgfm.data.inputs import DataConfig, make_inputs
from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.sources import signal_mv
from ecgfm.data.synthetic import write_dataset
from ecgfm.data.tfds_builders import prepare_dataset

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"
SPEC = Preprocessing(sampling_rate=400.0, num_samples=1024)


@pytest.fixture(scope="module")
def raw_code(tmp_path_factory) -> pathlib.Path:
    return write_dataset("code", tmp_path_factory.mktemp("raw") / "code", num_records=24, seed=3)


@pytest.fixture(scope="module")
def packed(raw_code, tmp_path_factory) -> pathlib.Path:
    """The raw folder built at full length, 400 Hz, no filter: what the smoke configs expect."""
    data_dir = tmp_path_factory.mktemp("tfds")
    prepare_dataset("code", raw_code, data_dir, preprocessing=Preprocessing(sampling_rate=400.0))
    return data_dir


def test_a_dataset_prepared_with_another_spec_is_refused_naming_both(raw_code, tmp_path):
    prepared = Preprocessing(sampling_rate=400.0, bandpass=(0.5, 40.0))
    prepare_dataset("code", raw_code, tmp_path, preprocessing=prepared)
    data = DataConfig(path=str(tmp_path), preprocessing=SPEC)
    with pytest.raises(ConfigError) as error:
        make_inputs(data, workdir=tmp_path, global_batch_size=8, seed=0)
    message = str(error.value)
    assert prepared.describe() in message and SPEC.describe() in message
    assert "bandpass [0.5, 40.0] vs None" in message and str(tmp_path) in message


def test_a_dataset_stored_at_full_length_serves_any_window(packed, tmp_path):
    for window in (512, 1024, 4096):
        data = DataConfig(
            path=str(packed), preprocessing=dataclasses.replace(SPEC, num_samples=window)
        )
        inputs = make_inputs(data, workdir=tmp_path, global_batch_size=8, seed=0)
        batch = next(inputs.train)
        assert batch["signal"].shape == (8, window, 12) and batch["signal"].dtype == np.int16
        (validation,) = list(inputs.validation_batches())  # 10 % of 24 exams: one batch
        assert validation["signal"].shape == (8, window, 12)
        assert inputs.preprocessing.num_samples == window  # what an export will record


def test_the_counts_are_scaled_on_the_device_to_the_values_the_host_would_compute(packed):
    inputs = make_inputs(
        DataConfig(path=str(packed), preprocessing=SPEC), workdir=packed, global_batch_size=8,
        seed=0,
    )  # fmt: skip
    batch = next(inputs.train)
    decoded = jax.jit(train_state.decode_signals)(
        {"signal": batch["signal"], "signal_scale": batch["signal_scale"]}
    )
    rows = zip(batch["signal"], batch["signal_scale"], strict=True)
    host = np.stack([signal_mv({"signal": s, "signal_scale": k}) for s, k in rows])
    np.testing.assert_array_equal(np.asarray(decoded["signal"]), host)


def test_a_batch_larger_than_the_training_split_is_refused(packed, tmp_path):
    with pytest.raises(ConfigError, match="larger than the 20 training records"):
        make_inputs(DataConfig(path=str(packed), preprocessing=SPEC), workdir=tmp_path,
                    global_batch_size=64, seed=0)  # fmt: skip


@pytest.mark.parametrize(
    ("values", "message"),
    [({"path": ""}, "data.path is empty"), ({"source": "hdf5"}, "data.source must be one of"),
     ({"preprocessing": {"sampling_rate": 400.0}}, "num_samples must be set"),
     ({"windwo": 3}, r"unknown config key\(s\) data\.windwo")],
)  # fmt: skip
def test_impossible_data_settings_are_refused_at_config_time(values, message):
    base = {"path": "/data", "preprocessing": SPEC.to_dict()}
    with pytest.raises(ConfigError, match=message):
        DataConfig.from_config(base | values)


@pytest.mark.slow
def test_the_raw_hdf5_source_is_an_explicit_option(raw_code, tmp_path):
    from ecgfm.train import train_and_evaluate

    config = load_config(CONFIGS / "smoke.py", [
        "data.source=code_hdf5", f"data.path={raw_code}", "data.val_fraction=0.25",
        "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
        "train.global_batch_size=8",
    ])  # fmt: skip
    final = train_and_evaluate(config, tmp_path)
    assert np.isfinite(final["loss"]) and "val_macro_auroc" in final
    assert not (tmp_path / "data").exists()  # nothing packed: read in-process


# The smoke configs of the objectives train end to end through the same packed path in their
# own tests (test_ssl_smoke, test_cpc, test_s4); running them here again only cost CI time.
COVERED_ELSEWHERE = {f"smoke_{n}" for n in ("simclr", "clocs", "mae", "jepa", "cpc", "s4")}
SHIPPED = sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem not in COVERED_ELSEWHERE)
# Paper-scale transformers and S4 shrink to one narrow block: the data path, objective and
# precision are the config's, but compiling and stepping a 12-block ViT-S over 648 tokens in
# bf16 on a 2-core CPU took most of a minute per config.
NARROW = {
    "vit1d": ["model.hparams.depth=1", "model.hparams.width=64", "model.hparams.num_heads=2"],
    "s4": ["model.hparams.depth=1", "model.hparams.width=32"],
}
NARROW_DECODER = ["objective.decoder_depth=1", "objective.decoder_width=32",
                  "objective.decoder_heads=2"]  # fmt: skip


def test_the_smoke_configs_left_out_below_are_shipped_configs():
    assert {p.stem for p in CONFIGS.glob("*.py")} >= COVERED_ELSEWHERE


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_trains_two_steps_on_a_tiny_packed_dataset(name, raw_code, tmp_path):
    """As the README says: `ecgfm prepare code --config CONFIG --data-dir D`, then
    `--config.data.path=D`. Batch and data shrink to the test's 24 exams, and the
    paper-scale models to one narrow block (`NARROW`)."""
    from ecgfm.cli import main
    from ecgfm.train import train_and_evaluate

    data_dir = tmp_path / "tfds"
    assert main(["prepare", "code", "--src", str(raw_code), "--data-dir", str(data_dir),
                 "--config", str(CONFIGS / f"{name}.py")]) == 0  # fmt: skip
    overrides = [
        f"data.path={data_dir}", "data.worker_count=0", "train.steps=2",
        "train.global_batch_size=8", "train.eval_every=0", "train.checkpoint_every=2",
        "train.log_every=1",
    ]  # fmt: skip
    config = load_config(CONFIGS / f"{name}.py", overrides)
    if name.startswith("code2"):
        overrides += NARROW.get(config.model.name, [])
        decoder = [o for o in NARROW_DECODER if o.split("=")[0].split(".")[1] in config.objective]
        overrides += decoder
        config = load_config(CONFIGS / f"{name}.py", overrides)
    final = train_and_evaluate(config, tmp_path / "run")
    assert np.isfinite(final["loss"])
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["2"]
