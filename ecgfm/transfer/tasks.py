"""Downstream task definitions: which records, which labels, which split, and how to read them.

A `TaskSpec` says everything a downstream number depends on besides the model, and is written
into every result:

- PTB-XL (Strodthoff et al. 2021): one of the six label tasks, `strat_fold` 1–8 train, 9
  validation, 10 test, records at 100 or 500 Hz. As the benchmark (`select_data` in
  helme/ecg_ptbxl_benchmarking) does, records without a label in the task are dropped from
  that task, and the classes are the labels that occur in the dataset; the drops are counted.
- CPSC 2018: the nine classes on the package's fixed split (`ecgfm.data.splits`), or a split
  file passed in `split_file`.
- CODE test set (Ribeiro et al. 2020): the 827 annotated exams are the test split, with the
  gold standard's six classes; training and validation exams come from a CODE-15%/CODE-II
  folder (`train_source`, its columns 1dAVb, RBBB, LBBB, SB, AF, ST) split by patient 90/10
  (seed 0). Exams without any of the six are normal, not unlabelled: they are kept.
- `windowing` (`ecgfm.transfer.windows`): the inputs and the aggregation of window scores.

PTB-XL and CPSC 2018 tasks read the dataset's files, or a build of them by `ecgfm prepare`
(`ecgfm.data.packed`: the same grain source training reads) when the data root holds one; the
build must be the files at the task's rate with nothing applied (the encoder's own spec is
applied at transfer time), on the task's split, and gives the same task.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ecgfm.data import splits as splits_lib
from ecgfm.data.code import CodeDataset
from ecgfm.data.code_test import CLASSES as CODE_TEST_CLASSES
from ecgfm.data.code_test import CodeTestSet
from ecgfm.data.cpsc2018 import CPSC_CLASSES, Cpsc2018
from ecgfm.data.packed import PackedDataset, is_packed
from ecgfm.data.ptbxl import TASKS as PTBXL_TASKS
from ecgfm.data.ptbxl import PtbXl
from ecgfm.data.reader import Reader
from ecgfm.data.record import EcgRecord
from ecgfm.transfer.windows import BENCHMARK_WINDOWING, Windowing

SPLITS: tuple[str, ...] = (splits_lib.TRAIN, splits_lib.VALIDATION, splits_lib.TEST)
DATASETS: tuple[str, ...] = ("ptbxl", "cpsc2018", "code_test")
CPSC_TASK = "cpsc9"
CODE_TEST_TASK = "code6"
CODE_TRAIN_FRACTIONS: Mapping[str, float] = {splits_lib.TRAIN: 0.9, splits_lib.VALIDATION: 0.1}
# The benchmark's task names (`ecgfm benchmark --tasks`): PTB-XL's six, then the others.
BENCHMARK_TASKS: tuple[str, ...] = (*PTBXL_TASKS, "cpsc2018", "code_test")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One downstream task: dataset, label set, files' sampling rate, split and windows.

    `split_file` is CPSC 2018's alternative split; `train_source` the CODE-layout folder that
    the CODE test set's training and validation exams come from.
    """

    dataset: str
    task: str
    sampling_rate: int
    windowing: Windowing = BENCHMARK_WINDOWING
    split_file: str | None = None
    train_source: str | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, not {self.dataset!r}")
        if self.dataset == "ptbxl":
            if self.task not in PTBXL_TASKS:
                raise ValueError(f"PTB-XL task must be one of {PTBXL_TASKS}, not {self.task!r}")
            if self.sampling_rate not in (100, 500):
                raise ValueError(f"PTB-XL files are 100 or 500 Hz, not {self.sampling_rate}")
        elif self.dataset == "cpsc2018":
            if self.task != CPSC_TASK or self.sampling_rate != 500:
                raise ValueError(f"CPSC 2018 has one task {CPSC_TASK!r} at 500 Hz")
        elif self.task != CODE_TEST_TASK or self.sampling_rate != 400:
            raise ValueError(f"the CODE test set has one task {CODE_TEST_TASK!r} at 400 Hz")
        if self.split_file is not None and self.dataset != "cpsc2018":
            raise ValueError("split_file is for CPSC 2018 (PTB-XL uses its strat_fold split)")
        if self.dataset == "code_test" and not self.train_source:
            raise ValueError("the CODE test set needs train_source: a CODE-layout folder")
        if self.train_source is not None and self.dataset != "code_test":
            raise ValueError("train_source is for the CODE test set")

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.task}@{self.sampling_rate}Hz"

    def split_description(self) -> str:
        if self.dataset == "ptbxl":
            folds = splits_lib.PTBXL_FOLDS
            return ", ".join(f"{s}: strat_fold {list(folds[s])}" for s in SPLITS)
        if self.dataset == "code_test":
            return (
                f"test: the annotated exams (gold standard); train/validation: "
                f"{self.train_source} split by patient {dict(CODE_TRAIN_FRACTIONS)} (seed 0)"
            )
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
            "train_source": self.train_source,
            "windowing": dataclasses.asdict(self.windowing),
            "records_without_label": (
                "kept (no finding is a negative for every class)"
                if self.dataset == "code_test"
                else "dropped from the task (counted in data.dropped)"
            ),
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


