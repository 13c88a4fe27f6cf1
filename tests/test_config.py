"""Config overrides: typed values, None, merged dicts, and one error type with the whole story."""

import pytest

from ecgfm.config import ConfigError, load_config
from ecgfm.data.preprocessing import Preprocessing

SMOKE = "experiments/configs/smoke.py"


def test_overrides_are_parsed_to_the_fields_types():
    config = load_config(
        SMOKE,
        ["--config.train.steps=7", "optim.learning_rate=1e-3", "train.async_checkpoint=false",
         "model.hparams.widths=(4, 8)", "data.path=/data/code15"],
    )  # fmt: skip
    assert config.train.steps == 7 and config.optim.learning_rate == 1e-3
    assert config.train.async_checkpoint is False
    assert config.model.hparams.widths == (4, 8)
    assert config.data.path == "/data/code15"


@pytest.mark.parametrize("literal", ["None", "null"])
def test_none_clears_a_field(literal):
    config = load_config(SMOKE, [f"--config.resume={literal}", f"objective.pos_weight={literal}"])
    assert config.resume is None and config.objective.pos_weight is None


def test_a_dict_value_is_merged_into_the_sub_config():
    config = load_config(SMOKE, ['--config.mesh={"data": 2}'])
    assert dict(config.mesh) == {"data": 2, "fsdp": 1, "model": 1}
    with pytest.raises(ConfigError, match=r"mesh\.datta"):
        load_config(SMOKE, ['--config.mesh={"datta": 2}'])
    with pytest.raises(ConfigError, match=r"--config\.mesh\.NAME=VALUE"):
        load_config(SMOKE, ["--config.mesh=2"])


def test_every_preprocessing_field_can_be_set_from_the_command_line():
    config = load_config(
        SMOKE,
        ["data.preprocessing.bandpass=(0.5, 40.0)", "data.preprocessing.powerline_hz=60",
         "data.preprocessing.baseline_cutoff_hz=0.5"],
    )  # fmt: skip
    spec = Preprocessing.from_dict(dict(config.data.preprocessing))
    assert spec.bandpass == (0.5, 40.0) and spec.powerline_hz == 60.0
    assert spec == Preprocessing(
        sampling_rate=400, num_samples=1024, bandpass=(0.5, 40), powerline_hz=60,
        baseline_cutoff_hz=0.5,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.stepz=3", r"unknown config key 'train.stepz'; known here: .*steps"),
        ("trian.steps=3", r"unknown config key 'trian'"),
        ("train.steps=three", r"train.steps expects int, got 'three'"),
        ("train.async_checkpoint=maybe", r"expects true/false"),
        ("model.hparams.widths=[8, 16", r"expects a tuple literal"),
        ("train.steps", r"not of the form key=value"),
        ("optim.learning_rate=(1, 2)", r"optim.learning_rate expects float"),
    ],
)
def test_bad_overrides_raise_config_error_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SMOKE, [override])


def test_a_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.py")
    assert issubclass(ConfigError, ValueError)
