"""The benchmark's leaderboard: one table over encoders, tasks, modes and label fractions.

Built once from the studies' results (`study.study_results`): each row is one encoder × task ×
mode × method × label fraction, with the test macro AUROC (mean over seeds, its standard
deviation, and the 95 % bootstrap CI of the first seed's run), macro AUPRC and Fβ/Gβ, and the
paired-bootstrap difference to the mode's baseline (random-init encoder, or the network
trained from scratch) on the same test resamples. Every row carries the encoder's hash, the
protocol, the preprocessing and the versions. Published figures appear only as literature
rows (`measured: false`) with their citation.

Files: `leaderboard.json` (rows + provenance), `leaderboard.csv` (one self-contained row per
number), `leaderboard.md`, and plots `leaderboard.png` (AUROC with CIs at all labels),
`label_fractions.png` and `differences.png` (pretrained minus baseline with CIs).
"""

from __future__ import annotations

import csv
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ecgfm.transfer.study import versions

PTBXL_CITATION = (
    "Strodthoff, Wagner, Schaeffter & Samek, Deep learning for ECG analysis: benchmarks and "
    "insights from PTB-XL, IEEE JBHI 25(5), 2021 (helme/ecg_ptbxl_benchmarking README); "
    "xresnet1d101 trained from scratch, 100 Hz, 2.5 s crops, max aggregation"
)
# Published PTB-XL test macro AUROC of the benchmark's best supervised model (not measured).
LITERATURE: dict[str, float] = {
    "all": 0.925,
    "diagnostic": 0.937,
    "subdiagnostic": 0.929,
    "superdiagnostic": 0.928,
    "form": 0.896,
    "rhythm": 0.957,
}
CSV_COLUMNS: tuple[str, ...] = (
    "encoder",
    "encoder_hash",
    "task",
    "mode",
    "method",
    "role",
    "fraction",
    "num_seeds",
    "num_train_records",
    "macro_auroc",
    "macro_auroc_sd",
    "macro_auroc_ci_low",
    "macro_auroc_ci_high",
    "macro_auprc",
    "f_beta2",
    "g_beta2",
    "baseline",
    "delta_auroc",
    "delta_ci_low",
    "delta_ci_high",
    "delta_p_value",
    "measured",
    "source",
    "protocol",
    "preprocessing",
    "versions",
)


def _rows_of(study: Mapping[str, Any]) -> list[dict[str, Any]]:
    bench = study["benchmark"]
    methods = list(dict.fromkeys(r["method"] for r in study["runs"]))
    reference = methods[0]
    baseline = methods[1] if len(methods) > 1 else None
    first = study["protocol"]["seeds"][0]
    provenance = {
        "protocol": json.dumps(study["protocol"], sort_keys=True, default=float),
        "preprocessing": json.dumps(study["preprocessing"], sort_keys=True),
        "versions": json.dumps(study["versions"], sort_keys=True),
    }
    rows = []
    for summary in study["summary"]:
        fraction, method = summary["fraction"], summary["method"]
        runs = [r for r in study["runs"] if r["method"] == method and r["fraction"] == fraction]
        first_run = next((r for r in runs if r["seed"] == first), runs[0])
        ci = first_run["test"].get("macro_auroc_ci") or (None, None)
        row = {
            "encoder": bench["encoder"],
            "encoder_hash": study["checkpoint"]["hash"],
            "task": bench["task"],
            "mode": bench["mode"],
            "method": method,
            "role": "pretrained" if method == reference else "baseline",
            "fraction": fraction,
            "num_seeds": summary["num_seeds"],
            "num_train_records": summary["num_train_records"],
            "macro_auroc": summary["macro_auroc_mean"],
            "macro_auroc_sd": summary["macro_auroc_std"],
            "macro_auroc_ci_low": ci[0],
            "macro_auroc_ci_high": ci[1],
            "macro_auprc": summary["macro_auprc_mean"],
            "f_beta2": summary["f_beta2_mean"],
            "g_beta2": summary["g_beta2_mean"],
            "baseline": baseline,
            "delta_auroc": None,
            "delta_ci_low": None,
            "delta_ci_high": None,
            "delta_p_value": None,
            "measured": True,
            "source": "this run",
            **provenance,
        }
        if method == reference and baseline is not None:
            diffs = [c for c in study["comparisons"] if c["fraction"] == fraction]
            if diffs:
                first_diff = next((c for c in diffs if c["seed"] == first), diffs[0])
                row["delta_auroc"] = float(np.mean([c["difference"] for c in diffs]))
                if first_diff["ci"] is not None:
                    row["delta_ci_low"], row["delta_ci_high"] = first_diff["ci"]
                row["delta_p_value"] = first_diff["p_value_a_not_better"]
        rows.append(row)
    return rows


