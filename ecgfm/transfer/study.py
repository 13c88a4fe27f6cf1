"""The study runner: methods × label fractions × seeds on one task, scored once, recorded once.

`run_study` evaluates methods (a frozen-encoder probe, an attention-pooling head, fine-tuning,
a network trained from scratch: anything with `fit_predict(train_index, seed) ->
MethodOutput`) on nested label fractions of the training fold, several seeds, with bootstrap
CIs on the test fold and a paired bootstrap difference against a reference method. Methods
return logits; metrics are computed on their sigmoid, the benchmark's probabilities, and the
Fβ/Gβ thresholds are fitted on the validation fold's (`THRESHOLD_RULES`; the benchmark fits
them on its training fold's predictions, which for a fitted head are optimistic).

`study_results` assembles what every results file holds around the runs (checkpoint and
baselines, protocol, preprocessing, versions): one place for the probe, the attention head,
fine-tuning and the benchmark.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import platform
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

import ecgfm
from ecgfm import metrics
from ecgfm.data import splits as splits_lib
from ecgfm.transfer.label_fractions import nested_label_fractions
from ecgfm.transfer.tasks import TaskData
from ecgfm.transfer.windows import WINDOW_AGGREGATION, sigmoid

# How `run_study` picks the per-class decision thresholds on the validation predictions.
THRESHOLD_RULES: dict[str, str] = {
    "gbeta": "per class, the lowest of 100 probabilities in [0, 1] maximising Gβ=2 on the "
    "validation fold (the PTB-XL benchmark's find_optimal_cutoff_thresholds_for_Gbeta)",
    "youden": "per class, the probability maximising Youden's J (tpr − fpr) on the validation fold",
    "f1": "per class, the probability maximising F1 on the validation fold (Ribeiro et al. "
    "2020's rule, there applied to the test set itself)",
}
_FIT_THRESHOLDS = {
    "gbeta": metrics.gbeta_thresholds,
    "youden": metrics.youden_thresholds,
    "f1": metrics.f1_thresholds,
}


@dataclasses.dataclass(frozen=True)
class MethodOutput:
    """One fitted method's record-level logits `[N, K]` (sigmoid: probabilities) and details.

    `model` is what was fitted (a probe, a fine-tuned state), for whoever wants to keep it
    (`ecgfm.transfer.heads`); results never hold it.
    """

    validation_scores_NK: np.ndarray
    test_scores_NK: np.ndarray
    info: dict[str, Any]
    model: Any = None


class Method(Protocol):
    """What `run_study` evaluates: fit on a subset of the training fold, score val and test.

    `train_index` indexes `task.record_ids["train"]`; `seed` drives anything random in the fit.
    """

    def fit_predict(self, train_index: np.ndarray, seed: int) -> MethodOutput: ...


def describe(method: type) -> str:
    """`module.Class: first docstring line`: a method's description, taken from its code."""
    summary = (inspect.getdoc(method) or "").split("\n\n")[0].replace("\n", " ")
    return f"{method.__module__}.{method.__qualname__}: {summary}"


def evaluable_classes(labels_NK: np.ndarray) -> np.ndarray:
    """Indices of the classes with at least one positive and one negative example."""
    positives = np.asarray(labels_NK, bool).sum(axis=0)
    return np.flatnonzero((positives > 0) & (positives < labels_NK.shape[0]))


def validation_macro_auroc(
    labels_NK: np.ndarray, scores_NK: np.ndarray, purpose: str = "select a model"
) -> float:
    """Macro AUROC over the classes with both label values: how methods pick a λ or a step.

    `purpose` completes the error raised when no class qualifies ("cannot <purpose>").
    """
    kept = evaluable_classes(labels_NK)
    if kept.size == 0:
        raise ValueError(f"no class has both label values in the validation fold: cannot {purpose}")
    return float(np.mean(metrics.per_class_auroc(labels_NK[:, kept], scores_NK[:, kept])))


