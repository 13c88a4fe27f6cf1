"""The one rule that fits a record of any length into a fixed window of samples.

Records come in many lengths (CODE 7 s or 10 s, CPSC 6–60 s, PTB-XL 10 s); a batch needs one.
A record longer than the window is cropped (at a drawn position in training, in the middle in
evaluation); a shorter one is centred in zeros, and `valid` says which samples are real. Every
path that cuts one window per record (the training pipeline, evaluation batches, fine-tuning,
`Preprocessing.num_samples`) places records through `placement`; the paths that cut several
windows per record (transfer's 2.5 s windows every 1.25 s) take the crops that fit entirely
(`window_starts`, `cut_windows`) and place a record shorter than one window by the same rule.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Placement:
    """Record samples `[source_start, source_start + length)` go to window samples
    `[window_start, window_start + length)`; the rest of the window is zeros."""

    source_start: int
    window_start: int
    length: int

    @property
    def valid(self) -> tuple[int, int]:
        """[start, stop) of the real samples in the window."""
        return self.window_start, self.window_start + self.length


def placement(num_samples: int, window: int, position: float | None = None) -> Placement:
    """Where a record of `num_samples` goes in a window of `window` samples.

    Longer records are cropped: the crop starts at `position` ∈ [0, 1) of the possible starts
    (a uniform draw gives a uniform crop), or in the middle when `position` is None. Where the
    middle is not whole, the extra sample is cut from the end. Shorter records are centred in
    zeros, the extra zero at the end: 4000 samples in 4096 get 48 zeros on each side.
    """
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if num_samples >= window:
        slack = num_samples - window
        start = slack // 2 if position is None else min(int(position * (slack + 1)), slack)
        return Placement(start, 0, window)
    return Placement(0, (window - num_samples) // 2, num_samples)


def fit(signal_TC: np.ndarray, window: int, position: float | None = None) -> np.ndarray:
    """`[T, C]` → `[window, C]` (same dtype) placed by `placement`."""
    where = placement(len(signal_TC), window, position)
    out_TC = np.zeros((window, *signal_TC.shape[1:]), dtype=signal_TC.dtype)
    out_TC[where.window_start : where.window_start + where.length] = signal_TC[
        where.source_start : where.source_start + where.length
    ]
    return out_TC


def window_starts(num_samples: int, window: int, stride: int) -> np.ndarray:
    """Starts of the windows that fit entirely, every `stride` (the PTB-XL benchmark's crops);
    one window (placed by `placement`) when the record is not longer than the window."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got {window}, {stride}")
    if num_samples <= window:
        return np.zeros(1, dtype=np.int64)
    return np.arange(0, num_samples - window + 1, stride, dtype=np.int64)


def cut_windows(signal_TC: np.ndarray, window: int, stride: int) -> np.ndarray:
    """`[T, C]` → `[W, window, C]` float32: the windows at `window_starts`; a record shorter
    than the window is one window, centred in zeros (`fit`)."""
    signal_TC = np.asarray(signal_TC, dtype=np.float32)
    if len(signal_TC) < window:
        return fit(signal_TC, window)[None]
    starts = window_starts(len(signal_TC), window, stride)
    return np.stack([signal_TC[s : s + window] for s in starts])
