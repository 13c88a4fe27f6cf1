"""Nested, multilabel-stratified subsets of a training fold, for label-efficiency curves.

For one seed, `nested_label_fractions` returns index sets with 1 % ⊂ 5 % ⊂ … ⊂ 100 %: it
walks the fractions from large to small and splits each subset into a kept and a dropped part
with `splits.iterative_stratification` (Sechidis, Tsoumakas & Vlahavas 2011, Algorithm 1): the
same algorithm and tie-breaking that made the CPSC 2018 split. The kept part's target count for
class k is `fraction · (positives of k in the whole fold)`, raised to 1 when the parent subset
has a positive, so every class keeps at least one positive where the parent has one. Subset
sizes come out within a few records of `fraction · N` (stratification takes precedence over
size).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ecgfm.data.splits import iterative_stratification

DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    values = sorted({float(f) for f in fractions}, reverse=True)
    if not values or any(not 0 < f <= 1 for f in values):
        raise ValueError(f"label fractions must lie in (0, 1], got {list(fractions)}")
    return values


def nested_label_fractions(
    labels_NK: np.ndarray, fractions: Sequence[float] = DEFAULT_FRACTIONS, *, seed: int
) -> dict[float, np.ndarray]:
    """fraction → sorted indices into `labels_NK` (`[N, K]` multi-hot), nested for one seed.

    Fraction 1.0 is every example; the same seed always gives the same subsets.
    """
    labels_NK = np.asarray(labels_NK, dtype=bool)
    if labels_NK.ndim != 2:
        raise ValueError(f"labels must be [examples, classes], got shape {labels_NK.shape}")
    num = labels_NK.shape[0]
    positives_K = labels_NK.sum(axis=0)
    rng = np.random.default_rng(seed)
    current = np.arange(num)
    subsets: dict[float, np.ndarray] = {}
    for fraction in _check_fractions(fractions):
        if fraction < 1.0:
            parent_K = labels_NK[current].sum(axis=0)
            keep_K = np.minimum(np.maximum(fraction * positives_K, parent_K > 0), parent_K)
            keep_size = min(max(round(fraction * num), 1), current.size)
            subset_of = iterative_stratification(
                labels_NK[current],
                np.array([keep_size, current.size - keep_size]),
                np.stack([keep_K, parent_K - keep_K]),
                rng,
            )
            current = current[subset_of == 0]
        subsets[fraction] = np.sort(current)
    return subsets
