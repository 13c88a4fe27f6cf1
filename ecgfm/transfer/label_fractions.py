"""Nested, multilabel-stratified subsets of a training fold, for label-efficiency curves.

For one seed, `nested_label_fractions` returns index sets with 1 % ⊂ 5 % ⊂ … ⊂ 100 %: it
walks the fractions from large to small and splits each subset into a kept and a dropped part
with iterative stratification (Sechidis, Tsoumakas & Vlahavas 2011, "On the stratification of
multi-label data", Algorithm 1). The kept part's target count for class k is
`fraction · (positives of k in the whole fold)`, raised to 1 when the parent subset has a
positive, so every class keeps at least one positive where the parent has one. Subset sizes
come out within a few records of `fraction · N` (stratification takes precedence over size).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


def iterative_stratification(
    labels_NK: np.ndarray,
    desired_size_S: np.ndarray,
    desired_SK: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """`[N]` subset index per example, by Sechidis et al.'s iterative stratification.

    The rarest remaining class's examples are placed first, each into the subset that most
    lacks that class (ties: the subset furthest below its size, then a seeded draw); examples
    without any positive label then fill the subsets furthest below their sizes.
    `desired_size_S` and `desired_SK` (`[S]`, `[S, K]`) are the target counts per subset.
    """
    labels_NK = np.asarray(labels_NK, dtype=bool)
    size_S = np.asarray(desired_size_S, dtype=np.float64).copy()
    want_SK = np.asarray(desired_SK, dtype=np.float64).copy()
    num_subsets = size_S.shape[0]
    subset_of = np.full(labels_NK.shape[0], -1, dtype=np.int64)
    remaining = np.ones(labels_NK.shape[0], dtype=bool)
    while True:
        counts_K = (labels_NK & remaining[:, None]).sum(axis=0)
        present = np.flatnonzero(counts_K)
        if present.size == 0:
            break
        rarest = present[counts_K[present] == counts_K[present].min()]
        k = int(rng.choice(rarest))
        for i in rng.permutation(np.flatnonzero(labels_NK[:, k] & remaining)):
            # np.lexsort sorts by the last key first: most lacking class k, then size, then luck.
            s = int(np.lexsort((rng.random(num_subsets), -size_S, -want_SK[:, k]))[0])
            subset_of[i] = s
            remaining[i] = False
            size_S[s] -= 1
            want_SK[s] -= labels_NK[i]
    for i in rng.permutation(np.flatnonzero(remaining)):
        s = int(np.lexsort((rng.random(num_subsets), -size_S))[0])
        subset_of[i] = s
        size_S[s] -= 1
    return subset_of


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
