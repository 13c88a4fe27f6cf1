"""The CODE test set scored the way Ribeiro et al. 2020 (Nat. Commun.) score it, beside its
annotators.

Per class (1dAVb, RBBB, LBBB, SB, AF, ST): precision, recall, specificity and F1 of binary
predictions, with 95 % bootstrap intervals (1000 resamples of the 827 exams, the same resamples
for every row). A model's predictions are "probability > threshold", the threshold per class
chosen on the validation split by the paper's rule (the F1-maximising operating point,
`metrics.f1_thresholds`); the paper chose it on the test set itself, which this does not. No
exam is forced to a class: an exam without findings is a negative for all six.

Beside each model: every annotator file present in `annotations/` (`ecgfm.data.code_test`),
scored against the gold standard on the same resamples, and the paper's published DNN
figures as a literature row (Table 2; not measured in this run).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ecgfm import metrics
from ecgfm.data.code_test import ANNOTATOR_NOTES, CLASSES, CodeTestSet

SCORES: tuple[str, ...] = ("precision", "recall", "specificity", "f1")
CITATION = (
    "Ribeiro, A.H. et al. Automatic diagnosis of the 12-lead ECG using a deep neural network. "
    "Nat. Commun. 11, 1760 (2020), Table 2 (antonior92/automatic-ecg-diagnosis "
    "outputs/tables/scores.csv)"
)
# Table 2's DNN row: threshold maximising F1 on the test set itself; not measured here.
LITERATURE_DNN: dict[str, list[float]] = {
    "precision": [0.867, 0.895, 1.000, 0.833, 1.000, 0.947],
    "recall": [0.929, 1.000, 1.000, 0.938, 0.769, 0.973],
    "specificity": [0.995, 0.995, 1.000, 0.996, 1.000, 0.997],
    "f1": [0.897, 0.944, 1.000, 0.882, 0.870, 0.960],
}


def bench_name(results: Mapping[str, Any]) -> str:
    """`<encoder> · <mode>` of a benchmark study (the checkpoint path elsewhere)."""
    bench = results.get("benchmark")
    return f"{bench['encoder']} · {bench['mode']}" if bench else results["checkpoint"]["path"]


def _row(who: str, kind: str, scores: Mapping[str, Any], note: str = "") -> dict[str, Any]:
    return {"who": who, "kind": kind, "note": note, "measured": kind != "literature"} | dict(scores)


def evaluate_study(
    results: Mapping[str, Any],
    predictions: Mapping[str, np.ndarray],
    root: str | pathlib.Path,
    num_bootstrap: int = metrics.DEFAULT_BOOTSTRAP,
) -> dict[str, Any]:
    """The per-class table of one CODE-test-set study (its runs on all labels, first seed)."""
    reader = CodeTestSet(root)
    labels = np.asarray(predictions["test_labels_NK"], bool)
    rows_of = [int(r.partition(":")[2]) for r in predictions["test_record_ids"].tolist()]
    names = list(results["class_names"])
    weights_BN = (
        metrics.bootstrap_weights(labels, num_bootstrap, 0, class_names=names)
        if num_bootstrap
        else None
    )
    full = max(results["protocol"]["label_fractions"])
    first = results["protocol"]["seeds"][0]
    kept = [names.index(n) for n in results["classes_evaluated"]]
    rows = []
    for run in results["runs"]:
        if run["fraction"] != full or run["seed"] != first:
            continue
        probabilities = predictions[f"{run['method']}/{run['fraction']:g}/{run['seed']}"]
        thresholds = np.full(len(names), np.inf)
        thresholds[kept] = run["test"]["thresholds"]
        predicted = probabilities > thresholds[None, :]
        rows.append(
            _row(
                run["method"],
                "model",
                metrics.binary_scores(labels, predicted, class_names=names, weights_BN=weights_BN),
                f"thresholds {results['thresholds']['rule']} on validation",
            )
        )
    for name in reader.annotators:
        annotated = reader.annotations(name)[rows_of]
        scores = metrics.binary_scores(labels, annotated, class_names=names, weights_BN=weights_BN)
        rows.append(_row(name, "annotator", scores, ANNOTATOR_NOTES[name]))
    rows.append(
        _row(
            "Ribeiro et al. 2020 DNN",
            "literature",
            LITERATURE_DNN | {"class_names": list(CLASSES)},
            f"{CITATION}; thresholds chosen on the test set; not measured in this run",
        )
    )
    bench = results.get("benchmark", {})
    return {
        "encoder": bench.get("encoder", results["checkpoint"]["path"]),
        "encoder_hash": results["checkpoint"]["hash"],
        "mode": bench.get("mode", ""),
        "class_names": names,
        "num_exams": len(labels),
        "positives_per_class": labels.sum(axis=0).astype(int).tolist(),
        "num_bootstrap": num_bootstrap,
        "rows": rows,
        "protocol": results["protocol"],
    }


def _cell(row: Mapping[str, Any], score: str, k: int) -> str:
    value = row[score][k]
    interval = row.get(f"{score}_ci")
    if interval is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[k][0]:.2f}, {interval[k][1]:.2f}]"


def markdown(evaluations: Sequence[Mapping[str, Any]]) -> str:
    """Per study, one table per score: rows models, annotators and the literature row."""
    lines = ["# CODE test set (Ribeiro et al. 2020): per-class scores with 95 % bootstrap CIs", ""]
    for ev in evaluations:
        lines += [
            f"## {ev['encoder']} · {ev['mode']} (sha256 `{ev['encoder_hash'][:16]}…`)",
            "",
            f"{ev['num_exams']} exams, positives per class "
            f"{dict(zip(ev['class_names'], ev['positives_per_class'], strict=True))}; "
            f"{ev['num_bootstrap']} resamples shared by every row.",
            "",
        ]
        for score in SCORES:
            lines += [f"### {score}", ""]
            lines.append("| who | " + " | ".join(ev["class_names"]) + " | note |")
            lines.append("|---|" + "---|" * len(ev["class_names"]) + "---|")
            for row in ev["rows"]:
                cells = [_cell(row, score, k) for k in range(len(ev["class_names"]))]
                marker = " (literature, not measured)" if not row["measured"] else ""
                lines.append(
                    f"| {row['who']}{marker} | " + " | ".join(cells) + f" | {row['note']} |"
                )
            lines.append("")
    return "\n".join(lines)


def write(evaluations: Sequence[Mapping[str, Any]], out_dir: str | pathlib.Path) -> dict:
    """`OUT/code_test.md` and `OUT/code_test.json`."""
    out_dir = pathlib.Path(out_dir)
    files = {"code_test_md": out_dir / "code_test.md", "code_test_json": out_dir / "code_test.json"}
    files["code_test_md"].write_text(markdown(evaluations))
    files["code_test_json"].write_text(
        json.dumps(list(evaluations), indent=2, default=float) + "\n"
    )
    return files
