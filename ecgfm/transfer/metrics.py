"""Benchmark metrics for multilabel ECG classification, with bootstrap confidence intervals.

All functions take `labels_NK` in {0, 1} and `scores_NK` (any monotone score: probabilities,
logits) for N examples and K classes.

- AUROC and average precision equal scikit-learn's `roc_auc_score` / `average_precision_score`
  (ties handled the same way); they are computed from per-example weights so that a bootstrap
  resample is a weight vector (how often each example was drawn) and costs O(N) per class.
- Fβ/Gβ are the PTB-XL benchmark's `challenge_metrics` (Strodthoff et al. 2021, after the
  PhysioNet/CinC 2020 challenge): each example counts 1/(its number of positive labels), with
  per-class thresholds that maximise Youden's J (tpr − fpr), and an example with no score above
  its thresholds gets its highest-scoring class (the benchmark's `apply_thresholds`).
- Fmax is the protein-function (CAFA) maximum over thresholds of the F1 of the average precision
  over examples with at least one prediction and the average recall over all examples.
- Bootstrap resamples examples with replacement and redraws any resample in which a class has no
  positive or no negative example, so every class-wise AUROC is defined in every resample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_BOOTSTRAP = 1000


def _check(labels_NK: np.ndarray, scores_NK: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels_NK = np.asarray(labels_NK)
    scores_NK = np.asarray(scores_NK, dtype=np.float64)
    if labels_NK.ndim == 1:
        labels_NK = labels_NK[:, None]
    if scores_NK.ndim == 1:
        scores_NK = scores_NK[:, None]
    if labels_NK.shape != scores_NK.shape:
        raise ValueError(
            f"labels have shape {labels_NK.shape} but scores {scores_NK.shape}; "
            "both must be [examples, classes]"
        )
    if not np.isin(labels_NK, (0, 1)).all():
        raise ValueError("labels must be 0 or 1 (multi-hot [examples, classes])")
    if not np.isfinite(scores_NK).all():
        raise ValueError("scores contain NaN or Inf")
    return labels_NK.astype(bool), scores_NK


@dataclasses.dataclass(frozen=True)
class _RankedClass:
    """One class's examples sorted by score, with groups of tied scores."""

    order: np.ndarray  # example indices, ascending score
    group_starts: np.ndarray  # first position of each run of equal scores
    positive: np.ndarray  # labels in `order`

    @classmethod
    def build(cls, labels_N: np.ndarray, scores_N: np.ndarray) -> _RankedClass:
        order = np.argsort(scores_N, kind="mergesort")
        sorted_scores = scores_N[order]
        starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
        return cls(order, starts, labels_N[order])

    def group_weights(self, weights_BN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per tie-group positive and negative weight `[B, G]`, ascending score."""
        w = weights_BN[:, self.order]
        pos = np.add.reduceat(w * self.positive, self.group_starts, axis=1)
        neg = np.add.reduceat(w * ~self.positive, self.group_starts, axis=1)
        return pos, neg

    def auroc(self, weights_BN: np.ndarray) -> np.ndarray:
        """`[B]` AUROC: P(score_pos > score_neg) + ½ P(tie), weighted."""
        pos, neg = self.group_weights(weights_BN)
        neg_below = np.cumsum(neg, axis=1) - neg
        total = pos.sum(axis=1) * neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (pos * (neg_below + 0.5 * neg)).sum(axis=1) / total

    def average_precision(self, weights_BN: np.ndarray) -> np.ndarray:
        """`[B]` average precision: Σ over thresholds of Δrecall × precision (sklearn's)."""
        pos, neg = self.group_weights(weights_BN)
        tp = np.cumsum(pos[:, ::-1], axis=1)  # thresholds from the highest score down
        fp = np.cumsum(neg[:, ::-1], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
            return (pos[:, ::-1] * np.nan_to_num(precision)).sum(axis=1) / pos.sum(axis=1)


def per_class_auroc(labels_NK: np.ndarray, scores_NK: np.ndarray) -> np.ndarray:
    """`[K]` AUROC per class; NaN for a class with only positives or only negatives."""
    labels_NK, scores_NK = _check(labels_NK, scores_NK)
    ones = np.ones((1, labels_NK.shape[0]))
    return np.array(
        [
            _RankedClass.build(labels_NK[:, k], scores_NK[:, k]).auroc(ones)[0]
            for k in range(labels_NK.shape[1])
        ]
    )


def per_class_average_precision(labels_NK: np.ndarray, scores_NK: np.ndarray) -> np.ndarray:
    """`[K]` average precision (area under the precision-recall curve) per class."""
    labels_NK, scores_NK = _check(labels_NK, scores_NK)
    ones = np.ones((1, labels_NK.shape[0]))
    return np.array(
        [
            _RankedClass.build(labels_NK[:, k], scores_NK[:, k]).average_precision(ones)[0]
            for k in range(labels_NK.shape[1])
        ]
    )


def _undefined_classes(labels_NK: np.ndarray) -> np.ndarray:
    positives = labels_NK.sum(axis=0)
    return np.flatnonzero((positives == 0) | (positives == labels_NK.shape[0]))


def macro_auroc(labels_NK: np.ndarray, scores_NK: np.ndarray) -> float:
    """Mean of the class-wise AUROCs (= sklearn `roc_auc_score(average="macro")`).

    Raises ValueError naming the classes with only one label value, as sklearn does: a macro
    average that quietly left them out would not be comparable across papers.
    """
    labels_NK, scores_NK = _check(labels_NK, scores_NK)
    undefined = _undefined_classes(labels_NK)
    if undefined.size:
        raise ValueError(
            f"AUROC is undefined for classes {undefined.tolist()}: all their labels are equal"
        )
    return float(per_class_auroc(labels_NK, scores_NK).mean())


def macro_auprc(labels_NK: np.ndarray, scores_NK: np.ndarray) -> float:
    """Mean of the class-wise average precisions (= sklearn `average_precision_score`)."""
    labels_NK, scores_NK = _check(labels_NK, scores_NK)
    undefined = np.flatnonzero(labels_NK.sum(axis=0) == 0)
    if undefined.size:
        raise ValueError(f"AUPRC is undefined for classes {undefined.tolist()}: no positives")
    return float(per_class_average_precision(labels_NK, scores_NK).mean())


def youden_thresholds(labels_NK: np.ndarray, scores_NK: np.ndarray) -> np.ndarray:
    """`[K]` per-class thresholds maximising tpr − fpr (the benchmark's cut-off choice).

    Among equally good thresholds the highest wins, as `np.argmax` over sklearn's `roc_curve`
    (thresholds from +inf down) picks it in the benchmark code.
    """
    labels_NK, scores_NK = _check(labels_NK, scores_NK)
    thresholds = np.empty(labels_NK.shape[1])
    for k in range(labels_NK.shape[1]):
        y, s = labels_NK[:, k], scores_NK[:, k]
        order = np.argsort(-s, kind="mergesort")
        s_desc, y_desc = s[order], y[order]
        last_of_group = np.r_[s_desc[1:] != s_desc[:-1], True]
        tpr = np.r_[0, np.cumsum(y_desc)[last_of_group]] / max(y.sum(), 1)
        fpr = np.r_[0, np.cumsum(~y_desc)[last_of_group]] / max((~y).sum(), 1)
        thresholds[k] = np.r_[np.inf, s_desc[last_of_group]][np.argmax(tpr - fpr)]
    return thresholds


def apply_thresholds(scores_NK: np.ndarray, thresholds_K: np.ndarray) -> np.ndarray:
    """Binary `[N, K]` predictions: score > threshold, or the top class when none passes.

    Strictly greater, as the benchmark's `apply_thresholds` does, so numbers stay comparable.
    """
    scores_NK = np.asarray(scores_NK, dtype=np.float64)
    predicted = scores_NK > np.asarray(thresholds_K)[None, :]
    none = ~predicted.any(axis=1)
    predicted[none, np.argmax(scores_NK[none], axis=1)] = True
    return predicted


def challenge_scores(
    labels_NK: np.ndarray, predicted_NK: np.ndarray, beta_f: float = 2.0, beta_g: float = 2.0
) -> dict[str, float]:
    """Macro Fβ and Gβ of binary predictions, as the PTB-XL benchmark's `challenge_metrics`.

    Each example is weighted by 1 / (its number of positive labels). The benchmark removes
    examples without labels before scoring; here such an example weighs 1.
    """
    labels = np.asarray(labels_NK, dtype=bool)
    predicted = np.asarray(predicted_NK, dtype=bool)
    weights_N = 1.0 / np.maximum(labels.sum(axis=1), 1)
    w = weights_N[:, None]
    tp = (w * (labels & predicted)).sum(axis=0)
    fp = (w * (~labels & predicted)).sum(axis=0)
    fn = (w * (labels & ~predicted)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f_beta = (1 + beta_f**2) * tp / ((1 + beta_f**2) * tp + fp + beta_f**2 * fn)
        g_beta = tp / (tp + fp + beta_g * fn)
    return {"f_beta": float(np.nanmean(f_beta)), "g_beta": float(np.nanmean(g_beta))}


def fmax(
    labels_NK: np.ndarray, scores_NK: np.ndarray, thresholds: Sequence[float] | None = None
) -> float:
    """CAFA-style Fmax over thresholds (default: 101 evenly spaced in the score range)."""
    labels_NK, scores_NK = _check(labels_NK, scores_NK)
    if thresholds is None:
        thresholds = np.linspace(scores_NK.min(), scores_NK.max(), 101)
    has_label = labels_NK.any(axis=1)
    best = 0.0
    for t in thresholds:
        predicted = scores_NK >= t
        covered = predicted.any(axis=1)
        if not covered.any():
            continue
        tp = (predicted & labels_NK).sum(axis=1)
        precision = (tp[covered] / predicted[covered].sum(axis=1)).mean()
        recall = (tp[has_label] / labels_NK[has_label].sum(axis=1)).mean()
        if precision + recall > 0:
            best = max(best, 2 * precision * recall / (precision + recall))
    return float(best)


def bootstrap_weights(
    labels_NK: np.ndarray, num_samples: int, seed: int, max_tries: int = 100
) -> np.ndarray:
    """`[num_samples, N]` draw counts of resamples in which every class has both label values."""
    labels = np.asarray(labels_NK, dtype=bool)
    n = labels.shape[0]
    undefined = _undefined_classes(labels)
    if undefined.size:
        raise ValueError(f"cannot bootstrap: classes {undefined.tolist()} have one label value")
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    for _ in range(max_tries):
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=num_samples - len(kept))
        positives = counts @ labels
        valid = (positives > 0).all(axis=1) & (positives < n).all(axis=1)
        kept.extend(counts[valid])
        if len(kept) == num_samples:
            return np.stack(kept).astype(np.float64)
    raise ValueError("could not draw bootstrap resamples that keep every class: too few positives")


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


_CLASSWISE = {"auroc": _RankedClass.auroc, "auprc": _RankedClass.average_precision}


def _classwise_bootstrap(
    metric: str, labels_NK: np.ndarray, scores_NK: np.ndarray, weights_BN: np.ndarray
) -> np.ndarray:
    """`[B, K]` class-wise metric under each resample."""
    fn = _CLASSWISE[metric]
    return np.stack(
        [
            fn(_RankedClass.build(labels_NK[:, k], scores_NK[:, k]), weights_BN)
            for k in range(labels_NK.shape[1])
        ],
        axis=1,
    )


def evaluate(
    labels_NK: np.ndarray,
    scores_NK: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    thresholds_K: np.ndarray | None = None,
    num_bootstrap: int = DEFAULT_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """All benchmark metrics of one prediction set, with bootstrap confidence intervals.

    `thresholds_K` for Fβ/Gβ should come from training or validation predictions (as in the
    benchmark); without them they are fitted on these labels, which is optimistic and says so
    in `thresholds_from`.
    """
    labels_NK, scores_NK = _check(labels_NK, scores_NK)
    k = labels_NK.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    thresholds_from = "given"
    if thresholds_K is None:
        thresholds_K, thresholds_from = youden_thresholds(labels_NK, scores_NK), "these labels"
    challenge = challenge_scores(labels_NK, apply_thresholds(scores_NK, thresholds_K))
    result: dict[str, Any] = {
        "num_examples": int(labels_NK.shape[0]),
        "class_names": names,
        "positives_per_class": labels_NK.sum(axis=0).astype(int).tolist(),
        "macro_auroc": macro_auroc(labels_NK, scores_NK),
        "per_class_auroc": per_class_auroc(labels_NK, scores_NK).tolist(),
        "macro_auprc": macro_auprc(labels_NK, scores_NK),
        "per_class_auprc": per_class_average_precision(labels_NK, scores_NK).tolist(),
        "f_beta2": challenge["f_beta"],
        "g_beta2": challenge["g_beta"],
        "fmax": fmax(labels_NK, scores_NK),
        "thresholds": np.asarray(thresholds_K, dtype=float).tolist(),
        "thresholds_from": thresholds_from,
    }
    if num_bootstrap:
        weights_BN = bootstrap_weights(labels_NK, num_bootstrap, seed)
        auroc_BK = _classwise_bootstrap("auroc", labels_NK, scores_NK, weights_BN)
        auprc_BK = _classwise_bootstrap("auprc", labels_NK, scores_NK, weights_BN)
        result |= {
            "bootstrap": {"num_samples": num_bootstrap, "confidence": confidence, "seed": seed},
            "macro_auroc_ci": _interval(auroc_BK.mean(axis=1), confidence),
            "macro_auprc_ci": _interval(auprc_BK.mean(axis=1), confidence),
            "per_class_auroc_ci": [_interval(auroc_BK[:, j], confidence) for j in range(k)],
        }
    return result


def paired_bootstrap_difference(
    labels_NK: np.ndarray,
    scores_a_NK: np.ndarray,
    scores_b_NK: np.ndarray,
    *,
    metric: str = "auroc",
    num_bootstrap: int = DEFAULT_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Macro metric of A minus B on the same resamples of one test set.

    Returns the observed difference, its confidence interval and the fraction of resamples in
    which A does not beat B (a one-sided bootstrap p-value for "A is better").
    """
    labels_NK, scores_a_NK = _check(labels_NK, scores_a_NK)
    _, scores_b_NK = _check(labels_NK, scores_b_NK)
    if metric not in _CLASSWISE:
        raise ValueError(f"metric must be one of {sorted(_CLASSWISE)}")
    ones = np.ones((1, labels_NK.shape[0]))
    observed = (
        _classwise_bootstrap(metric, labels_NK, scores_a_NK, ones).mean()
        - _classwise_bootstrap(metric, labels_NK, scores_b_NK, ones).mean()
    )
    weights_BN = bootstrap_weights(labels_NK, num_bootstrap, seed)
    diff_B = _classwise_bootstrap(metric, labels_NK, scores_a_NK, weights_BN).mean(
        axis=1
    ) - _classwise_bootstrap(metric, labels_NK, scores_b_NK, weights_BN).mean(axis=1)
    return {
        "metric": f"macro_{metric}",
        "difference": float(observed),
        "ci": _interval(diff_B, confidence),
        "p_value_a_not_better": float((diff_B <= 0).mean()),
        "num_bootstrap": num_bootstrap,
    }
