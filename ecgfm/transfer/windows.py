"""Windows: how records become encoder inputs and how window outputs become a record's scores.

The PTB-XL benchmark's models see 2.5 s crops; at test time they score windows of 2.5 s every
1.25 s (`stride_length_valid = input_size // 2` in helme/ecg_ptbxl_benchmarking's
`fastai_model`) and take the per-class maximum of the window predictions (`aggregate_fn="max"`;
its "mean" averages the sigmoid outputs, as `aggregate_window_logits` does). The ECG
foundation-model benchmark (Al-Masud, Lopez Alcaraz & Strodthoff, ICLR 2026;
AI4HealthUOL/ecg-fm-benchmarking) evaluates every encoder the same way, at `--input-size 2.5`
whatever length it was pretrained on. `BENCHMARK_WINDOWING` is that, with training windows
every 2.5 s (non-overlapping), the deterministic counterpart of the benchmark's random
training crops; `WHOLE_RECORD` gives one input per record, fitted to the encoder's length by
its preprocessing (centre crop or zero pad).

Every encoder embeds any length (`ecgfm.models`): a record is preprocessed whole by the
encoder's `Preprocessing` with its length left free (resampling, filters and per-record
normalisation see all 10 s), then cut into windows (`record_windows`), each one input. Where
the windows fall is the data layer's rule (`ecgfm.data.windows.window_starts`/`cut_windows`:
the crops that fit; a shorter record centred in zeros, as every one-window path places it).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import scipy.special

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.windows import cut_windows

Aggregation = Literal["max", "mean", "mean_embedding"]
AGGREGATIONS: tuple[str, ...] = ("max", "mean", "mean_embedding")
# What each aggregation does with a record's windows, as results record it.
WINDOW_AGGREGATION: dict[str, str] = {
    "max": "per-class maximum of the window probabilities (the benchmark's aggregate_fn='max')",
    "mean": "per-class mean of the window probabilities (sigmoid outputs, as the benchmark)",
    "mean_embedding": "window embeddings averaged per record, one prediction per record "
    "(end-to-end fine-tuning: the window probabilities are averaged)",
}


@dataclasses.dataclass(frozen=True)
class Windowing:
    """How records become encoder inputs and how window outputs become one record's scores.

    Attributes:
      window_s: window length in seconds, or None for one input per record.
      train_stride_s: seconds between training windows' starts.
      eval_stride_s: seconds between validation/test windows' starts.
      aggregation: "max" or "mean" of the window predictions per class (probabilities, as the
        benchmark averages sigmoid outputs; the probe is trained on windows, each carrying its
        record's labels), or "mean_embedding" (the window embeddings are averaged per record
        and the probe sees one vector per record).
    """

    window_s: float | None = 2.5
    train_stride_s: float = 2.5
    eval_stride_s: float = 1.25
    aggregation: Aggregation = "max"

    def __post_init__(self) -> None:
        if self.window_s is not None and not self.window_s > 0:
            raise ValueError(f"window_s must be positive or None, got {self.window_s}")
        if not (self.train_stride_s > 0 and self.eval_stride_s > 0):
            raise ValueError("window strides must be positive")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {self.aggregation!r}")

    def samples(self, sampling_rate: float, train: bool) -> tuple[int, int] | None:
        """(window, stride) in samples at `sampling_rate`, or None for whole records."""
        if self.window_s is None:
            return None
        stride_s = self.train_stride_s if train else self.eval_stride_s
        return round(self.window_s * sampling_rate), max(round(stride_s * sampling_rate), 1)


BENCHMARK_WINDOWING = Windowing()
WHOLE_RECORD = Windowing(window_s=None)


def record_windows(
    signal_TC: np.ndarray,
    sampling_rate: float,
    preprocessing: Preprocessing,
    window: tuple[int, int] | None,
) -> np.ndarray:
    """`[W, T', C']` encoder inputs of one raw `[T, 12]` record.

    With a window, the record is prepared at full length (the spec's `num_samples`, the
    length the encoder was pretrained on, is not applied: every encoder embeds any length)
    and cut into `window`-sample windows every `stride`. Without one, the spec's own crop/pad
    makes one input.
    """
    if window is None:
        return preprocessing(signal_TC, sampling_rate)[None]
    length, stride = window
    whole = dataclasses.replace(preprocessing, num_samples=None)
    return cut_windows(whole(signal_TC, sampling_rate), length, stride)


def aggregate_windows(
    values_WK: np.ndarray, record_of_window_W: np.ndarray, num_records: int, how: str
) -> np.ndarray:
    """`[N, K]` per-record max or mean of window rows; `record_of_window_W` in 0..N-1."""
    values_WK = np.asarray(values_WK, dtype=np.float64)
    record_of_window_W = np.asarray(record_of_window_W)
    counts_N = np.bincount(record_of_window_W, minlength=num_records)
    if (counts_N == 0).any():
        raise ValueError(f"records {np.flatnonzero(counts_N == 0).tolist()} have no window")
    if how == "max":
        out = np.full((num_records, values_WK.shape[1]), -np.inf)
        np.maximum.at(out, record_of_window_W, values_WK)
        return out
    if how in ("mean", "mean_embedding"):
        out = np.zeros((num_records, values_WK.shape[1]))
        np.add.at(out, record_of_window_W, values_WK)
        return out / counts_N[:, None]
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {how!r}")


def aggregate_window_logits(
    logits_WK: np.ndarray, record_of_window_W: np.ndarray, num_records: int, how: str
) -> np.ndarray:
    """`[N, K]` record logits from window logits: the max, or the logit of the mean probability.

    "mean" averages the windows' sigmoid outputs, as the benchmark does, and returns that
    average as a logit, log Σσ(x) − log Σσ(−x), which stays finite where σ rounds to 0 or 1.
    "mean_embedding" has one row per record here: it is returned as is.
    """
    if how == "max":
        return aggregate_windows(logits_WK, record_of_window_W, num_records, "max")
    if how not in ("mean", "mean_embedding"):
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {how!r}")
    logits_WK = np.asarray(logits_WK, dtype=np.float64)
    record_of_window_W = np.asarray(record_of_window_W)
    counts_N = np.bincount(record_of_window_W, minlength=num_records)
    if (counts_N == 0).any():
        raise ValueError(f"records {np.flatnonzero(counts_N == 0).tolist()} have no window")
    log_sum = {}
    for sign in (1.0, -1.0):
        log_sigmoid_WK = -np.logaddexp(0.0, -sign * logits_WK)
        out = np.full((num_records, logits_WK.shape[1]), -np.inf)
        np.logaddexp.at(out, record_of_window_W, log_sigmoid_WK)
        log_sum[sign] = out
    return log_sum[1.0] - log_sum[-1.0]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities of logits, in float64."""
    return scipy.special.expit(np.asarray(logits, dtype=np.float64))