def code_test_task(
    train_source: str | pathlib.Path, windowing: Windowing = BENCHMARK_WINDOWING
) -> TaskSpec:
    """The CODE test set's six classes; training/validation exams from `train_source`."""
    return TaskSpec(
        "code_test", CODE_TEST_TASK, 400, windowing, train_source=str(pathlib.Path(train_source))
    )


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
    keep_unlabelled: bool = False,
    dataset_id: str | None = None,
    read: Callable[[str], EcgRecord] | None = None,
) -> TaskData:
    """The records of `reader` with a label in the task, per split (records in `split_of` order).

    `labels` holds each record's labels in the task (a record it lacks has none). As the
    PTB-XL benchmark does, records without a label are dropped from the task and counted
    (unless `keep_unlabelled`), and the classes are, unless `class_names` fixes them, every
    label that occurs.
    """
    if class_names is None:
        class_names = sorted({name for r in split_of for name in labels.get(r, ())})
    record_ids, multi_hot, dropped = {}, {}, {}
    for split in SPLITS:
        in_split = [r for r, s in split_of.items() if s == split]
        kept = in_split if keep_unlabelled else [r for r in in_split if labels.get(r)]
        record_ids[split] = kept
        multi_hot[split] = _multi_hot([labels.get(r, ()) for r in kept], class_names)
        dropped[split] = len(in_split) - len(kept)
    return TaskData(
        spec=spec,
        dataset_id=dataset_id or f"{spec.dataset}:{reader.root.resolve()}:{spec.sampling_rate}Hz",
        class_names=tuple(class_names),
        record_ids=record_ids,
        labels=multi_hot,
        dropped=dropped,
        read=read or reader.read,
        split_check=split_check,
    )


def _open_packed(spec: TaskSpec, data_dir: pathlib.Path) -> PackedDataset:
    """`data_dir`'s build of the task's dataset, if it holds the files' samples at its rate.

    The encoder's own spec is applied to each record at transfer time, as to the files, so a
    build must be the files at the task's rate and nothing more: filtering twice is wrong.
    """
    packed = PackedDataset(data_dir, spec.dataset)
    rate = packed.raw_rate()
    if rate is None:
        raise ValueError(
            f"{packed.dataset_dir} was prepared with {packed.preprocessing.describe()}; transfer "
            "applies the encoder's own preprocessing to the records, so it needs them as the "
            f"files hold them: `ecgfm prepare {spec.dataset} --preprocessing "
            f"'{{\"sampling_rate\": {spec.sampling_rate}}}'`"
        )
    if rate != spec.sampling_rate:
        raise ValueError(
            f"{packed.dataset_dir} holds {rate:g} Hz records, the task {spec.name} "
            f"{spec.sampling_rate} Hz ones; prepare it at {spec.sampling_rate} Hz"
        )
    return packed


