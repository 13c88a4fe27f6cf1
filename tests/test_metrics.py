"""The transfer metrics equal scikit-learn and the PTB-XL benchmark's own definitions."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ecgfm import metrics


def _random_case(seed: int, n: int = 300, k: int = 5, ties: bool = False):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, k)) < rng.uniform(0.05, 0.5, k)).astype(int)
    labels[0], labels[1] = 1, 0  # every class has positives and negatives
    scores = labels * rng.uniform(0.2, 1.5, k) + rng.normal(size=(n, k))
    if ties:
        scores = np.round(scores, 1)
    return labels, scores


def _benchmark_challenge_metrics(y_true, y_pred, beta1=2, beta2=2):
    """The PTB-XL benchmark's per-example loop, rewritten independently for the test."""
    sample_weights = y_true.sum(axis=1)
    f_beta = g_beta = 0.0
    for c in range(y_true.shape[1]):
        tp = fp = fn = 0.0
        for i in range(len(y_pred)):
            w = 1.0 / sample_weights[i]
            if y_true[i, c] == 1 and y_pred[i, c] == 1:
                tp += w
            elif y_pred[i, c] == 1:
                fp += w
            elif y_true[i, c] == 1:
                fn += w
        f_beta += (1 + beta1**2) * tp / ((1 + beta1**2) * tp + fp + beta1**2 * fn)
        g_beta += tp / (tp + fp + beta2 * fn)
    return f_beta / y_true.shape[1], g_beta / y_true.shape[1]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_auprc_equal_sklearn(seed, ties):
    labels, scores = _random_case(seed, ties=ties)
    assert metrics.macro_auroc(labels, scores) == pytest.approx(
        roc_auc_score(labels, scores, average="macro"), abs=1e-12
    )
    np.testing.assert_allclose(
        metrics.per_class_auroc(labels, scores),
        roc_auc_score(labels, scores, average=None),
        atol=1e-12,
    )
    assert metrics.macro_auprc(labels, scores) == pytest.approx(
        average_precision_score(labels, scores, average="macro"), abs=1e-12
    )


def test_macro_auroc_names_classes_without_both_label_values():
    labels, scores = _random_case(0)
    labels[:, 3] = 0
    with pytest.raises(ValueError, match=r"classes \[3\]"):
        metrics.macro_auroc(labels, scores)


@pytest.mark.parametrize("seed", range(5))
def test_youden_thresholds_are_the_benchmarks_roc_curve_argmax(seed):
    labels, scores = _random_case(seed, ties=seed % 2 == 0)
    for k in range(labels.shape[1]):
        fpr, tpr, thresholds = roc_curve(labels[:, k], scores[:, k])
        expected = thresholds[np.argmax(tpr - fpr)]
        assert metrics.youden_thresholds(labels, scores)[k] == expected


@pytest.mark.parametrize("seed", range(5))
def test_challenge_f_and_g_beta_equal_the_benchmark_loop(seed):
    labels, scores = _random_case(seed, n=120)
    labels[labels.sum(axis=1) == 0, 0] = 1  # the benchmark scores labelled examples only
    predicted = metrics.apply_thresholds(scores, metrics.youden_thresholds(labels, scores))
    f_ref, g_ref = _benchmark_challenge_metrics(labels, predicted.astype(int))
    got = metrics.challenge_scores(labels, predicted)
    assert got["f_beta"] == pytest.approx(f_ref, abs=1e-12)
    assert got["g_beta"] == pytest.approx(g_ref, abs=1e-12)


def test_apply_thresholds_predicts_the_top_class_when_nothing_passes():
    scores = np.array([[0.1, 0.3, 0.2], [0.9, 0.1, 0.8]])
    predicted = metrics.apply_thresholds(scores, np.array([0.5, 0.5, 0.5]))
    np.testing.assert_array_equal(predicted, [[False, True, False], [True, False, True]])


def test_fmax_of_perfect_and_hand_computed_predictions():
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 1]])
    assert metrics.fmax(labels, labels.astype(float)) == pytest.approx(1.0)
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.3], [0.6, 0.4]])
    # At t=0.6 the predictions are {0},{1},{0},{0}: precision (1+1+1+0)/4 = .75 and
    # recall (1+1+.5+0)/4 = .625, so F1 = .6818 is a lower bound of Fmax.
    best = 0.0
    for t in np.linspace(scores.min(), scores.max(), 101):
        pred = scores >= t
        cov = pred.any(axis=1)
        p = ((pred & (labels == 1)).sum(1)[cov] / pred[cov].sum(1)).mean()
        r = ((pred & (labels == 1)).sum(1) / labels.sum(1)).mean()
        best = max(best, 2 * p * r / (p + r) if p + r else 0)
    assert metrics.fmax(labels, scores) == pytest.approx(best)
    assert best > 0.68


