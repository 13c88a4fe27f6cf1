"""Benchmark metrics for multilabel ECG classification, with bootstrap confidence intervals.

All functions take `labels_NK` in {0, 1} and `scores_NK` (any monotone score: probabilities,
logits) for N examples and K classes.

- AUROC and average precision equal scikit-learn's `roc_auc_score` / `average_precision_score`
  (ties handled the same way); they are computed from per-example weights so that a bootstrap
  resample is a weight vector (how often each example was drawn) and costs O(N) per class.
- Fβ/Gβ are the PTB-XL benchmark's `challenge_metrics` (Strodthoff et al. 2021, after the
  PhysioNet/CinC 2020 challenge): each example counts 1/(its number of positive labels), and an
  example with no score above its thresholds gets its highest-scoring class (the benchmark's
  `apply_thresholds`). The benchmark's per-class thresholds (`SCP_Experiment.evaluate` in
  helme/ecg_ptbxl_benchmarking, `find_optimal_cutoff_thresholds_for_Gbeta`) maximise the
  class's Gβ=2 over 100 probabilities evenly spaced in [0, 1]: `gbeta_thresholds`. Youden's J
  (`youden_thresholds`, the benchmark's unused alternative) works on any monotone score.
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
    """`[K]` per-class thresholds maximising tpr − fpr (Youden's J) on any monotone score.

    The benchmark's code has this rule (`find_optimal_cutoff_threshold`) but scores Fβ/Gβ with
    `gbeta_thresholds`. Among equally good thresholds the highest wins, as `np.argmax` over
    sklearn's `roc_curve` (thresholds from +inf down) picks it.
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


def gbeta_thresholds(
    labels_NK: np.ndarray, probabilities_NK: np.ndarray, n_thresholds: int = 100
) -> np.ndarray:
    """`[K]` per-class thresholds maximising the class's Gβ=2 (the PTB-XL benchmark's rule).

    As `find_optimal_cutoff_thresholds_for_Gbeta` in helme/ecg_ptbxl_benchmarking: for each
    class, the candidates are `np.linspace(0, 1, n_thresholds)`, a prediction is probability >
    threshold, every example weighs 1 (`challenge_metrics(..., single=True)`), and the first
    (lowest) threshold with the highest Gβ = tp / (tp + fp + 2 fn) wins. For a class without
    positives Gβ is 0/0 where nothing is predicted, which `np.argmax` takes as the maximum, as in
    the benchmark: the lowest threshold above every probability.
    """
    labels_NK, probabilities_NK = _check(labels_NK, probabilities_NK)
    if probabilities_NK.min() < 0 or probabilities_NK.max() > 1:
        raise ValueError(
            "Gβ thresholds are chosen among probabilities in [0, 1]: pass sigmoid outputs"
        )
    candidates_G = np.linspace(0.0, 1.0, n_thresholds)
    thresholds = np.empty(labels_NK.shape[1])
    for k in range(labels_NK.shape[1]):
        predicted_NG = probabilities_NK[:, k, None] > candidates_G[None, :]
        positive_N1 = labels_NK[:, k, None]
        tp = (predicted_NG & positive_N1).sum(axis=0).astype(np.float64)
        fp = (predicted_NG & ~positive_N1).sum(axis=0)
        fn = (~predicted_NG & positive_N1).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            g_beta = tp / (tp + fp + 2.0 * fn)
        thresholds[k] = candidates_G[np.argmax(g_beta)]
    return thresholds


def f1_thresholds(labels_NK: np.ndarray, scores_NK: np.ndarray) -> np.ndarray:
    """`[K]` per-class thresholds at the operating point maximising F1 (Ribeiro et al. 2020).

    As `get_optimal_precision_recall` in antonior92/automatic-ecg-diagnosis: over every distinct
    score s, predicting "score ≥ s", the highest F1 wins (among equal F1s the lowest s, as its
    `np.argmax` over sklearn's increasing thresholds picks). The threshold returned lies between
    s and the next lower score, so `apply_thresholds`' "score > threshold" predicts the same.
    A class without positives gets +inf (never predicted), not "everything", which an argmax
    over all-zero F1s would give.
    """
    labels_NK, scores_NK = _check(labels_NK, scores_NK)
    thresholds = np.empty(labels_NK.shape[1])
    for k in range(labels_NK.shape[1]):
        y, s = labels_NK[:, k], scores_NK[:, k]
        if not y.any():
            thresholds[k] = np.inf
            continue
        order = np.argsort(-s, kind="mergesort")
        s_desc, y_desc = s[order], y[order]
        last_of_group = np.r_[s_desc[1:] != s_desc[:-1], True]
        tp = np.cumsum(y_desc)[last_of_group]
        predicted = np.flatnonzero(last_of_group) + 1
        f1 = 2 * tp / (predicted + y.sum())
        best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # the lowest score among the best
        at = s_desc[last_of_group]
        thresholds[k] = (at[best] + at[best + 1]) / 2 if best + 1 < len(at) else at[best] - 1e-12
    return thresholds


def binary_scores(
    labels_NK: np.ndarray,
    predicted_NK: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    weights_BN: np.ndarray | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Per-class precision, recall, specificity and F1 of binary predictions (Ribeiro et al.'s
    Table 2), with bootstrap intervals over the resamples `weights_BN` when given.

    A ratio with a zero denominator counts 0, as sklearn's `precision_score` does by default.
    """
    labels = np.asarray(labels_NK, bool)
    predicted = np.asarray(predicted_NK, bool)
    if labels.shape != predicted.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predicted.shape} differ")
    k = labels.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]

    def scores(w_BN: np.ndarray) -> dict[str, np.ndarray]:
        tp = w_BN @ (labels & predicted)
        fp = w_BN @ (~labels & predicted)
        fn = w_BN @ (labels & ~predicted)
        tn = w_BN @ (~labels & ~predicted)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {
                "precision": tp / (tp + fp),
                "recall": tp / (tp + fn),
                "specificity": tn / (tn + fp),
                "f1": 2 * tp / (2 * tp + fp + fn),
            }
        return {name: np.nan_to_num(v) for name, v in out.items()}

    point = scores(np.ones((1, labels.shape[0])))
    result: dict[str, Any] = {
        "class_names": names,
        "positives_per_class": labels.sum(axis=0).astype(int).tolist(),
        **{name: v[0].tolist() for name, v in point.items()},
    }
    if weights_BN is not None:
        resampled = scores(np.asarray(weights_BN, np.float64))
        for name, v_BK in resampled.items():
            result[f"{name}_ci"] = [_interval(v_BK[:, j], confidence) for j in range(k)]
        result["bootstrap"] = {"num_samples": len(weights_BN), "confidence": confidence}
    return result


def _check_thresholds(thresholds_K: np.ndarray, num_classes: int) -> np.ndarray:
    thresholds_K = np.asarray(thresholds_K, dtype=np.float64)
    if thresholds_K.shape != (num_classes,):
        raise ValueError(
            f"thresholds have shape {thresholds_K.shape} but there are {num_classes} classes: "
            f"pass one threshold per class, shape ({num_classes},)"
        )
    if np.isnan(thresholds_K).any():
        raise ValueError("thresholds contain NaN")
    return thresholds_K


def apply_thresholds(scores_NK: np.ndarray, thresholds_K: np.ndarray) -> np.ndarray:
    """Binary `[N, K]` predictions: score > threshold, or the top class when none passes.

    Strictly greater, as the benchmark's `apply_thresholds` does, so numbers stay comparable.
    `thresholds_K` must have shape `[K]`: one value is not broadcast to every class.
    """
    scores_NK = np.asarray(scores_NK, dtype=np.float64)
    if scores_NK.ndim != 2:
        raise ValueError(f"scores must be [examples, classes], got shape {scores_NK.shape}")
    predicted = scores_NK > _check_thresholds(thresholds_K, scores_NK.shape[1])[None, :]
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


# A class whose rarer label value has more examples than this is missing from a resample
# with probability < e^-20: only the rarer ones are screened before a full resample is drawn.
_SCREENED_MINORITY = 20


def bootstrap_weights(
    labels_NK: np.ndarray,
    num_samples: int,
    seed: int,
    *,
    max_draws: int | None = None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """`[num_samples, N]` draw counts of resamples in which every class has both label values.

    Exactly the ordinary bootstrap (N draws with replacement) conditioned on every class
    keeping both label values, by rejection, in two stages so rare classes stay cheap: the
    draw counts of the examples carrying a rare class's rarer label value (at most
    `_SCREENED_MINORITY` of them) and of "all the others" are drawn first (a multinomial with
    few categories), resamples missing a rare class are rejected, and only the survivors'
    remaining draws are spread over the other examples and checked in full. A class with one
    positive in N is missing from e^-1 ≈ 37 % of resamples, so a dozen such classes reject
    ~99.6 %. Gives up after `max_draws` screened resamples (default 1000 · num_samples) with
    an error naming the classes that rejected the most.
    """
    labels = np.asarray(labels_NK, dtype=bool)
    n, k = labels.shape
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    undefined = _undefined_classes(labels)
    if undefined.size:
        raise ValueError(
            f"cannot bootstrap: classes {[names[c] for c in undefined]} have one label value"
        )
    max_draws = 1000 * num_samples if max_draws is None else max_draws
    positives_K = labels.sum(axis=0)
    minority_is_positive_K = positives_K <= n - positives_K
    minority_NK = np.where(minority_is_positive_K, labels, ~labels)
    rare_K = np.minimum(positives_K, n - positives_K) <= _SCREENED_MINORITY
    screened_S = np.flatnonzero(minority_NK[:, rare_K].any(axis=1))
    others_O = np.setdiff1d(np.arange(n), screened_S)
    screened_pvals = np.r_[np.full(screened_S.size, 1.0 / n), others_O.size / n]
    screened_minority_SR = minority_NK[screened_S][:, rare_K].astype(np.float64)
    labels_f = labels.astype(np.float64)  # float products use BLAS
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    num_kept = drawn = 0
    rejections_K = np.zeros(k, dtype=np.int64)
    while num_kept < num_samples and drawn < max_draws:
        size = min(max(num_samples, 4096), max_draws - drawn)
        drawn += size
        first = rng.multinomial(n, screened_pvals, size=size)
        missing_BR = first[:, :-1] @ screened_minority_SR == 0
        rejections_K[rare_K] += missing_BR.sum(axis=0)
        # Survivors beyond what is still needed are dropped unseen: independent draws.
        first = first[~missing_BR.any(axis=1)][: num_samples - num_kept]
        counts = np.zeros((len(first), n), dtype=np.int64)
        counts[:, screened_S] = first[:, :-1]
        if others_O.size:
            counts[:, others_O] = rng.multinomial(
                first[:, -1], np.full(others_O.size, 1.0 / others_O.size)
            )
        positives = counts @ labels_f
        bad_BK = (positives == 0) | (positives == n)
        rejections_K += bad_BK.sum(axis=0)
        kept.append(counts[~bad_BK.any(axis=1)])
        num_kept += len(kept[-1])
    if num_kept < num_samples:
        worst = np.argsort(-rejections_K, kind="stable")[: min(int((rejections_K > 0).sum()), 20)]
        raise ValueError(
            f"could not draw {num_samples} bootstrap resamples in which every class has both "
            f"label values: {num_kept} of {drawn} draws were. Classes "
            f"{[f'{names[c]} ({positives_K[c]} of {n} positive)' for c in worst]} are missing "
            "from most resamples; evaluate without them (or merge them), or raise max_draws"
        )
    return np.concatenate(kept).astype(np.float64)


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


_CLASSWISE = ("auroc", "auprc")
# Resamples scored at once: [chunk, N] float64 arrays, a few MB each for N of a few thousand.
_BOOTSTRAP_CHUNK = 256


def _rare_class_bootstrap(
    y: np.ndarray, s: np.ndarray, weights_BN: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`([B], [B])` AUROC and average precision of one class by one matrix product over its
    positives: `[B, N] @ [N, 3P]` (negatives below, negatives tied, positives at or above
    each positive), cheap when the positives are few (most classes of PTB-XL's 71)."""
    s_pos = s[y]
    below = (~y[:, None]) & (s[:, None] < s_pos[None, :])
    tied = (~y[:, None]) & (s[:, None] == s_pos[None, :])
    pos_above = y[:, None] & (s[:, None] >= s_pos[None, :])
    counts = weights_BN @ np.concatenate([below, tied, pos_above, y[:, None]], axis=1)
    p = s_pos.size
    neg_below, neg_tied, true_pos = counts[:, :p], counts[:, p : 2 * p], counts[:, 2 * p : 3 * p]
    pos_total = counts[:, -1]
    neg_total = weights_BN.sum(axis=1) - pos_total
    w_pos = weights_BN[:, y]
    false_pos = neg_total[:, None] - neg_below  # negatives scored at or above each positive
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (w_pos * (neg_below + 0.5 * neg_tied)).sum(axis=1) / (pos_total * neg_total)
        precision = np.nan_to_num(true_pos / (true_pos + false_pos))
        auprc = (w_pos * precision).sum(axis=1) / pos_total
    return auroc, auprc


# A class with at most this many positives is scored by `_rare_class_bootstrap` (matrix
# products, B·N·P work); others by running sums over the sorted examples (a few passes over
# [B, N]). Measured crossover on a 2-core CPU: a few hundred positives.
_RARE_POSITIVES = 256


def bootstrap_auroc_auprc(
    labels_NK: np.ndarray, scores_NK: np.ndarray, weights_BN: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`([B, K], [B, K])` class-wise AUROC and average precision under each resample.

    Equal to `_RankedClass.auroc`/`.average_precision` (sklearn's, ties included) under each
    resample's weights. A class with few positives is computed by matrix products over them
    (`_rare_class_bootstrap`); the others in one pass per chunk of resamples: the weights in
    descending score order, their running sums (all examples, positives), both metrics from
    those; with tied scores the sums are taken per group of ties (AUROC credits a tie ½,
    average precision takes the precision at the group's end, as sklearn).
    """
    labels_NK = np.asarray(labels_NK, bool)
    scores_NK = np.asarray(scores_NK, np.float64)
    weights_BN = np.asarray(weights_BN, np.float64)
    b, k = len(weights_BN), labels_NK.shape[1]
    auroc_BK, auprc_BK = np.empty((b, k)), np.empty((b, k))
    for c in range(k):
        y = labels_NK[:, c]
        if y.sum() <= _RARE_POSITIVES:
            auroc_BK[:, c], auprc_BK[:, c] = _rare_class_bootstrap(y, scores_NK[:, c], weights_BN)
            continue
        order = np.argsort(-scores_NK[:, c], kind="mergesort")
        s, y = scores_NK[order, c], y[order]
        ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each tie group
        tied = len(ends) < len(s)
        for lo in range(0, b, _BOOTSTRAP_CHUNK):
            # Draw counts and their running sums are whole numbers: exact in float32 (N < 2²⁴).
            w = weights_BN[lo : lo + _BOOTSTRAP_CHUNK][:, order].astype(np.float32)
            all_cum = np.cumsum(w, axis=1)
            tp_cum = np.cumsum(w * y, axis=1)
            pos_total, all_total = tp_cum[:, -1], all_cum[:, -1]
            neg_total = all_total - pos_total
            if tied:
                tp_g, all_g = tp_cum[:, ends], all_cum[:, ends]
                pos_g = np.diff(tp_g, axis=1, prepend=0.0)
                neg_g = np.diff(all_g - tp_g, axis=1, prepend=0.0)
                fp_g = all_g - tp_g
                roc_num = (pos_g * (neg_total[:, None] - fp_g + 0.5 * neg_g)).sum(1, np.float64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    precision = np.nan_to_num(tp_g / all_g)
                ap_num = (pos_g * precision).sum(axis=1, dtype=np.float64)
            else:
                w_p, tp_p, all_p = w[:, y], tp_cum[:, y], all_cum[:, y]
                roc_num = (w_p * (neg_total[:, None] - (all_p - tp_p))).sum(1, np.float64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    ap_num = (w_p * np.nan_to_num(tp_p / all_p)).sum(axis=1, dtype=np.float64)
            pos_total, neg_total = pos_total.astype(np.float64), neg_total.astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                auroc_BK[lo : lo + _BOOTSTRAP_CHUNK, c] = roc_num / (pos_total * neg_total)
                auprc_BK[lo : lo + _BOOTSTRAP_CHUNK, c] = ap_num / pos_total
    return auroc_BK, auprc_BK


def _classwise_bootstrap(
    metric: str, labels_NK: np.ndarray, scores_NK: np.ndarray, weights_BN: np.ndarray
) -> np.ndarray:
    """`[B, K]` class-wise metric ("auroc" or "auprc") under each resample."""
    if metric not in _CLASSWISE:
        raise ValueError(f"metric must be one of {_CLASSWISE}")
    auroc_BK, auprc_BK = bootstrap_auroc_auprc(labels_NK, scores_NK, weights_BN)
    return auroc_BK if metric == "auroc" else auprc_BK


def evaluate(
    labels_NK: np.ndarray,
    scores_NK: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    thresholds_K: np.ndarray | None = None,
    thresholds_from: str = "given",
    num_bootstrap: int = DEFAULT_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
    weights_BN: np.ndarray | None = None,
) -> dict[str, Any]:
    """All benchmark metrics of one prediction set, with bootstrap confidence intervals.

    `thresholds_K` (shape `[K]`, on the scale of `scores_NK`) for Fβ/Gβ should come from
    training or validation predictions (as in the benchmark); `thresholds_from` says where they
    came from. Without them Youden's thresholds are fitted on these labels, which is optimistic
    and recorded as `thresholds_from = "youden on these labels"`. `weights_BN` are resamples
    drawn beforehand (`bootstrap_weights`), so several prediction sets share them; otherwise
    `num_bootstrap` are drawn from `seed`.
    """
    labels_NK, scores_NK = _check(labels_NK, scores_NK)
    k = labels_NK.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    if thresholds_K is None:
        thresholds_K = youden_thresholds(labels_NK, scores_NK)
        thresholds_from = "youden on these labels"
    thresholds_K = _check_thresholds(thresholds_K, k)
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
    if num_bootstrap or weights_BN is not None:
        if weights_BN is None:
            weights_BN = bootstrap_weights(labels_NK, num_bootstrap, seed, class_names=names)
        auroc_BK, auprc_BK = bootstrap_auroc_auprc(labels_NK, scores_NK, weights_BN)
        result |= {
            "bootstrap": {"num_samples": len(weights_BN), "confidence": confidence, "seed": seed},
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
    weights_BN: np.ndarray | None = None,
) -> dict[str, Any]:
    """Macro metric of A minus B on the same resamples of one test set.

    Returns the observed difference, its confidence interval and the fraction of resamples in
    which A does not beat B (a one-sided bootstrap p-value for "A is better"). `weights_BN`:
    resamples drawn beforehand (else `num_bootstrap` from `seed`).
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
    if weights_BN is None and not num_bootstrap:
        return {"metric": f"macro_{metric}", "difference": float(observed), "ci": None,
                "p_value_a_not_better": None, "num_bootstrap": 0}  # fmt: skip
    if weights_BN is None:
        weights_BN = bootstrap_weights(labels_NK, num_bootstrap, seed)
    diff_B = _classwise_bootstrap(metric, labels_NK, scores_a_NK, weights_BN).mean(
        axis=1
    ) - _classwise_bootstrap(metric, labels_NK, scores_b_NK, weights_BN).mean(axis=1)
    return {
        "metric": f"macro_{metric}",
        "difference": float(observed),
        "ci": _interval(diff_B, confidence),
        "p_value_a_not_better": float((diff_B <= 0).mean()),
        "num_bootstrap": len(weights_BN),
    }
