"""The fixed downstream protocol: tasks, splits, windows, aggregation, and the study runner.

A `TaskSpec` says everything a downstream number depends on besides the model, and is written
into every result:

- PTB-XL (Strodthoff et al. 2021): one of the six label tasks, `strat_fold` 1–8 train, 9
  validation, 10 test, records at 100 or 500 Hz. As the benchmark (`select_data` in
  helme/ecg_ptbxl_benchmarking) does, records without a label in the task are dropped from
  that task, and the classes are the labels that occur in the dataset; the drops are counted.
- CPSC 2018: the nine classes on the package's fixed split (`ecgfm.data.splits`), or a split
  file passed in `split_file`.
- Windows: the benchmark's models see 2.5 s crops; at test time they score windows of 2.5 s
  every 1.25 s (`stride_length_valid = input_size // 2` in its `fastai_model`) and take the
  per-class maximum of the window predictions (`aggregate_fn="max"`; its "mean" averages the
  sigmoid outputs, as `aggregate_window_logits` does). `BENCHMARK_WINDOWING`
  is that, with training windows every 2.5 s (non-overlapping), the deterministic counterpart
  of the benchmark's random training crops. `window_s=None` gives one input per record, fitted
  to the encoder's length by its preprocessing (centre crop or zero pad).

`run_study` evaluates methods (a frozen-encoder probe, later fine-tuning or a supervised model
trained from scratch: anything with `fit_predict(train_index, seed) -> MethodOutput`) on nested
label fractions of the training fold, several seeds, with bootstrap CIs on the test fold and a
paired bootstrap difference against a reference method. Methods return logits; metrics are
computed on their sigmoid, the benchmark's probabilities, and the Fβ/Gβ thresholds are fitted
on the validation fold's (`THRESHOLD_RULES`; the benchmark fits them on its training fold's
predictions, which for a fitted head are optimistic).
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import scipy.special

from ecgfm import metrics
from ecgfm.data import splits as splits_lib
from ecgfm.data.cpsc2018 import CPSC_CLASSES, Cpsc2018
from ecgfm.data.ptbxl import TASKS as PTBXL_TASKS
from ecgfm.data.ptbxl import PtbXl
from ecgfm.data.reader import Reader
from ecgfm.data.record import EcgRecord
from ecgfm.transfer.label_fractions import nested_label_fractions

SPLITS: tuple[str, ...] = (splits_lib.TRAIN, splits_lib.VALIDATION, splits_lib.TEST)
Aggregation = Literal["max", "mean", "mean_embedding"]
AGGREGATIONS: tuple[str, ...] = ("max", "mean", "mean_embedding")
# What each aggregation does with a record's windows, as results record it.
WINDOW_AGGREGATION: dict[str, str] = {
    "max": "per-class maximum of the window probabilities (the benchmark's aggregate_fn='max')",
    "mean": "per-class mean of the window probabilities (sigmoid outputs, as the benchmark)",
    "mean_embedding": "window embeddings averaged per record, one prediction per record "
    "(end-to-end fine-tuning: the window probabilities are averaged)",
}
DATASETS: tuple[str, ...] = ("ptbxl", "cpsc2018")
CPSC_TASK = "cpsc9"
# How `run_study` picks the Fβ/Gβ thresholds on the validation predictions.
THRESHOLD_RULES: dict[str, str] = {
    "gbeta": "per class, the lowest of 100 probabilities in [0, 1] maximising Gβ=2 on the "
    "validation fold (the PTB-XL benchmark's find_optimal_cutoff_thresholds_for_Gbeta)",
    "youden": "per class, the probability maximising Youden's J (tpr − fpr) on the validation fold",
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


def window_starts(num_samples: int, window: int, stride: int) -> np.ndarray:
    """Starts of the windows that fit entirely (the benchmark's crops); one at 0 if none fits."""
    if num_samples <= window:
        return np.zeros(1, dtype=np.int64)
    return np.arange(0, num_samples - window + 1, stride, dtype=np.int64)


def cut_windows(signal_TC: np.ndarray, window: int, stride: int) -> np.ndarray:
    """`[T, C]` → `[W, window, C]`; a record shorter than `window` is zero-padded at the end."""
    signal_TC = np.asarray(signal_TC, dtype=np.float32)
    if signal_TC.shape[0] < window:
        pad = np.zeros((window - signal_TC.shape[0], signal_TC.shape[1]), np.float32)
        signal_TC = np.concatenate([signal_TC, pad])
    starts = window_starts(signal_TC.shape[0], window, stride)
    return np.stack([signal_TC[s : s + window] for s in starts])


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


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One downstream task: dataset, label set, files' sampling rate, split and windows."""

    dataset: str
    task: str
    sampling_rate: int
    windowing: Windowing = BENCHMARK_WINDOWING
    split_file: str | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, not {self.dataset!r}")
        if self.dataset == "ptbxl":
            if self.task not in PTBXL_TASKS:
                raise ValueError(f"PTB-XL task must be one of {PTBXL_TASKS}, not {self.task!r}")
            if self.sampling_rate not in (100, 500):
                raise ValueError(f"PTB-XL files are 100 or 500 Hz, not {self.sampling_rate}")
            if self.split_file is not None:
                raise ValueError("PTB-XL uses its strat_fold split; split_file is for CPSC 2018")
        elif self.task != CPSC_TASK or self.sampling_rate != 500:
            raise ValueError(f"CPSC 2018 has one task {CPSC_TASK!r} at 500 Hz")

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.task}@{self.sampling_rate}Hz"

    def split_description(self) -> str:
        if self.dataset == "ptbxl":
            folds = splits_lib.PTBXL_FOLDS
            return ", ".join(f"{s}: strat_fold {list(folds[s])}" for s in SPLITS)
        return (
            f"split file {self.split_file or 'ecgfm/resources/' + splits_lib.CPSC2018_SPLIT_FILE}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the task, its split and its windowing, as recorded with results."""
        return {
            "name": self.name,
            "dataset": self.dataset,
            "task": self.task,
            "sampling_rate": self.sampling_rate,
            "split": self.split_description(),
            "split_file": self.split_file,
            "windowing": dataclasses.asdict(self.windowing),
            "records_without_label": "dropped from the task (counted in data.dropped)",
        }


def ptbxl_task(
    task: str = "superdiagnostic",
    sampling_rate: int = 100,
    windowing: Windowing = BENCHMARK_WINDOWING,
) -> TaskSpec:
    """A PTB-XL benchmark task on folds 1–8 / 9 / 10."""
    return TaskSpec("ptbxl", task, sampling_rate, windowing)


def cpsc2018_task(
    windowing: Windowing = BENCHMARK_WINDOWING, split_file: str | None = None
) -> TaskSpec:
    """CPSC 2018's nine classes on the shipped split (or `split_file`)."""
    return TaskSpec("cpsc2018", CPSC_TASK, 500, windowing, split_file)


@dataclasses.dataclass
class TaskData:
    """A task's labelled records per split, and how to read their signals.

    Attributes:
      spec: the task.
      dataset_id: what identifies the signals (dataset, resolved root, files' rate) in caches.
      class_names: K label names, the columns of every `labels_NK`.
      record_ids: split → record ids of the records kept for the task.
      labels: split → `[N, K]` bool multi-hot labels of those records.
      dropped: split → number of records left out for having no label in the task.
      read: record id → `EcgRecord` (raises `EcgFormatError` for a bad file).
      split_check: for a shipped or given split file, whether these labels are the ones it was
        stratified on (`splits.compare_labels`); None where the split is the dataset's own.
    """

    spec: TaskSpec
    dataset_id: str
    class_names: tuple[str, ...]
    record_ids: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    dropped: dict[str, int]
    read: Callable[[str], EcgRecord]
    split_check: str | None = None

    def subset(self, split: str, keep: Sequence[str]) -> None:
        """Keeps only the records of `split` in `keep` (e.g. after unreadable ones were skipped)."""
        wanted = set(keep)
        mask = np.array([r in wanted for r in self.record_ids[split]], dtype=bool)
        self.record_ids[split] = [r for r, m in zip(self.record_ids[split], mask, strict=True) if m]
        self.labels[split] = self.labels[split][mask]

    def summary(self) -> dict[str, Any]:
        """Counts per split for the results file."""
        return {
            **({"split_check": self.split_check} if self.split_check else {}),
            "num_records": {s: len(self.record_ids[s]) for s in SPLITS},
            "dropped_without_label": dict(self.dropped),
            "positives_per_class": {
                s: dict(zip(self.class_names, self.labels[s].sum(axis=0).tolist(), strict=True))
                for s in SPLITS
            },
        }


def _multi_hot(labels: Sequence[Sequence[str]], class_names: Sequence[str]) -> np.ndarray:
    column = {name: k for k, name in enumerate(class_names)}
    out = np.zeros((len(labels), len(class_names)), dtype=bool)
    for n, names in enumerate(labels):
        out[n, [column[name] for name in names]] = True
    return out


def labelled_task(
    spec: TaskSpec,
    reader: Reader,
    labels: Mapping[str, Sequence[str]],
    split_of: Mapping[str, str],
    *,
    class_names: Sequence[str] | None = None,
    split_check: str | None = None,
) -> TaskData:
    """The records of `reader` with a label in the task, per split (records in `split_of` order).

    `labels` holds each record's labels in the task (a record it lacks has none). As the
    PTB-XL benchmark does, records without a label are dropped from the task and counted, and
    the classes are, unless `class_names` fixes them, every label that occurs.
    """
    if class_names is None:
        class_names = sorted({name for r in split_of for name in labels.get(r, ())})
    record_ids, multi_hot, dropped = {}, {}, {}
    for split in SPLITS:
        in_split = [r for r, s in split_of.items() if s == split]
        kept = [r for r in in_split if labels.get(r)]
        record_ids[split] = kept
        multi_hot[split] = _multi_hot([labels[r] for r in kept], class_names)
        dropped[split] = len(in_split) - len(kept)
    return TaskData(
        spec=spec,
        dataset_id=f"{spec.dataset}:{reader.root.resolve()}:{spec.sampling_rate}Hz",
        class_names=tuple(class_names),
        record_ids=record_ids,
        labels=multi_hot,
        dropped=dropped,
        read=reader.read,
        split_check=split_check,
    )


def _load_ptbxl(spec: TaskSpec, root: pathlib.Path) -> TaskData:
    """A benchmark task on PTB-XL's own folds, read from the task's 100 or 500 Hz files."""
    reader = PtbXl(root, sampling_rate=spec.sampling_rate)
    labels = {str(ecg_id): names for ecg_id, names in reader.labels(spec.task).items()}
    split_of = {
        str(ecg_id): splits_lib.ptbxl_split_of_fold(fold)
        for ecg_id, fold in reader.database["strat_fold"].items()
    }
    return labelled_task(spec, reader, labels, split_of)


def _load_cpsc2018(spec: TaskSpec, root: pathlib.Path) -> TaskData:
    """The nine classes on the shipped split (or the spec's split file), checked against it."""
    reader = Cpsc2018(root)
    labels = reader.labels_by_record
    split_of, split_check = splits_lib.load_split_with_check(spec.split_file, labels)
    unsplit = sorted(set(reader.record_ids) - set(split_of))
    if unsplit:
        raise ValueError(
            f"records {unsplit[:5]}{'…' if len(unsplit) > 5 else ''} of {root} are in no split "
            f"of {spec.split_description()}"
        )
    split_of = {r: split_of[r] for r in reader.record_ids}
    return labelled_task(
        spec, reader, labels, split_of, class_names=CPSC_CLASSES, split_check=split_check
    )


# How each dataset's task is defined: its reader, its labels and its split.
_TASKS: dict[str, Callable[[TaskSpec, pathlib.Path], TaskData]] = {
    "ptbxl": _load_ptbxl,
    "cpsc2018": _load_cpsc2018,
}


def load_task(spec: TaskSpec, data_root: str | pathlib.Path) -> TaskData:
    """The labelled records of `spec` under `data_root`, split as the protocol says."""
    root = pathlib.Path(data_root)
    task = _TASKS[spec.dataset](spec, root)
    for split in SPLITS:
        if not task.record_ids[split]:
            raise ValueError(f"{spec.name}: the {split} split of {root} has no labelled record")
    return task


@dataclasses.dataclass(frozen=True)
class MethodOutput:
    """One fitted method's record-level logits `[N, K]` (sigmoid: probabilities) and details."""

    validation_scores_NK: np.ndarray
    test_scores_NK: np.ndarray
    info: dict[str, Any]


class Method(Protocol):
    """What `run_study` evaluates: fit on a subset of the training fold, score val and test.

    `train_index` indexes `task.record_ids["train"]`; `seed` drives anything random in the fit.
    Hook for the supervised baseline trained from scratch and for fine-tuning: implement this.
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
    label values in the test fold (the others are listed in `classes_not_evaluated`). Fβ/Gβ
    thresholds are fitted on the validation probabilities by `threshold_rule` (a key of
    `THRESHOLD_RULES`; the test fold is never used). The full training fold is one subset,
    fitted once (with the first seed). With `reference`, each other method's macro AUROC is
    compared with the reference's on the same test resamples (`paired_bootstrap_difference`,
    reference minus other).
    """
    if threshold_rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold_rule must be one of {sorted(THRESHOLD_RULES)}")
    fit_thresholds = {
        "gbeta": metrics.gbeta_thresholds,
        "youden": metrics.youden_thresholds,
    }[threshold_rule]
    test_labels = task.labels[splits_lib.TEST]
    val_labels = task.labels[splits_lib.VALIDATION]
    kept = evaluable_classes(test_labels)
    names = [task.class_names[k] for k in kept]
    subsets = {
        seed: nested_label_fractions(task.labels[splits_lib.TRAIN], fractions, seed=seed)
        for seed in seeds
    }
    runs: list[dict[str, Any]] = []
    predictions: dict[str, np.ndarray] = {
        "test_labels_NK": test_labels,
        "test_record_ids": np.array(task.record_ids[splits_lib.TEST]),
    }
    for method_name, method in methods.items():
        for fraction in sorted(subsets[seeds[0]]):
            for seed in seeds if fraction < 1.0 else seeds[:1]:
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
                    seed=seed,
                )
                predictions[f"{method_name}/{fraction:g}/{seed}"] = test_probabilities
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
            _compare(runs, predictions, test_labels[:, kept], kept, reference, num_bootstrap)
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
    num_bootstrap: int,
) -> list[dict[str, Any]]:
    """Reference minus each other method, per (fraction, seed), on the same test resamples."""
    methods = {r["method"] for r in runs}
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} is not among {sorted(methods)}")
    out = []
    for run in runs:
        if run["method"] != reference:
            continue
        key = f"{run['fraction']:g}/{run['seed']}"
        for other in sorted(methods - {reference}):
            if f"{other}/{key}" not in predictions:
                continue
            diff = metrics.paired_bootstrap_difference(
                labels_NK,
                predictions[f"{reference}/{key}"][:, kept],
                predictions[f"{other}/{key}"][:, kept],
                num_bootstrap=num_bootstrap,
                seed=run["seed"],
            )
            out.append(
                {"a": reference, "b": other, "fraction": run["fraction"], "seed": run["seed"]}
                | diff
            )
    return out
