"""The downstream protocol: windows, aggregation, task specs and the study runner."""

import numpy as np
import pytest

from ecgfm.data.challenge import ChallengeDataset
from ecgfm.data.ptbxl import PtbXl
from ecgfm.data.synthetic import write_dataset
from ecgfm.data.synthetic.cpsc2018 import write_challenge_records, write_cpsc2018_dataset
from ecgfm.metrics import f1_thresholds, gbeta_thresholds, per_class_auroc, youden_thresholds
from ecgfm.transfer.protocol import (
    BENCHMARK_WINDOWING,
    MethodOutput,
    TaskData,
    TaskSpec,
    Windowing,
    aggregate_window_logits,
    aggregate_windows,
    cpsc2018_task,
    cut_windows,
    labelled_task,
    load_task,
    ptbxl_task,
    run_study,
    validation_macro_auroc,
)


def test_benchmark_windows_are_2_5_s_every_1_25_s_at_test_time():
    # helme/ecg_ptbxl_benchmarking: input_size 2.5 s, stride_length_valid = input_size // 2.
    assert BENCHMARK_WINDOWING.samples(100, train=False) == (250, 125)
    assert BENCHMARK_WINDOWING.samples(100, train=True) == (250, 250)
    assert BENCHMARK_WINDOWING.samples(500, train=False) == (1250, 625)
    assert BENCHMARK_WINDOWING.aggregation == "max"


def test_windows_of_a_10_s_record_are_the_crops_that_fit():
    signal_TC = np.arange(1000 * 2, dtype=np.float32).reshape(1000, 2)
    windows = cut_windows(signal_TC, 250, 125)
    assert windows.shape == (7, 250, 2)  # starts 0, 125, …, 750
    np.testing.assert_array_equal(windows[3], signal_TC[375:625])
    np.testing.assert_array_equal(windows[-1], signal_TC[750:1000])


def test_a_record_shorter_than_the_window_is_centred_in_zeros():
    windows = cut_windows(np.ones((100, 3)), 250, 125)
    assert windows.shape == (1, 250, 3)
    # The one placement rule (`ecgfm.data.windows.placement`): 75 zeros on each side.
    assert windows[0, 75:175].sum() == 300 and windows[0, :75].sum() == windows[0, 175:].sum() == 0


def test_aggregation_takes_the_per_class_max_or_mean_per_record():
    values_WK = np.array([[0.1, 0.9], [0.5, 0.2], [0.3, 0.3], [0.7, 0.1]])
    owner_W = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(
        aggregate_windows(values_WK, owner_W, 2, "max"), [[0.5, 0.9], [0.7, 0.3]]
    )
    np.testing.assert_allclose(
        aggregate_windows(values_WK, owner_W, 2, "mean"), [[0.3, 0.55], [0.5, 0.2]]
    )
    with pytest.raises(ValueError, match="no window"):
        aggregate_windows(values_WK, owner_W, 3, "max")


def test_task_specs_check_what_the_protocol_allows():
    assert ptbxl_task("rhythm", 500).name == "ptbxl/rhythm@500Hz"
    with pytest.raises(ValueError, match="PTB-XL task"):
        ptbxl_task("arrhythmia")
    with pytest.raises(ValueError, match="100 or 500"):
        ptbxl_task("all", 250)
    with pytest.raises(ValueError, match="aggregation"):
        Windowing(aggregation="median")
    recorded = ptbxl_task("form").to_dict()
    assert "strat_fold [1, 2, 3, 4, 5, 6, 7, 8]" in recorded["split"]
    assert "strat_fold [10]" in recorded["split"]
    assert recorded["windowing"] == {
        "window_s": 2.5, "train_stride_s": 2.5, "eval_stride_s": 1.25, "aggregation": "max",
    }  # fmt: skip
    assert "cpsc2018_split.json" in cpsc2018_task().to_dict()["split"]


def test_cpsc_task_records_whether_its_labels_are_the_ones_the_split_was_made_on(tmp_path):
    root = write_cpsc2018_dataset(tmp_path / "cpsc", num_records=60, seed=0)
    summary = load_task(cpsc2018_task(), root).summary()
    assert summary["split_check"].startswith("6817 of the 6877 records it was stratified on")
    assert (
        sum(summary["num_records"].values()) + sum(summary["dropped_without_label"].values()) == 60
    )


