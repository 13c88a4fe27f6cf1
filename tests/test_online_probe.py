"""The linear probe while pretraining: off by default; when named, scored every N steps."""

import json

import pytest
from flax import nnx

from ecgfm.config import ConfigError, load_config
from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.synthetic.ptbxl import write_ptbxl_dataset
from ecgfm.experiment import Experiment, base_config
from ecgfm.models import ModelSpec
from ecgfm.transfer.online_probe import ProbeEvaluator


@pytest.fixture(scope="module")
def ptbxl(tmp_path_factory):
    return write_ptbxl_dataset(
        tmp_path_factory.mktemp("ptbxl"), num_records=60, seed=3, sampling_rates=(100,)
    )


def test_the_probe_is_off_unless_a_config_names_a_downstream_set():
    assert base_config().probe.every == 0
    config = load_config("experiments/configs/smoke.py")
    assert Experiment.from_config(config).probe.every == 0
    config.probe.every = 10
    with pytest.raises(ConfigError, match="needs root"):
        Experiment.from_config(config)
    config.probe.root, config.probe.dataset = "/data/ptbxl", "mitbih"
    with pytest.raises(ConfigError, match="ptbxl or cpsc2018"):
        Experiment.from_config(config)


def test_the_evaluator_scores_the_encoder_weights_it_is_handed(ptbxl):
    overrides = ["probe.every=1", f"probe.root={ptbxl}", "probe.max_records=20"]
    exp = Experiment.from_config(load_config("experiments/configs/smoke.py", overrides))
    model = ModelSpec.create("ribeiro_resnet", {"widths": (4, 8), "input_length": 400})
    evaluator = ProbeEvaluator(exp.probe, model, Preprocessing(100.0, num_samples=400))
    assert all(len(ids) <= 20 for ids in evaluator.task.record_ids.values())
    _, params, rest = nnx.split(model.build_encoder(nnx.Rngs(0)), nnx.Param, ...)
    scores = evaluator(nnx.to_pure_dict(params), nnx.to_pure_dict(rest))
    assert set(scores) == {"probe_val_macro_auroc", "probe_test_macro_auroc"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    # The same weights give the same numbers (the records are drawn once, the fit is exact).
    assert evaluator(nnx.to_pure_dict(params), nnx.to_pure_dict(rest)) == scores


@pytest.mark.slow
def test_pretraining_logs_the_probe_every_n_steps_to_metrics_and_tensorboard(ptbxl, tmp_path):
    from ecgfm.train import train_and_evaluate

    config = load_config(
        "experiments/configs/smoke.py",
        ["train.steps=4", "train.eval_every=0", "train.checkpoint_every=4",
         "train.global_batch_size=8", "train.async_checkpoint=false", "data.synthetic_exams=16",
         "data.preprocessing.sampling_rate=100.0", "data.preprocessing.num_samples=400",
         "model.hparams.widths=(4, 8)", "probe.every=2", f"probe.root={ptbxl}",
         "probe.max_records=20"],
    )  # fmt: skip
    final = train_and_evaluate(config, tmp_path)
    assert 0.0 <= final["probe_val_macro_auroc"] <= 1.0
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines if "probe_test_macro_auroc" in e] == [2, 4]
    assert list((tmp_path / "tensorboard").glob("events.*"))
