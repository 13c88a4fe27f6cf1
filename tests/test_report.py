"""Results files: JSON, CSV and markdown carry CIs and provenance; plots are written."""

import csv
import json

import numpy as np

from ecgfm.data.preprocessing import PTBXL_100HZ
from ecgfm.transfer import report
from ecgfm.transfer.protocol import MethodOutput, TaskData, ptbxl_task, run_study


class _Noisy:
    def __init__(self, task, noise):
        self.task, self.noise = task, noise

    def fit_predict(self, train_index, seed):
        rng = np.random.default_rng(seed)
        val, test = self.task.labels["validation"], self.task.labels["test"]
        return MethodOutput(
            val + self.noise * rng.normal(size=val.shape),
            test + self.noise * rng.normal(size=test.shape),
            {"l2": 0.01},
        )


def _results(tmp_path):
    rng = np.random.default_rng(0)
    labels = {s: rng.random((n, 3)) < 0.4 for s, n in (("train", 200), ("validation", 80),
                                                         ("test", 80))}  # fmt: skip
    spec = ptbxl_task("superdiagnostic")
    task = TaskData(spec, "toy", ("MI", "NORM", "STTC"),
                    {s: [str(i) for i in range(len(v))] for s, v in labels.items()}, labels,
                    {"train": 0, "validation": 0, "test": 0}, lambda r: None)  # fmt: skip
    results, predictions = run_study(
        task,
        {"pretrained": _Noisy(task, 0.5), "random_init": _Noisy(task, 2.0)},
        fractions=(0.1, 1.0),
        seeds=(0, 1),
        reference="pretrained",
        num_bootstrap=200,
    )
    task_record = results.pop("task")
    results |= {
        "checkpoint": {"path": "/ckpt/encoder", "hash": "deadbeef" * 8},
        "baselines": {"random_init": {"path": "random init (seed 0)", "hash": "f00d" * 16}},
        "protocol": task_record
        | {
            "label_fractions": [0.1, 1.0],
            "seeds": [0, 1],
            "probe": {"head": "linear"},
            "evaluation": {},
        },
        "preprocessing": PTBXL_100HZ.to_dict(),
        "preprocessing_description": PTBXL_100HZ.describe(),
        "versions": {"ecgfm": "0.1.0", "jax": "x", "flax": "y"},
    }
    return results, predictions


def test_csv_and_markdown_carry_the_confidence_intervals(tmp_path):
    results, predictions = _results(tmp_path)
    files = report.write_report(results, predictions, tmp_path)
    rows = list(csv.DictReader(files["csv"].open()))
    assert len(rows) == len(results["runs"]) == 6
    text = files["markdown"].read_text()
    for row, run in zip(rows, results["runs"], strict=True):
        low, high = run["test"]["macro_auroc_ci"]
        assert float(row["macro_auroc_ci_low"]) == low and float(row["macro_auroc_ci_high"]) == high
        assert low <= float(row["macro_auroc"]) <= high
        assert f"{run['test']['macro_auroc']:.3f} [{low:.3f}, {high:.3f}]" in text
        assert row["checkpoint_hash"] == "deadbeef" * 8
    comparison = results["comparisons"][0]
    assert f"[{comparison['ci'][0]:.3f}, {comparison['ci'][1]:.3f}]" in text
    for needle in ("/ckpt/encoder", "deadbeef" * 8, "strat_fold [10]", "100 Hz, 1000 samples",
                   "jax x", "flax y", "seeds [0, 1]"):  # fmt: skip
        assert needle in text, needle


def test_all_files_are_written_and_json_round_trips(tmp_path):
    results, predictions = _results(tmp_path)
    files = report.write_report(results, predictions, tmp_path)
    assert set(files) == {"json", "csv", "markdown", "roc", "label_fractions", "predictions"}
    for path in files.values():
        assert path.stat().st_size > 0
    assert files["roc"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads(files["json"].read_text())
    assert stored["checkpoint"]["hash"] == "deadbeef" * 8
    assert stored["runs"][0]["test"]["macro_auroc_ci"] == list(
        results["runs"][0]["test"]["macro_auroc_ci"]
    )
    with np.load(files["predictions"]) as saved:
        np.testing.assert_array_equal(saved["pretrained/1/0"], predictions["pretrained/1/0"])


def test_roc_curve_of_a_perfect_and_an_inverted_score():
    labels = np.array([0, 0, 1, 1])
    fpr, tpr = report.roc_curve(labels, np.array([0.1, 0.2, 0.8, 0.9]))
    np.testing.assert_allclose(np.trapezoid(tpr, fpr), 1.0)
    fpr, tpr = report.roc_curve(labels, np.array([0.9, 0.8, 0.2, 0.1]))
    np.testing.assert_allclose(np.trapezoid(tpr, fpr), 0.0)


def test_each_csv_row_carries_the_protocol_and_versions(tmp_path):
    # A row pasted on its own still says which split, windowing, seeds and stack produced it.
    results, predictions = _results(tmp_path)
    files = report.write_report(results, predictions, tmp_path)
    rows = list(csv.DictReader(files["csv"].open()))
    assert {"preprocessing", "protocol", "versions", "seed"} <= set(rows[0])
    for row, run in zip(rows, results["runs"], strict=True):
        recorded = json.loads(row["protocol"])
        assert recorded["split"] == results["protocol"]["split"]
        assert "strat_fold [10]" in recorded["split"]
        assert recorded["windowing"] == {
            "window_s": 2.5, "train_stride_s": 2.5, "eval_stride_s": 1.25, "aggregation": "max",
        }  # fmt: skip
        assert recorded["seeds"] == [0, 1] and int(row["seed"]) == run["seed"]
        assert json.loads(row["versions"]) == {"ecgfm": "0.1.0", "jax": "x", "flax": "y"}