def fraction_key(fraction: float, seed: int) -> str:
    """`"<fraction>/<seed>"`: how runs and predictions are keyed."""
    return f"{fraction:g}/{seed}"


def study_runs(fractions: Sequence[float], seeds: Sequence[int]) -> list[tuple[float, int]]:
    """(fraction, seed) of every fit: each seed below 100 %, the full fold once (first seed)."""
    ordered = sorted({float(f) for f in fractions})
    return [(f, s) for f in ordered for s in (seeds if f < 1.0 else seeds[:1])]


def run_study(
    task: TaskData,
    methods: Mapping[str, Method],
    *,
    fractions: Sequence[float],
    seeds: Sequence[int],
    reference: str | None = None,
    num_bootstrap: int = metrics.DEFAULT_BOOTSTRAP,
    threshold_rule: str = "gbeta",
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every method on every (label fraction, seed); returns (results, test probabilities).

    Metrics are computed on the sigmoid of the methods' logits and cover the classes with both
    label values in the test fold (the others are listed in `classes_not_evaluated`). Per-class
    thresholds are fitted on the validation probabilities by `threshold_rule` (a key of
    `THRESHOLD_RULES`; the test fold is never used). The full training fold is one subset,
    fitted once (with the first seed). With `reference`, each other method's macro AUROC is
    compared with the reference's on the same test resamples (`paired_bootstrap_difference`,
    reference minus other).
    """
    if threshold_rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold_rule must be one of {sorted(THRESHOLD_RULES)}")
    fit_thresholds = _FIT_THRESHOLDS[threshold_rule]
    test_labels = task.labels[splits_lib.TEST]
    val_labels = task.labels[splits_lib.VALIDATION]
    kept = evaluable_classes(test_labels)
    names = [task.class_names[k] for k in kept]
    subsets = {
        seed: nested_label_fractions(task.labels[splits_lib.TRAIN], fractions, seed=seed)
        for seed in seeds
    }
    # One set of resamples for every run: the same test bootstrap for all methods and fits.
    weights_BN = (
        metrics.bootstrap_weights(test_labels[:, kept], num_bootstrap, 0, class_names=names)
        if num_bootstrap
        else None
    )
    runs: list[dict[str, Any]] = []
    predictions: dict[str, np.ndarray] = {
        "test_labels_NK": test_labels,
        "test_record_ids": np.array(task.record_ids[splits_lib.TEST]),
    }
    for method_name, method in methods.items():
        for fraction, seed in study_runs(fractions, seeds):
            train_index = subsets[seed][fraction]
            out = method.fit_predict(train_index, seed)
            test_probabilities = sigmoid(out.test_scores_NK)
            # A class without positives in validation is then never predicted, but as an
            # example's top class (Youden: +inf; Gβ: the lowest grid point above all).
            thresholds = fit_thresholds(
                val_labels[:, kept], sigmoid(out.validation_scores_NK)[:, kept]
            )
            result = metrics.evaluate(
                test_labels[:, kept],
                test_probabilities[:, kept],
                class_names=names,
                thresholds_K=thresholds,
                thresholds_from=f"{threshold_rule} on validation probabilities",
                num_bootstrap=num_bootstrap,
                seed=0,
                weights_BN=weights_BN,
            )
            predictions[f"{method_name}/{fraction_key(fraction, seed)}"] = test_probabilities
            runs.append(
                {
                    "method": method_name,
                    "fraction": fraction,
                    "seed": seed,
                    "num_train_records": int(train_index.size),
                    "train_positives_per_class": task.labels[splits_lib.TRAIN][train_index]
                    .sum(axis=0)
                    .astype(int)
                    .tolist(),
                    "fit": out.info,
                    "test": result,
                }
            )
    results = {
        "task": task.spec.to_dict(),
        "class_names": list(task.class_names),
        "classes_evaluated": names,
        "classes_not_evaluated": [n for k, n in enumerate(task.class_names) if k not in kept],
        "data": task.summary(),
        "fractions": sorted(subsets[seeds[0]]),
        "seeds": list(seeds),
        "num_bootstrap": num_bootstrap,
        "thresholds": {"rule": threshold_rule, "description": THRESHOLD_RULES[threshold_rule]},
        "runs": runs,
        "summary": summarize(runs),
        "comparisons": (
            _compare(runs, predictions, test_labels[:, kept], kept, reference, weights_BN)
            if reference is not None
            else []
        ),
    }
    return results, predictions


def summarize(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, fraction): mean and standard deviation over seeds of the test metrics."""
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["method"], run["fraction"]), []).append(run)
    out = []
    for (method, fraction), group in groups.items():
        row: dict[str, Any] = {
            "method": method,
            "fraction": fraction,
            "num_seeds": len(group),
            "num_train_records": float(np.mean([r["num_train_records"] for r in group])),
        }
        for key in ("macro_auroc", "macro_auprc", "f_beta2", "g_beta2", "fmax"):
            values = np.array([r["test"][key] for r in group])
            row[f"{key}_mean"] = float(values.mean())
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(row)
    return out


