"""Fine-tuning: discriminative learning rates, the frozen phase, early stopping, the report."""

import csv
import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from ecgfm.config import load_config
from ecgfm.data.record import EcgRecord
from ecgfm.data.synthetic.ptbxl import write_ptbxl_dataset
from ecgfm.export import export_encoder, load_encoder
from ecgfm.metrics import macro_auroc
from ecgfm.models import ModelSpec
from ecgfm.train import train_and_evaluate
from ecgfm.transfer import protocol
from ecgfm.transfer.finetune import (
    EarlyStopping,
    EvalWindows,
    FinetuneConfig,
    FinetuneMethod,
    prepare_inputs,
    run_finetune,
)

RATE, RECORD_SAMPLES = 100, 500  # 5 s records; windows of 2.5 s = 250 samples
CONFIG = FinetuneConfig(
    steps=24, batch_size=16, eval_batch_size=64, head_lr=3e-3, encoder_lr=3e-3,
    warmup_steps=4, eval_every=8, patience=None,
)  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Ribeiro ResNet pretrained for 2 steps at 100 Hz on 2.5 s inputs, exported."""
    workdir = tmp_path_factory.mktemp("pretrain")
    config = load_config(
        "experiments/configs/smoke.py",
        [
            "train.steps=2", "train.eval_every=0", "train.checkpoint_every=2",
            "train.global_batch_size=8", "train.async_checkpoint=false",
            "data.synthetic_exams=16", "data.preprocessing.sampling_rate=100.0",
            "data.preprocessing.num_samples=250", "model.hparams.input_length=250",
            "model.hparams.widths=(4, 8)",
        ],
    )  # fmt: skip
    train_and_evaluate(config, workdir)
    return export_encoder(workdir, workdir / "export")


def _toy_task(invert_validation: bool = False) -> protocol.TaskData:
    """Class A: a 5 Hz sine on every lead; class B: +1 mV offset on the limb leads."""
    rng = np.random.default_rng(0)
    t = np.arange(RECORD_SAMPLES) / RATE
    ids, labels, signals = {}, {}, {}
    for split, count in zip(protocol.SPLITS, (48, 24, 24), strict=True):
        y = rng.random((count, 2)) < 0.5
        y[:2] = [[True, False], [False, True]]  # both label values in every split
        y[2:4] = [[False, True], [True, False]]
        ids[split] = [f"{split}{i}" for i in range(count)]
        labels[split] = ~y if invert_validation and split == "validation" else y
        for record_id, (a, b) in zip(ids[split], y, strict=True):
            signal = 0.2 * rng.normal(size=(RECORD_SAMPLES, 12))
            signal += a * np.sin(2 * np.pi * 5 * t)[:, None]
            signal[:, :6] += b * 1.0
            signals[record_id] = signal.astype(np.float32)
    return protocol.TaskData(
        spec=protocol.ptbxl_task("superdiagnostic", RATE),
        dataset_id="toy",
        class_names=("A", "B"),
        record_ids=ids,
        labels=labels,
        dropped={s: 0 for s in protocol.SPLITS},
        read=lambda r: EcgRecord(signals[r], float(RATE), r, "toy"),
    )


def _method(exported, config, *, pretrained=True, invert_validation=False):
    encoder = load_encoder(exported)
    inputs = prepare_inputs(_toy_task(invert_validation), encoder.preprocessing)
    model = ModelSpec.create(encoder.config["model"], encoder.config["hparams"])
    return FinetuneMethod(inputs, model, config, exported if pretrained else None)


def _exported_params(exported):
    return nnx.to_pure_dict(nnx.state(load_encoder(exported).module, nnx.Param))


def _max_abs_change(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


def test_training_windows_are_crops_of_each_record_once_per_pass(exported):
    method = _method(exported, CONFIG)
    inputs = dataclasses.replace(
        method.inputs, train_signals=[np.tile(np.arange(500.0)[:, None], (1, 12))] * 48
    )  # sample t holds t, so a window's first value is its start
    index = np.arange(10, 42)
    for how, allowed in (("random", set(range(251))), ("strided", {0, 250})):
        batches = inputs.train_batches(index, 16, how, np.random.default_rng(0))
        first_pass = [next(batches) for _ in range(2)]
        starts = np.concatenate([b["signal"][:, 0, 0] for b in first_pass])
        assert set(starts.astype(int)) <= allowed
        assert first_pass[0]["signal"].shape == (16, 250, 12)
        labels = np.concatenate([b["labels"] for b in first_pass])
        # One pass draws every record of the subset exactly once.
        np.testing.assert_array_equal(labels.sum(0), inputs.labels["train"][index].sum(0))
    assert len(set(starts.astype(int))) == 2
    # Evaluation windows: 2.5 s every 1.25 s of a 5 s record.
    assert inputs.validation.windows_WTC.shape == (24 * 3, 250, 12)


def test_encoder_lr_zero_keeps_the_exported_encoder_and_trains_the_head(exported):
    # The dense head on the pooled 8-wide embedding needs a larger step than the flatten head
    # to learn in 24 steps (at 3e-3 it is still near chance).
    method = _method(exported, dataclasses.replace(CONFIG, encoder_lr=0.0, head_lr=3e-2))
    fit = method.fit(np.arange(48), seed=0)
    encoder_params = fit.state["params"]["encoder"]
    jax.tree.map(np.testing.assert_array_equal, encoder_params, _exported_params(exported))
    # The head alone, on frozen 2-step-pretrained features, separates the toy classes.
    assert macro_auroc(method.inputs.labels["test"], fit.test_scores_NK) > 0.8


def test_frozen_phase_leaves_the_encoder_bit_identical_then_unfreezes(exported):
    frozen = dataclasses.replace(CONFIG, freeze_steps=10)
    encoder_lr = np.array([float(frozen.schedules(24)["encoder"](s)) for s in range(24)])
    head_lr = np.array([float(frozen.schedules(24)["head"](s)) for s in range(24)])
    assert (encoder_lr[:11] == 0).all() and (encoder_lr[11:] > 0).all()
    assert encoder_lr.max() == pytest.approx(3e-3) and (head_lr[1:] > 0).all()

    exported_params = _exported_params(exported)
    whole_run_frozen = _method(exported, dataclasses.replace(CONFIG, freeze_steps=24))
    fit = whole_run_frozen.fit(np.arange(48), seed=0)
    jax.tree.map(np.testing.assert_array_equal, fit.state["params"]["encoder"], exported_params)

    fine_tuned = _method(exported, CONFIG)
    fit = fine_tuned.fit(np.arange(48), seed=0)
    assert _max_abs_change(fit.state["params"]["encoder"], exported_params) > 1e-4
    assert macro_auroc(fine_tuned.inputs.labels["test"], fit.test_scores_NK) > 0.8


def test_early_stopping_keeps_the_best_validation_step(exported):
    stopping = EarlyStopping(patience=2)
    updates = [stopping.update(step, score) for step, score in ((4, 0.6), (8, 0.7), (12, 0.7))]
    assert updates == [True, True, False] and stopping.best_step == 8
    assert not stopping.should_stop
    stopping.update(16, 0.65)
    assert stopping.should_stop

    # Validation labels are the negation of the learnable ones: the better the model fits the
    # training fold, the worse it does on validation, so the first evaluation is the best.
    config = dataclasses.replace(CONFIG, eval_every=4, patience=2)
    method = _method(exported, config, invert_validation=True)
    fit = method.fit(np.arange(48), seed=0)
    scores = [h["validation_macro_auroc"] for h in fit.history]
    steps = [h["step"] for h in fit.history]
    assert fit.best_step == steps[int(np.argmax(scores))] < fit.steps_run < 24
    assert fit.steps_run == steps[-1] == fit.best_step + 2 * 4  # stopped after 2 without gain
    # The predictions are the best checkpoint's, not the last step's.
    best = protocol.validation_macro_auroc(
        method.inputs.labels["validation"], fit.validation_scores_NK
    )
    assert best == pytest.approx(max(scores)) and best > scores[-1]


@pytest.mark.slow
def test_run_finetune_reports_finetune_and_scratch_side_by_side(exported, tmp_path):
    root = write_ptbxl_dataset(tmp_path / "ptbxl", num_records=80, seed=0, sampling_rates=(100,))
    out = tmp_path / "out"
    results = run_finetune(
        exported,
        protocol.ptbxl_task("superdiagnostic", 100),
        root,
        out,
        label_fractions=(0.5, 1.0),
        seeds=(0, 1),
        config=dataclasses.replace(CONFIG, patience=2),
        num_bootstrap=20,
    )
    written = json.loads((out / "results.json").read_text())
    for stored in (results, written):
        assert stored["checkpoint"]["path"] == str(exported.resolve())
        assert stored["preprocessing"] == load_encoder(exported).config["preprocessing"]
        assert stored["protocol"]["finetune"]["head_lr"] == 3e-3
        assert stored["protocol"]["seeds"] == [0, 1]
        assert {"ecgfm", "jax", "flax"} <= set(stored["versions"])
    runs = {(r["method"], r["fraction"], r["seed"]) for r in results["runs"]}
    assert runs == {(m, f, s) for m in ("finetune", "scratch")
                    for f, s in ((0.5, 0), (0.5, 1), (1.0, 0))}  # fmt: skip
    assert {(c["a"], c["b"]) for c in results["comparisons"]} == {("finetune", "scratch")}
    for run in results["runs"]:
        assert run["fit"]["best_step"] in [h["step"] for h in run["fit"]["history"]]
        assert run["fit"]["init"] == ("random" if run["method"] == "scratch" else str(exported))
    with (out / "results.csv").open() as f:
        assert {row["method"] for row in csv.DictReader(f)} == {"finetune", "scratch"}
    markdown = (out / "results.md").read_text()
    assert "| finetune | 1 |" in markdown and "| scratch | 1 |" in markdown
    for name in ("roc.png", "label_fractions.png", "predictions.npz"):
        assert (out / name).stat().st_size > 0


def test_mean_aggregation_averages_the_window_probabilities(exported):
    # The benchmark averages sigmoid outputs over a record's windows, not the logits.
    task = _toy_task()
    task.spec = protocol.ptbxl_task("superdiagnostic", RATE, protocol.Windowing(aggregation="mean"))
    encoder = load_encoder(exported)
    inputs = prepare_inputs(task, encoder.preprocessing)
    model = ModelSpec.create(encoder.config["model"], encoder.config["hparams"])
    method = FinetuneMethod(inputs, model, CONFIG)
    compiled = method._compile(CONFIG.total_steps(48))
    windows = inputs.test
    each_alone = EvalWindows(
        windows.windows_WTC, np.arange(len(windows.windows_WTC)), len(windows.windows_WTC)
    )
    with jax.set_mesh(compiled.mesh):
        state = compiled.init(jax.random.key(0))
        state["params"]["head"] = jax.tree.map(lambda w: 20 * w, state["params"]["head"])
        window_logits = method._scores(compiled, state, each_alone)
        record_logits = method._scores(compiled, state, windows)
    window_probability = 1 / (1 + np.exp(-window_logits))
    expected = np.stack(
        [window_probability[windows.record_of_window_W == n].mean(axis=0) for n in range(24)]
    )
    np.testing.assert_allclose(1 / (1 + np.exp(-record_logits)), expected, rtol=1e-5, atol=1e-7)
    mean_logit = np.stack(
        [window_logits[windows.record_of_window_W == n].mean(axis=0) for n in range(24)]
    )
    assert np.abs(1 / (1 + np.exp(-mean_logit)) - expected).max() > 1e-3  # the test can tell