def build(
    studies: Sequence[Mapping[str, Any]], code_test: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The leaderboard of the studies' results, with literature rows for the tasks run."""
    rows = [row for study in studies for row in _rows_of(study)]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    literature = [
        {
            "encoder": "xresnet1d101 (supervised from scratch)",
            "encoder_hash": "",
            "task": task,
            "mode": "supervised",
            "method": "published",
            "role": "literature",
            "fraction": 1.0,
            "macro_auroc": LITERATURE[task],
            "measured": False,
            "source": f"{PTBXL_CITATION}; not measured in this run",
        }
        for task in tasks
        if task in LITERATURE
    ]
    first = studies[0] if studies else {}
    return {
        "rows": rows,
        "literature": literature,
        "tasks": tasks,
        "encoders": {
            s["benchmark"]["encoder"]: {
                "hash": s["checkpoint"]["hash"],
                "path": s["checkpoint"]["path"],
                "preprocessing": s["preprocessing_description"],
            }
            for s in studies
        },
        "protocol": {
            "windowing": first.get("protocol", {}).get("windowing"),
            "label_fractions": first.get("protocol", {}).get("label_fractions"),
            "seeds": first.get("protocol", {}).get("seeds"),
            "evaluation": first.get("protocol", {}).get("evaluation"),
            "splits": {s["benchmark"]["task"]: s["protocol"]["split"] for s in studies},
        },
        "versions": versions(),
        "code_test": [
            {"encoder": e["encoder"], "mode": e["mode"], "rows": e["rows"]} for e in code_test
        ],
    }


def _fmt_ci(value: float | None, low: float | None, high: float | None, signed=False) -> str:
    if value is None:
        return "—"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    if low is None:
        return text
    return f"{text} [{low:+.3f}, {high:+.3f}]" if signed else f"{text} [{low:.3f}, {high:.3f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def markdown(board: Mapping[str, Any]) -> str:
    """The leaderboard as markdown: provenance, AUROC at all labels, Δ vs baseline, fractions."""
    rows, tasks = board["rows"], board["tasks"]
    protocol = board["protocol"]
    lines = [
        "# ecgfm benchmark leaderboard",
        "",
        "- Encoders: "
        + "; ".join(
            f"`{name}` (sha256 `{e['hash'][:16]}…`, {e['preprocessing']})"
            for name, e in board["encoders"].items()
        ),
        f"- Windows: {protocol['windowing']}; label fractions {protocol['label_fractions']}, "
        f"seeds {protocol['seeds']}",
        f"- Evaluation: {protocol['evaluation']}",
        f"- Splits: {protocol['splits']}",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in board['versions'].items())}",
        "",
        "## Test macro AUROC with all training labels [95 % bootstrap CI, first seed]",
        "",
    ]
    full = max((r["fraction"] for r in rows), default=1.0)
    keys = list(dict.fromkeys((r["encoder"], r["mode"], r["method"]) for r in rows))
    by_key = {
        (r["encoder"], r["mode"], r["method"], r["task"]): r for r in rows if r["fraction"] == full
    }
    table = []
    for encoder, mode, method in keys:
        cells = []
        for task in tasks:
            r = by_key.get((encoder, mode, method, task))
            cells.append(
                "—"
                if r is None
                else _fmt_ci(r["macro_auroc"], r["macro_auroc_ci_low"], r["macro_auroc_ci_high"])
            )
        table.append([encoder, mode, method, *cells])
    published: dict[tuple[str, str], list[str]] = {}  # one row per published model
    for lit in board["literature"]:
        cells = published.setdefault((lit["encoder"], lit["mode"]), ["—"] * len(tasks))
        cells[tasks.index(lit["task"])] = f"{lit['macro_auroc']:.3f}"
    for (model, mode), cells in published.items():
        table.append([f"{model} (literature, not measured)", mode, "published", *cells])
    lines += _table(["encoder", "mode", "method", *tasks], table)
    if board["literature"]:
        lines += ["", f"Literature rows: {board['literature'][0]['source']}."]
    lines += [
        "",
        "## What pretraining added: Δ test macro AUROC, pretrained − baseline "
        "[paired bootstrap 95 % CI, first seed; Δ is the mean over seeds]",
        "",
    ]
    deltas = [r for r in rows if r["role"] == "pretrained" and r["baseline"]]
    fractions = sorted({r["fraction"] for r in deltas})
    table = []
    for encoder, mode in dict.fromkeys((r["encoder"], r["mode"]) for r in deltas):
        for fraction in fractions:
            cells = []
            for task in tasks:
                r = next(
                    (
                        d
                        for d in deltas
                        if (d["encoder"], d["mode"], d["task"], d["fraction"])
                        == (encoder, mode, task, fraction)
                    ),
                    None,
                )
                cells.append(
                    "—"
                    if r is None
                    else _fmt_ci(
                        r["delta_auroc"], r["delta_ci_low"], r["delta_ci_high"], signed=True
                    )
                )
            baseline = next(d["baseline"] for d in deltas if d["mode"] == mode)
            table.append([encoder, f"{mode} vs {baseline}", f"{fraction:.0%}", *cells])
    lines += _table(["encoder", "mode", "labels", *tasks], table)
    lines += ["", "## Label efficiency: test macro AUROC, mean ± sd over seeds", ""]
    table = []
    for encoder, mode, method in keys:
        for fraction in sorted({r["fraction"] for r in rows}):
            cells = []
            for task in tasks:
                r = next(
                    (
                        x
                        for x in rows
                        if (x["encoder"], x["mode"], x["method"], x["task"], x["fraction"])
                        == (encoder, mode, method, task, fraction)
                    ),
                    None,
                )
                cells.append(
                    "—" if r is None else f"{r['macro_auroc']:.3f} ± {r['macro_auroc_sd']:.3f}"
                )
            table.append([encoder, mode, method, f"{fraction:.0%}", *cells])
    lines += _table(["encoder", "mode", "method", "labels", *tasks], table)
    if board["code_test"]:
        lines += ["", "## CODE test set: per-class F1 (details in code_test.md)", ""]
        names = board["code_test"][0]["rows"][0]["class_names"]
        table = []
        rows_shown = [r for ev in board["code_test"] for r in ev["rows"] if r["kind"] == "model"]
        rows_shown += [r for r in board["code_test"][0]["rows"] if r["kind"] != "model"]
        for row in rows_shown:
            kind = row["kind"] + (", not measured" if not row["measured"] else "")
            table.append([f"{row['who']} ({kind})", *(f"{v:.3f}" for v in row["f1"])])
        lines += _table(["who", *names], table)
    return "\n".join(lines) + "\n"