def _compare(
    runs: Sequence[Mapping[str, Any]],
    predictions: Mapping[str, np.ndarray],
    labels_NK: np.ndarray,
    kept: np.ndarray,
    reference: str,
    weights_BN: np.ndarray | None,
) -> list[dict[str, Any]]:
    """Reference minus each other method, per (fraction, seed), on the same test resamples."""
    methods = {r["method"] for r in runs}
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} is not among {sorted(methods)}")
    out = []
    for run in runs:
        if run["method"] != reference:
            continue
        key = fraction_key(run["fraction"], run["seed"])
        for other in sorted(methods - {reference}):
            if f"{other}/{key}" not in predictions:
                continue
            diff = metrics.paired_bootstrap_difference(
                labels_NK,
                predictions[f"{reference}/{key}"][:, kept],
                predictions[f"{other}/{key}"][:, kept],
                num_bootstrap=0 if weights_BN is None else len(weights_BN),
                weights_BN=weights_BN,
            )
            out.append(
                {"a": reference, "b": other, "fraction": run["fraction"], "seed": run["seed"]}
                | diff
            )
    return out


def versions() -> dict[str, str]:
    """Versions of ecgfm and the stack, for results files."""
    out = {"ecgfm": ecgfm.__version__, "python": platform.python_version()}
    for package in ("jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def study_results(
    study: Mapping[str, Any],
    *,
    checkpoint: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, Any]],
    method_name: str,
    method_settings: Mapping[str, Any],
    preprocessing: Any,
    windowing_note: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The results dict every transfer study writes: provenance around `run_study`'s output.

    `method_name` ("probe", "attention", "finetune") keys `method_settings` in the protocol;
    `preprocessing` is the encoder's `Preprocessing`.
    """
    study = dict(study)
    task_record = study.pop("task")
    aggregation = task_record["windowing"]["aggregation"]
    return {
        "checkpoint": dict(checkpoint),
        "baselines": {name: dict(b) for name, b in baselines.items()},
        "protocol": {
            **task_record,
            "label_fractions": study["fractions"],
            "seeds": study["seeds"],
            method_name: {
                **method_settings,
                "window_aggregation": windowing_note or WINDOW_AGGREGATION[aggregation],
            },
            "evaluation": {
                "num_bootstrap": study["num_bootstrap"],
                "scores": "sigmoid of the record logits (probabilities)",
                "threshold_rule": study["thresholds"]["rule"],
                "thresholds": study["thresholds"]["description"],
                "resamples": "one set of test resamples shared by every run and comparison",
            },
        },
        "preprocessing": preprocessing.to_dict(),
        "preprocessing_description": preprocessing.describe(),
        "versions": versions(),
        **(extra or {}),
        **study,
    }