def test_bootstrap_ci_covers_the_estimate_and_keeps_every_class():
    labels, scores = _random_case(1, n=200)
    result = metrics.evaluate(labels, scores, num_bootstrap=200, seed=3)
    low, high = result["macro_auroc_ci"]
    assert low < result["macro_auroc"] < high
    assert high - low < 0.2
    weights = metrics.bootstrap_weights(labels, 50, seed=0)
    positives = weights @ labels
    assert (positives > 0).all() and (positives < len(labels)).all()
    assert weights.sum(axis=1) == pytest.approx(np.full(50, len(labels)))


def test_bootstrap_auroc_of_a_resample_equals_sklearn_on_the_repeated_rows():
    labels, scores = _random_case(2, n=80)
    weights = metrics.bootstrap_weights(labels, 3, seed=5)
    auroc_bk = metrics._classwise_bootstrap("auroc", labels.astype(bool), scores, weights)
    for b in range(3):
        rows = np.repeat(np.arange(len(labels)), weights[b].astype(int))
        expected = roc_auc_score(labels[rows], scores[rows], average=None)
        np.testing.assert_allclose(auroc_bk[b], expected, atol=1e-12)


def test_paired_bootstrap_detects_a_better_model():
    labels, scores = _random_case(4, n=300)
    noisy = scores + np.random.default_rng(0).normal(scale=2.0, size=scores.shape)
    result = metrics.paired_bootstrap_difference(labels, scores, noisy, num_bootstrap=300)
    assert result["difference"] > 0
    assert result["ci"][0] > 0
    assert result["p_value_a_not_better"] < 0.05


def test_mismatched_shapes_and_non_binary_labels_are_refused():
    with pytest.raises(ValueError, match="shape"):
        metrics.macro_auroc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.macro_auroc(np.full((3, 2), 2), np.zeros((3, 2)))


def test_bootstrap_keeps_every_class_with_a_dozen_one_positive_classes():
    # PTB-XL's fold 10 has classes with one positive: each is missing from e^-1 ≈ 37 % of
    # plain resamples, so with 12 of them only ~0.4 % of resamples are usable.
    rng = np.random.default_rng(0)
    n = 2000
    labels = rng.random((n, 16)) < 0.2
    labels[:, :12] = False
    labels[rng.choice(n, 12, replace=False), np.arange(12)] = True
    weights = metrics.bootstrap_weights(labels, 200, seed=0)
    positives = weights @ labels
    assert weights.shape == (200, n)
    assert (positives > 0).all() and (positives < n).all()
    np.testing.assert_array_equal(weights.sum(axis=1), np.full(200, n))
    assert np.all(weights == np.round(weights)) and weights.min() >= 0


def test_bootstrap_is_the_ordinary_bootstrap_conditioned_on_keeping_every_class():
    # One positive among 30: its draw count given that it is drawn at least once has mean
    # 1 / (1 − (29/30)^30); the others share the rest equally.
    labels = np.zeros((30, 2), dtype=bool)
    labels[0, 0] = True
    labels[:15, 1] = True
    weights = metrics.bootstrap_weights(labels, 20000, seed=1)
    expected = 1 / (1 - (29 / 30) ** 30)
    assert weights[:, 0].min() >= 1
    assert weights[:, 0].mean() == pytest.approx(expected, rel=0.02)
    np.testing.assert_allclose(weights[:, 1:].mean(axis=0), (30 - expected) / 29, rtol=0.03)


def test_bootstrap_that_cannot_keep_every_class_names_the_classes():
    rng = np.random.default_rng(0)
    labels = np.zeros((50, 3), dtype=bool)
    labels[:25, 0] = True
    labels[rng.choice(50, 2, replace=False), [1, 2]] = True
    with pytest.raises(ValueError, match=r"rare_a \(1 of 50 positive\)"):
        metrics.bootstrap_weights(
            labels, 100, seed=0, max_draws=50, class_names=["common", "rare_a", "rare_b"]
        )


def test_thresholds_must_be_one_per_class():
    scores = np.array([[0.1, 0.3, 0.2], [0.9, 0.1, 0.8]])
    labels = np.array([[0, 1, 0], [1, 0, 1]])
    for bad in (np.array([0.5]), np.array([[0.5, 0.5, 0.5]]), np.array([0.5, 0.5])):
        with pytest.raises(ValueError, match=r"one threshold per class, shape \(3,\)"):
            metrics.apply_thresholds(scores, bad)
        with pytest.raises(ValueError, match=r"shape \(3,\)"):
            metrics.evaluate(labels, scores, thresholds_K=bad, num_bootstrap=0)