def test_ptbxl_task_keeps_the_records_with_a_label_in_the_task_on_its_folds(tmp_path):
    root = write_dataset("ptbxl", tmp_path / "ptbxl", num_records=40, seed=3)
    task = load_task(ptbxl_task("rhythm", 100), root)
    assert task.dataset_id == f"ptbxl:{root.resolve()}:100Hz"
    dataset = PtbXl(root)
    has_label, fold = dataset.has_labels("rhythm"), dataset.database["strat_fold"]
    for split, folds in (("train", range(1, 9)), ("validation", (9,)), ("test", (10,))):
        in_split = [i for i in dataset.database.index if fold[i] in folds]
        assert task.record_ids[split] == [str(i) for i in in_split if has_label[i]]
        assert task.dropped[split] == sum(not has_label[i] for i in in_split)
    record = task.read(task.record_ids["train"][0])
    assert record.sampling_rate == 100 and record.metadata["strat_fold"] <= 8


def test_any_reader_becomes_a_labelled_task_with_unlabelled_records_dropped(tmp_path):
    reader = ChallengeDataset(write_challenge_records(tmp_path, num_records=6, seed=0))
    ids = list(reader.record_ids)
    labels = {ids[0]: ("x",), ids[1]: ("y", "x"), ids[2]: (), ids[3]: ("y",), ids[4]: ("z",)}
    splits = ["train", "train", "train", "validation", "test", "test"]
    split_of = dict(zip(ids, splits, strict=True))
    task = labelled_task(cpsc2018_task(), reader, labels, split_of)
    assert task.class_names == ("x", "y", "z")
    assert task.record_ids == {"train": ids[:2], "validation": [ids[3]], "test": [ids[4]]}
    assert task.dropped == {"train": 1, "validation": 0, "test": 1}
    assert task.labels["train"].tolist() == [[True, False, False], [True, True, False]]
    assert task.read(ids[4]).record_id == ids[4]


class _Oracle:
    """Scores = labels + noise scaled by `noise`: a known-good or known-bad method."""

    def __init__(self, task: TaskData, noise: float):
        self.task, self.noise, self.calls = task, noise, []

    def fit_predict(self, train_index: np.ndarray, seed: int) -> MethodOutput:
        self.calls.append((train_index.size, seed))
        rng = np.random.default_rng(seed)

        def scores(labels):
            return labels + self.noise * rng.normal(size=labels.shape)

        return MethodOutput(
            scores(self.task.labels["validation"]), scores(self.task.labels["test"]), {}
        )


def _random_task(num_train=400, num_eval=150, num_classes=4, seed=0) -> TaskData:
    rng = np.random.default_rng(seed)
    labels = {
        split: rng.random((n, num_classes)) < 0.3
        for split, n in (("train", num_train), ("validation", num_eval), ("test", num_eval))
    }
    labels["test"][:, 3] = False  # class "d" has no test positive: cannot be evaluated
    return TaskData(
        spec=ptbxl_task("superdiagnostic"),
        dataset_id="test",
        class_names=("a", "b", "c", "d"),
        record_ids={s: [f"{s}{i}" for i in range(len(v))] for s, v in labels.items()},
        labels=labels,
        dropped={"train": 0, "validation": 0, "test": 0},
        read=lambda record_id: None,
    )


def test_study_runs_every_method_fraction_and_seed_and_compares_to_the_reference():
    task = _random_task()
    good, bad = _Oracle(task, noise=0.3), _Oracle(task, noise=30.0)
    results, predictions = run_study(
        task,
        {"good": good, "bad": bad},
        fractions=(0.1, 1.0),
        seeds=(0, 1),
        reference="good",
        num_bootstrap=100,
    )
    # Fraction 1.0 is the same subset for every seed: fitted once.
    assert [(r["method"], r["fraction"], r["seed"]) for r in results["runs"]] == [
        ("good", 0.1, 0), ("good", 0.1, 1), ("good", 1.0, 0),
        ("bad", 0.1, 0), ("bad", 0.1, 1), ("bad", 1.0, 0),
    ]  # fmt: skip
    assert [n for n, _ in good.calls] == [r["num_train_records"] for r in results["runs"][:3]]
    assert abs(good.calls[0][0] - 40) <= 3 and good.calls[2][0] == 400
    assert results["classes_not_evaluated"] == ["d"]
    assert results["classes_evaluated"] == ["a", "b", "c"]
    good_full = results["runs"][2]["test"]
    assert good_full["macro_auroc"] > 0.95
    assert good_full["thresholds_from"] == "gbeta on validation probabilities"
    assert results["thresholds"]["rule"] == "gbeta"
    assert "macro_auroc_ci" in good_full
    assert {c["fraction"] for c in results["comparisons"]} == {0.1, 1.0}
    assert all(c["difference"] > 0.2 and c["ci"][0] > 0 for c in results["comparisons"])
    assert predictions["good/1/0"].shape == (150, 4)
    summary = {(s["method"], s["fraction"]): s for s in results["summary"]}
    assert summary[("good", 0.1)]["num_seeds"] == 2
    assert summary[("good", 1.0)]["macro_auroc_std"] == 0.0