def _load_ptbxl(spec: TaskSpec, root: pathlib.Path) -> TaskData:
    """A benchmark task on PTB-XL's own folds, read from the task's 100 or 500 Hz files, or
    from a build of them (`ecgfm prepare ptbxl`) that `root` holds."""
    if is_packed(root, "ptbxl"):
        packed = _open_packed(spec, root)
        return labelled_task(spec, packed, packed.labels_in(spec.task), packed.split_of)
    reader = PtbXl(root, sampling_rate=spec.sampling_rate)
    labels = {str(ecg_id): names for ecg_id, names in reader.labels(spec.task).items()}
    split_of = {
        str(ecg_id): splits_lib.ptbxl_split_of_fold(fold)
        for ecg_id, fold in reader.database["strat_fold"].items()
    }
    return labelled_task(spec, reader, labels, split_of)


def _load_cpsc2018(spec: TaskSpec, root: pathlib.Path) -> TaskData:
    """The nine classes on the shipped split (or the spec's split file), checked against it;
    from the files or from a build of them (`ecgfm prepare cpsc2018`) made on that split."""
    packed = _open_packed(spec, root) if is_packed(root, "cpsc2018") else None
    reader = Cpsc2018(root) if packed is None else packed
    labels = reader.labels_by_record if packed is None else packed.labels_in(packed.default_task)
    split_of, split_check = splits_lib.load_split_with_check(spec.split_file, labels)
    if packed is not None:
        packed.check_task_split(split_of, spec.split_description())
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


def code_training_labels(root: pathlib.Path) -> tuple[CodeDataset, dict[str, tuple[str, ...]]]:
    """A CODE-layout folder opened with the six CODE test-set classes as its label columns,
    and exam id → the classes it carries."""
    reader = CodeDataset(root, label_columns=CODE_TEST_CLASSES)
    table = pd.read_csv(root / "exams.csv", usecols=["exam_id", *CODE_TEST_CLASSES])
    truthy = table[list(CODE_TEST_CLASSES)].astype(str).apply(lambda c: c.str.lower())
    on = truthy.isin(["true", "1", "1.0"]).to_numpy()
    listed = set(reader.record_ids)
    labels = {
        str(exam_id): tuple(c for c, v in zip(CODE_TEST_CLASSES, row, strict=True) if v)
        for exam_id, row in zip(table["exam_id"].tolist(), on, strict=True)
        if str(exam_id) in listed
    }
    return reader, labels


def _load_code_test(spec: TaskSpec, root: pathlib.Path) -> TaskData:
    """Test: the annotated set under `root`; train/validation: `spec.train_source` by patient."""
    test_reader = CodeTestSet(root)
    if test_reader.gold_standard is None:
        raise ValueError(f"{root}: annotations/gold_standard.csv is needed to score the test set")
    train_root = pathlib.Path(spec.train_source)
    train_reader, train_labels = code_training_labels(train_root)
    ids = [r for r in train_reader.record_ids if r in train_labels]
    parts = splits_lib.patient_split(
        ids, [train_reader.patient_id(r) for r in ids], fractions=CODE_TRAIN_FRACTIONS, seed=0
    )
    split_of = {f"train:{r}": s for s, members in parts.items() for r in members}
    split_of |= {f"test:{r}": splits_lib.TEST for r in test_reader.record_ids}
    labels = {f"train:{r}": v for r, v in train_labels.items()}
    labels |= {f"test:{r}": v for r, v in test_reader.labels_by_record().items()}

    def read(record_id: str) -> EcgRecord:
        where, _, exam = record_id.partition(":")
        return (test_reader if where == "test" else train_reader).read(exam)

    return labelled_task(
        spec, test_reader, labels, split_of, class_names=CODE_TEST_CLASSES, keep_unlabelled=True,
        dataset_id=f"code_test:{root.resolve()}+{train_root.resolve()}:400Hz", read=read,
    )  # fmt: skip


# How each dataset's task is defined: its reader, its labels and its split.
_LOADERS: dict[str, Callable[[TaskSpec, pathlib.Path], TaskData]] = {
    "ptbxl": _load_ptbxl,
    "cpsc2018": _load_cpsc2018,
    "code_test": _load_code_test,
}


def load_task(spec: TaskSpec, data_root: str | pathlib.Path) -> TaskData:
    """The labelled records of `spec` under `data_root`, split as the protocol says."""
    root = pathlib.Path(data_root)
    task = _LOADERS[spec.dataset](spec, root)
    for split in SPLITS:
        if not task.record_ids[split]:
            raise ValueError(f"{spec.name}: the {split} split of {root} has no labelled record")
    return task
