"""Results a researcher can paste: JSON, CSV, a markdown table, ROC and label-fraction plots.

Every file names the checkpoint (path and hash), the protocol, the preprocessing spec, the
seeds and the versions, so a number never travels without what it depends on.
"""

from __future__ import annotations

import csv
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

CSV_COLUMNS: tuple[str, ...] = (
    "task", "method", "fraction", "seed", "num_train_records", "l2",
    "macro_auroc", "macro_auroc_ci_low", "macro_auroc_ci_high",
    "macro_auprc", "macro_auprc_ci_low", "macro_auprc_ci_high",
    "f_beta2", "g_beta2", "fmax", "checkpoint_hash", "preprocessing", "protocol", "versions",
)  # fmt: skip


def _ci(test: Mapping[str, Any], key: str) -> tuple[float, float] | tuple[None, None]:
    interval = test.get(f"{key}_ci")
    return (interval[0], interval[1]) if interval is not None else (None, None)


def csv_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (method, fraction, seed) with point estimates and 95 % CIs.

    A row stands alone: `preprocessing`, `protocol` (task, split, windowing, label fractions,
    seeds, the method's settings, evaluation) and `versions` are JSON objects.
    """
    rows = []
    for run in results["runs"]:
        test = run["test"]
        auroc_low, auroc_high = _ci(test, "macro_auroc")
        auprc_low, auprc_high = _ci(test, "macro_auprc")
        rows.append(
            {
                "task": results["protocol"]["name"],
                "method": run["method"],
                "fraction": run["fraction"],
                "seed": run["seed"],
                "num_train_records": run["num_train_records"],
                "l2": run["fit"].get("l2"),
                "macro_auroc": test["macro_auroc"],
                "macro_auroc_ci_low": auroc_low,
                "macro_auroc_ci_high": auroc_high,
                "macro_auprc": test["macro_auprc"],
                "macro_auprc_ci_low": auprc_low,
                "macro_auprc_ci_high": auprc_high,
                "f_beta2": test["f_beta2"],
                "g_beta2": test["g_beta2"],
                "fmax": test["fmax"],
                "checkpoint_hash": results["checkpoint"]["hash"],
                "preprocessing": json.dumps(results["preprocessing"], sort_keys=True),
                "protocol": json.dumps(results["protocol"], sort_keys=True, default=float),
                "versions": json.dumps(results["versions"], sort_keys=True),
            }
        )
    return rows


def _with_ci(value: float, interval: Sequence[float] | None) -> str:
    if interval is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def markdown(results: Mapping[str, Any]) -> str:
    """The report as markdown: provenance, summary over seeds, runs with CIs, comparisons."""
    protocol = results["protocol"]
    checkpoint = results["checkpoint"]
    data = results["data"]
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    lines = [
        f"# Transfer: {protocol['name']}",
        "",
        f"- Checkpoint: `{checkpoint['path']}` (sha256 `{checkpoint['hash']}`)",
        *(
            f"- Baseline {name}: `{b['path']}` (sha256 `{b['hash']}`)"
            for name, b in results["baselines"].items()
        ),
        f"- Split: {protocol['split']}; records without a label in the task dropped: "
        f"{data['dropped_without_label']}",
        f"- Records: {data['num_records']}; classes not evaluated (one label value in test): "
        f"{results['classes_not_evaluated'] or 'none'}",
        f"- Windowing: {protocol['windowing']}",
        *(
            f"- {name.title()}: {protocol[name]}"
            for name in ("probe", "attention", "finetune")
            if name in protocol
        ),
        f"- Label fractions {protocol['label_fractions']}, seeds {protocol['seeds']}; "
        f"evaluation: {protocol['evaluation']}",
        f"- Preprocessing: {results['preprocessing_description']} "
        f"(`{json.dumps(results['preprocessing'], sort_keys=True)}`)",
        f"- Versions: {versions}",
        "",
        "## Summary (test fold; mean ± sd over seeds)",
        "",
    ]
    lines += _table(
        [
            "method",
            "fraction",
            "train records",
            "seeds",
            "macro AUROC",
            "macro AUPRC",
            "Fβ=2",
            "Gβ=2",
        ],
        [
            [
                s["method"],
                f"{s['fraction']:g}",
                f"{s['num_train_records']:.0f}",
                s["num_seeds"],
                f"{s['macro_auroc_mean']:.3f} ± {s['macro_auroc_std']:.3f}",
                f"{s['macro_auprc_mean']:.3f} ± {s['macro_auprc_std']:.3f}",
                f"{s['f_beta2_mean']:.3f}",
                f"{s['g_beta2_mean']:.3f}",
            ]
            for s in results["summary"]
        ],
    )
    lines += ["", "## Runs (test fold; 95 % bootstrap confidence intervals)", ""]
    lines += _table(
        [
            "method",
            "fraction",
            "seed",
            "train records",
            "λ",
            "macro AUROC [95% CI]",
            "macro AUPRC [95% CI]",
            "Fβ=2",
            "Gβ=2",
            "Fmax",
        ],
        [
            [
                r["method"],
                f"{r['fraction']:g}",
                r["seed"],
                r["num_train_records"],
                f"{r['fit']['l2']:g}" if r["fit"].get("l2") is not None else "—",
                _with_ci(r["test"]["macro_auroc"], r["test"].get("macro_auroc_ci")),
                _with_ci(r["test"]["macro_auprc"], r["test"].get("macro_auprc_ci")),
                f"{r['test']['f_beta2']:.3f}",
                f"{r['test']['g_beta2']:.3f}",
                f"{r['test']['fmax']:.3f}",
            ]
            for r in results["runs"]
        ],
    )
    if results["comparisons"]:
        lines += ["", "## What pretraining added (paired bootstrap on the same test resamples)", ""]
        lines += _table(
            ["a − b", "fraction", "seed", "Δ macro AUROC [95% CI]", "P(a not better)"],
            [
                [
                    f"{c['a']} − {c['b']}",
                    f"{c['fraction']:g}",
                    c["seed"],
                    _with_ci(c["difference"], c["ci"]),
                    "—"
                    if c["p_value_a_not_better"] is None
                    else f"{c['p_value_a_not_better']:.3f}",
                ]
                for c in results["comparisons"]
            ],
        )
    full = [
        r for r in results["runs"] if r["fraction"] == max(results["protocol"]["label_fractions"])
    ]
    if full:
        lines += ["", f"## Per-class test AUROC (fraction {full[0]['fraction']:g})", ""]
        names = full[0]["test"]["class_names"]
        rows = []
        for k, name in enumerate(names):
            row = [name, full[0]["test"]["positives_per_class"][k]]
            for r in full:
                cis = r["test"].get("per_class_auroc_ci")
                row.append(_with_ci(r["test"]["per_class_auroc"][k], cis[k] if cis else None))
            rows.append(row)
        lines += _table(["class", "test positives", *(r["method"] for r in full)], rows)
    return "\n".join(lines) + "\n"


def roc_curve(labels_N: np.ndarray, scores_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0)."""
    order = np.argsort(-np.asarray(scores_N), kind="mergesort")
    s, y = np.asarray(scores_N)[order], np.asarray(labels_N, bool)[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.r_[0, fp] / max(fp[-1], 1), np.r_[0, tp] / max(tp[-1], 1)


def plot_roc(
    results: Mapping[str, Any], predictions: Mapping[str, np.ndarray], path: pathlib.Path
) -> None:
    """Per-class test ROC curves of each method at the largest label fraction (first seed)."""
    full = [
        r for r in results["runs"] if r["fraction"] == max(results["protocol"]["label_fractions"])
    ]
    names = results["class_names"]
    kept = [names.index(n) for n in results["classes_evaluated"]]
    labels = predictions["test_labels_NK"][:, kept]
    fig = Figure(figsize=(4.5 * len(full), 4.5))
    axes = fig.subplots(1, len(full), squeeze=False)
    for ax, run in zip(axes[0], full, strict=True):
        scores = predictions[f"{run['method']}/{run['fraction']:g}/{run['seed']}"][:, kept]
        for k, name in enumerate(results["classes_evaluated"]):
            fpr, tpr = roc_curve(labels[:, k], scores[:, k])
            label = f"{name} ({run['test']['per_class_auroc'][k]:.2f})" if len(kept) <= 12 else None
            ax.plot(fpr, tpr, lw=1, label=label)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set(
            xlabel="false positive rate",
            ylabel="true positive rate",
            title=f"{run['method']}: macro AUROC {run['test']['macro_auroc']:.3f}",
            aspect="equal",
        )
        if len(kept) <= 12:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{results['protocol']['name']} test ROC, {results['checkpoint']['hash'][:12]}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_label_fractions(results: Mapping[str, Any], path: pathlib.Path) -> None:
    """Test macro AUROC against the fraction of training labels, mean ± sd over seeds."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for method in dict.fromkeys(s["method"] for s in results["summary"]):
        rows = sorted(
            (s for s in results["summary"] if s["method"] == method), key=lambda s: s["fraction"]
        )
        ax.errorbar(
            [100 * s["fraction"] for s in rows],
            [s["macro_auroc_mean"] for s in rows],
            yerr=[s["macro_auroc_std"] for s in rows],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="training labels used (%)",
        ylabel="test macro AUROC",
        title=f"{results['protocol']['name']}, seeds {results['protocol']['seeds']}",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(
    results: Mapping[str, Any],
    predictions: Mapping[str, np.ndarray],
    out_dir: str | pathlib.Path,
) -> dict[str, pathlib.Path]:
    """Writes results.json/.csv/.md, roc.png, label_fractions.png, predictions.npz."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "json": out_dir / "results.json",
        "csv": out_dir / "results.csv",
        "markdown": out_dir / "results.md",
        "roc": out_dir / "roc.png",
        "label_fractions": out_dir / "label_fractions.png",
        "predictions": out_dir / "predictions.npz",
    }
    files["json"].write_text(json.dumps(results, indent=2, default=float) + "\n")
    with files["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(csv_rows(results))
    files["markdown"].write_text(markdown(results))
    plot_roc(results, predictions, files["roc"])
    plot_label_fractions(results, files["label_fractions"])
    np.savez_compressed(files["predictions"], **predictions)
    return files