def test_task_specs_are_recorded_with_cpsc_split_rules():
    with pytest.raises(ValueError, match="split_file is for CPSC"):
        TaskSpec("ptbxl", "all", 100, split_file="x.json")
    with pytest.raises(ValueError, match="one task"):
        TaskSpec("cpsc2018", "all", 500)


def test_mean_aggregation_averages_probabilities_as_the_benchmark():
    logits_WK = np.array([[-2.0, 40.0], [1.0, 50.0], [3.0, -800.0], [0.5, -700.0], [0.0, 0.0]])
    owner_W = np.array([0, 0, 1, 1, 2])
    got = aggregate_window_logits(logits_WK, owner_W, 3, "mean")
    probabilities = 1 / (1 + np.exp(-logits_WK[:, :1]))
    mean_probability = np.array([probabilities[:2].mean(), probabilities[2:4].mean(), 0.5])
    np.testing.assert_allclose(1 / (1 + np.exp(-got[:, 0])), mean_probability, rtol=1e-12)
    # Where σ rounds to 1 or 0 the result stays a finite, ordered logit.
    assert np.isfinite(got).all() and got[0, 1] > 40 and got[1, 1] < -690
    # log of the mean probability, σ(x) ≈ e^x far below 0: log((e^-800 + e^-700) / 2).
    np.testing.assert_allclose(got[1, 1], np.logaddexp(-800.0, -700.0) - np.log(2))
    np.testing.assert_allclose(
        aggregate_window_logits(logits_WK, owner_W, 3, "max"), [[1, 50], [3, -700], [0, 0]]
    )


def test_validation_macro_auroc_skips_classes_with_one_label_value():
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]], bool)
    scores = np.array([[0.9, 0.1, 0.2], [0.1, 0.2, 0.3], [0.2, 0.3, 0.4], [0.3, 0.4, 0.5]])
    assert validation_macro_auroc(labels, scores) == per_class_auroc(labels[:, :1], scores[:, :1])
    with pytest.raises(ValueError, match="cannot choose λ"):
        validation_macro_auroc(labels[:, 1:], scores[:, 1:], "choose λ")


class _Fixed:
    """Fixed validation and test logits."""

    def __init__(self, validation, test):
        self.validation, self.test = validation, test

    def fit_predict(self, train_index, seed):
        return MethodOutput(self.validation, self.test, {})


@pytest.mark.parametrize("rule", ["gbeta", "youden", "f1"])
def test_thresholds_are_fitted_on_validation_probabilities_never_on_test(rule):
    task = _random_task(num_classes=4)
    rng = np.random.default_rng(1)
    val_logits = 2 * task.labels["validation"] + rng.normal(size=(150, 4))
    test_logits = 2 * task.labels["test"] + rng.normal(size=(150, 4))
    kwargs = dict(fractions=(1.0,), seeds=(0,), num_bootstrap=0)
    kwargs |= {} if rule == "gbeta" else {"threshold_rule": rule}  # Gβ is the default
    runs = [
        run_study(task, {"m": _Fixed(val_logits, test)}, **kwargs)[0]["runs"][0]["test"]
        for test in (test_logits, -test_logits)
    ]
    kept = [0, 1, 2]  # class "d" has no test positive
    fit = {"gbeta": gbeta_thresholds, "youden": youden_thresholds, "f1": f1_thresholds}[rule]
    expected = fit(task.labels["validation"][:, kept], 1 / (1 + np.exp(-val_logits[:, kept])))
    for run in runs:
        np.testing.assert_allclose(run["thresholds"], expected)
        assert run["thresholds_from"] == f"{rule} on validation probabilities"
    with pytest.raises(ValueError, match="threshold_rule"):
        run_study(task, {"m": _Fixed(val_logits, test_logits)}, **kwargs | {"threshold_rule": "f2"})
