"""Label-fraction subsets: nested for one seed, multilabel-stratified, reproducible."""

import itertools

import numpy as np
import pytest

from ecgfm.data.splits import iterative_stratification
from ecgfm.transfer.label_fractions import nested_label_fractions

FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


@pytest.fixture(scope="module")
def labels_NK():
    """2000 examples, 8 classes from 0.15 % (3 positives) to 30 % prevalence, some co-occurring."""
    rng = np.random.default_rng(42)
    prevalence = np.array([0.0015, 0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3])
    labels = rng.random((2000, 8)) < prevalence
    labels[:, 0] = False
    labels[[5, 500, 1500], 0] = True  # the rarest class has exactly three positives
    return labels


def test_subsets_are_nested_and_full_fraction_is_everything(labels_NK):
    for seed in (0, 1, 2):
        subsets = nested_label_fractions(labels_NK, FRACTIONS, seed=seed)
        assert sorted(subsets) == sorted(FRACTIONS)
        np.testing.assert_array_equal(subsets[1.0], np.arange(len(labels_NK)))
        ordered = sorted(FRACTIONS)
        for small, large in itertools.pairwise(ordered):
            assert set(subsets[small]) <= set(subsets[large]), (seed, small, large)


def test_subset_sizes_match_the_fractions(labels_NK):
    subsets = nested_label_fractions(labels_NK, FRACTIONS, seed=0)
    for fraction, index in subsets.items():
        assert abs(index.size - fraction * len(labels_NK)) <= max(3, 0.02 * fraction * 2000)
        assert np.unique(index).size == index.size


def test_class_proportions_follow_the_full_fold(labels_NK):
    full = labels_NK.mean(axis=0)
    subsets = nested_label_fractions(labels_NK, FRACTIONS, seed=3)
    for fraction in (0.1, 0.25, 0.5):
        part = labels_NK[subsets[fraction]].mean(axis=0)
        # Stratified: within ~1 positive of the target count for every class (random sampling
        # of 200 examples would miss a 30 % class by ~6 positives at one standard deviation).
        n = subsets[fraction].size
        assert np.all(np.abs(part - full) * n <= 1.5 + 0.01 * full * n), (fraction, part, full)


def test_every_class_keeps_a_positive_at_one_percent(labels_NK):
    for seed in range(5):
        tiny = nested_label_fractions(labels_NK, FRACTIONS, seed=seed)[0.01]
        assert (labels_NK[tiny].sum(axis=0) >= 1).all(), seed


def test_same_seed_same_subsets_other_seed_others(labels_NK):
    a = nested_label_fractions(labels_NK, FRACTIONS, seed=7)
    b = nested_label_fractions(labels_NK, FRACTIONS, seed=7)
    c = nested_label_fractions(labels_NK, FRACTIONS, seed=8)
    for fraction in FRACTIONS:
        np.testing.assert_array_equal(a[fraction], b[fraction])
    assert not np.array_equal(a[0.1], c[0.1])


def test_iterative_stratification_gives_each_subset_its_wanted_positives():
    # Two subsets wanting 3 and 1 of the 4 positives, and 5 and 5 examples in all.
    labels = np.array([[1], [1], [1], [1], [0], [0], [0], [0], [0], [0]], bool)
    subset_of = iterative_stratification(
        labels, np.array([5, 5]), np.array([[3.0], [1.0]]), np.random.default_rng(0)
    )
    assert labels[subset_of == 0].sum() == 3 and labels[subset_of == 1].sum() == 1
    assert np.bincount(subset_of).tolist() == [5, 5]


def test_fractions_outside_zero_one_are_refused(labels_NK):
    with pytest.raises(ValueError, match="fractions"):
        nested_label_fractions(labels_NK, (0.0, 0.5), seed=0)
    with pytest.raises(ValueError, match="fractions"):
        nested_label_fractions(labels_NK, (1.5,), seed=0)