def _benchmark_gbeta_threshold_loop(y_true_N, y_prob_N, n_thresholds=100):
    """find_optimal_cutoff_threshold_for_Gbeta, rewritten independently: per threshold, the
    benchmark's per-example loop with every example weighing 1 (single=True)."""
    best_t, best_g = None, None
    for t in np.linspace(0.0, 1.0, n_thresholds):
        tp = fp = fn = 0.0
        for y, p in zip(y_true_N, y_prob_N, strict=True):
            predicted = p > t
            tp += float(y == 1 and predicted)
            fp += float(y == 0 and predicted)
            fn += float(y == 1 and not predicted)
        g = tp / (tp + fp + 2 * fn)
        if best_g is None or g > best_g:  # np.argmax: the first of equal maxima
            best_t, best_g = t, g
    return best_t


@pytest.mark.parametrize("seed", range(4))
def test_gbeta_thresholds_are_the_benchmarks(seed):
    labels, scores = _random_case(seed, n=150)
    probabilities = 1 / (1 + np.exp(-scores))
    if seed % 2:
        probabilities = np.round(probabilities, 2)  # ties with the grid points
    got = metrics.gbeta_thresholds(labels, probabilities)
    for k in range(labels.shape[1]):
        assert got[k] == _benchmark_gbeta_threshold_loop(labels[:, k], probabilities[:, k])


def test_gbeta_thresholds_need_probabilities():
    labels, scores = _random_case(0)
    with pytest.raises(ValueError, match="probabilities"):
        metrics.gbeta_thresholds(labels, scores * 10)


def test_evaluate_says_where_its_thresholds_came_from():
    labels, scores = _random_case(3)
    fitted_here = metrics.evaluate(labels, scores, num_bootstrap=0)
    assert fitted_here["thresholds_from"] == "youden on these labels"
    given = metrics.evaluate(
        labels, scores, thresholds_K=np.zeros(5), thresholds_from="validation", num_bootstrap=0
    )
    assert given["thresholds_from"] == "validation" and given["thresholds"] == [0.0] * 5


@pytest.mark.parametrize("ties", [False, True])
def test_vectorised_bootstrap_equals_the_reference_for_rare_and_common_classes(ties):
    # Class 0 has 3 positives (matrix-product path), the others hundreds (sorted-sums path).
    labels, scores = _random_case(7, n=1200, k=4, ties=ties)
    labels[:, 0] = 0
    labels[[5, 9, 11], 0] = 1
    weights = metrics.bootstrap_weights(labels, 40, seed=2)
    auroc_BK, auprc_BK = metrics.bootstrap_auroc_auprc(labels, scores, weights)
    for k in range(labels.shape[1]):
        ranked = metrics._RankedClass.build(labels[:, k].astype(bool), scores[:, k])
        np.testing.assert_allclose(auroc_BK[:, k], ranked.auroc(weights), atol=1e-9)
        np.testing.assert_allclose(auprc_BK[:, k], ranked.average_precision(weights), atol=1e-6)


def _paper_f1_thresholds(y_true, y_score):
    """antonior92/automatic-ecg-diagnosis `get_optimal_precision_recall`, on sklearn's curve."""
    from sklearn.metrics import precision_recall_curve

    out = []
    for k in range(y_true.shape[1]):
        precision, recall, threshold = precision_recall_curve(y_true[:, k], y_score[:, k])
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
        out.append(threshold[np.argmax(f1)])  # predict score >= this
    return np.array(out)


def test_f1_thresholds_predict_what_the_papers_rule_predicts():
    labels, scores = _random_case(8, n=400, k=5)
    probabilities = 1 / (1 + np.exp(-scores))
    ours = metrics.f1_thresholds(labels, probabilities)
    paper = _paper_f1_thresholds(labels, probabilities)
    np.testing.assert_array_equal(probabilities > ours, probabilities >= paper)
    # A class without positives is never predicted.
    assert metrics.f1_thresholds(np.zeros((10, 1)), np.linspace(0, 1, 10)[:, None])[0] == np.inf


def test_binary_scores_are_ribeiros_precision_recall_specificity_f1_with_cis():
    from sklearn.metrics import f1_score, precision_score, recall_score

    labels, scores = _random_case(9, n=500, k=3)
    predicted = scores > 0.5
    result = metrics.binary_scores(
        labels, predicted, weights_BN=metrics.bootstrap_weights(labels, 200, seed=0)
    )
    np.testing.assert_allclose(
        result["precision"], precision_score(labels, predicted, average=None)
    )
    np.testing.assert_allclose(result["recall"], recall_score(labels, predicted, average=None))
    np.testing.assert_allclose(result["f1"], f1_score(labels, predicted, average=None))
    negatives = labels == 0
    specificity = (negatives & ~predicted).sum(0) / negatives.sum(0)
    np.testing.assert_allclose(result["specificity"], specificity)
    for k, (low, high) in enumerate(result["f1_ci"]):
        assert low <= result["f1"][k] <= high