def _plot_auroc(board: Mapping[str, Any], path: pathlib.Path) -> None:
    rows, tasks = board["rows"], board["tasks"]
    full = max((r["fraction"] for r in rows), default=1.0)
    fig = Figure(figsize=(4.2 * len(tasks), 0.5 * max(len(rows), 4) / max(len(tasks), 1) + 2))
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        shown = [r for r in rows if r["task"] == task and r["fraction"] == full]
        for i, r in enumerate(shown):
            low, high = r["macro_auroc_ci_low"], r["macro_auroc_ci_high"]
            err = None if low is None else [[r["macro_auroc"] - low], [high - r["macro_auroc"]]]
            ax.errorbar(
                r["macro_auroc"],
                i,
                xerr=err,
                fmt="o",
                capsize=3,
                color="tab:blue" if r["role"] == "pretrained" else "tab:gray",
            )
        lit = [x for x in board["literature"] if x["task"] == task]
        for x in lit:
            ax.axvline(x["macro_auroc"], color="tab:red", ls="--", lw=0.8, label="literature")
        ax.set_yticks(
            range(len(shown)),
            [f"{r['encoder']}\n{r['mode']}: {r['method']}" for r in shown],
            fontsize=7,
        )
        ax.set(title=task, xlabel="test macro AUROC (95% CI)")
        ax.invert_yaxis()
        if lit:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_fractions(board: Mapping[str, Any], path: pathlib.Path) -> None:
    rows, tasks = board["rows"], board["tasks"]
    fig = Figure(figsize=(4.2 * len(tasks), 3.8))
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        for key in dict.fromkeys((r["encoder"], r["mode"], r["method"]) for r in rows):
            line = sorted(
                (
                    r
                    for r in rows
                    if r["task"] == task and (r["encoder"], r["mode"], r["method"]) == key
                ),
                key=lambda r: r["fraction"],
            )
            if line:
                ax.errorbar(
                    [100 * r["fraction"] for r in line],
                    [r["macro_auroc"] for r in line],
                    yerr=[r["macro_auroc_sd"] for r in line],
                    marker="o",
                    capsize=2,
                    ls="-" if line[0]["role"] == "pretrained" else ":",
                    label=" · ".join(key),
                )
        ax.set_xscale("log")
        ax.set(title=task, xlabel="training labels used (%)", ylabel="test macro AUROC")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_differences(board: Mapping[str, Any], path: pathlib.Path) -> None:
    deltas = [
        r for r in board["rows"] if r["role"] == "pretrained" and r["delta_auroc"] is not None
    ]
    tasks = board["tasks"]
    fig = Figure(figsize=(4.2 * len(tasks), 0.35 * max(len(deltas), 4) / max(len(tasks), 1) + 2))
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        shown = [r for r in deltas if r["task"] == task]
        for i, r in enumerate(shown):
            low, high = r["delta_ci_low"], r["delta_ci_high"]
            err = None if low is None else [[r["delta_auroc"] - low], [high - r["delta_auroc"]]]
            ax.errorbar(r["delta_auroc"], i, xerr=err, fmt="o", capsize=3)
        ax.axvline(0.0, color="k", lw=0.6)
        ax.set_yticks(
            range(len(shown)),
            [f"{r['encoder']} {r['mode']} vs {r['baseline']}, {r['fraction']:.0%}" for r in shown],
            fontsize=7,
        )
        ax.set(title=task, xlabel="Δ macro AUROC, pretrained − baseline (95% CI)")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(board: Mapping[str, Any], out_dir: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes leaderboard.json/.csv/.md and the three plots into `out_dir`."""
    out_dir = pathlib.Path(out_dir)
    files = {
        "json": out_dir / "leaderboard.json",
        "csv": out_dir / "leaderboard.csv",
        "markdown": out_dir / "leaderboard.md",
        "plot": out_dir / "leaderboard.png",
        "label_fractions": out_dir / "label_fractions.png",
        "differences": out_dir / "differences.png",
    }
    files["json"].write_text(json.dumps(board, indent=2, default=float) + "\n")
    with files["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(board["rows"])
        writer.writerows(board["literature"])
    files["markdown"].write_text(markdown(board))
    _plot_auroc(board, files["plot"])
    _plot_fractions(board, files["label_fractions"])
    _plot_differences(board, files["differences"])
    return files
