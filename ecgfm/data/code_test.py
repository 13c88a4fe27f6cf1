"""The CODE test set of Ribeiro et al. 2020: 827 exams annotated by cardiologists and trainees.

Ribeiro, A.H. et al. "Automatic diagnosis of the 12-lead ECG using a deep neural network",
Nat. Commun. 11, 1760 (2020); data Zenodo 3625006 and antonior92/automatic-ecg-diagnosis
`data/` (its README describes the layout read here):

- `ecg_tracings.hdf5`: one dataset `tracings` `[827, 4096, 12]` (400 Hz, leads DI, DII, DIII,
  AVR, AVL, AVF, V1–V6, the 7 s and 10 s exams zero padded to 4096 samples, centred), and no
  `exam_id`: exam i is row i;
- `attributes.csv`: `age,sex` (M/F), row i for exam i;
- `annotations/*.csv`: 827 rows of 0/1 in the columns `1dAVb,RBBB,LBBB,SB,AF,ST`:
  `gold_standard.csv` (the two cardiologists where they agree, else a third senior
  specialist), `cardiologist1.csv`, `cardiologist2.csv`, `cardiology_residents.csv`,
  `emergency_residents.csv`, `medical_students.csv` and `dnn.csv` (the paper's network at
  the threshold maximising F1 on this set).

Tracings are read as CODE-15%'s shards are (`ecgfm.data.code_hdf5`: padding found in the
tracing, values as millivolts). Record ids are the row numbers as strings, "0" … "826".
`write_code_test_set` writes a synthetic set in this exact layout.
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Sequence

import h5py
import numpy as np

from ecgfm.data.code_hdf5 import (
    CODE_LEADS,
    SAMPLING_RATE,
    open_shard,
    read_tracing,
    tracing_record,
)
from ecgfm.data.reader import Reader
from ecgfm.data.record import EcgFormatError, EcgRecord, OnError, SkipLog, handle_bad_record

CLASSES: tuple[str, ...] = ("1dAVb", "RBBB", "LBBB", "SB", "AF", "ST")
TRACINGS_FILE = "ecg_tracings.hdf5"
ATTRIBUTES_FILE = "attributes.csv"
ANNOTATIONS_DIR = "annotations"
GOLD_STANDARD = "gold_standard"
# Every annotator file the release ships, in the paper's order; the first two made the gold
# standard (with a third specialist), so they agree with it by construction.
ANNOTATORS: tuple[str, ...] = (
    "dnn", "cardiology_residents", "emergency_residents", "medical_students",
    "cardiologist1", "cardiologist2",
)  # fmt: skip
ANNOTATOR_NOTES: dict[str, str] = {
    "dnn": "Ribeiro et al.'s DNN, threshold maximising F1 on this test set (optimistic)",
    "cardiology_residents": "two 4th-year cardiology residents (half the exams each)",
    "emergency_residents": "two 3rd-year emergency residents (half the exams each)",
    "medical_students": "two 5th-year medical students (half the exams each)",
    "cardiologist1": "a certified cardiologist who made the gold standard (biased)",
    "cardiologist2": "a certified cardiologist who made the gold standard (biased)",
}


def read_annotation_file(path: str | pathlib.Path, num_exams: int | None = None) -> np.ndarray:
    """`[N, 6]` bool of one annotation CSV, columns in `CLASSES` order (found by header name)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise EcgFormatError(path, "annotation file is missing")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise EcgFormatError(path, "is empty")
    header = [name.strip() for name in rows[0]]
    missing = [name for name in CLASSES if name not in header]
    if missing:
        raise EcgFormatError(path, f"header {header} lacks the columns {missing}")
    columns = [header.index(name) for name in CLASSES]
    body = [row for row in rows[1:] if row]
    out = np.zeros((len(body), len(CLASSES)), dtype=bool)
    for n, row in enumerate(body, start=2):
        try:
            values = [int(float(row[c])) for c in columns]
        except (IndexError, ValueError):
            raise EcgFormatError(path, f"line {n}: expected 0/1 in {CLASSES}, got {row}") from None
        if any(v not in (0, 1) for v in values):
            raise EcgFormatError(path, f"line {n}: labels must be 0 or 1, got {row}")
        out[n - 2] = values
    if num_exams is not None and len(out) != num_exams:
        raise EcgFormatError(path, f"has {len(out)} rows, but the tracings hold {num_exams} exams")
    return out


class CodeTestSet(Reader):
    """The 827-exam annotated CODE test set folder (see the module docstring).

    `labels` of each record are the gold standard's classes (none when `annotations/
    gold_standard.csv` is absent, as for a set whose labels are withheld). `annotators`
    lists the annotator files present; `annotations(name)` reads one as `[N, 6]` bool.
    """

    def __init__(
        self,
        root: str | pathlib.Path,
        *,
        on_error: OnError = "raise",
        skip_log: SkipLog | None = None,
    ):
        super().__init__(root, on_error=on_error, skip_log=skip_log)
        self.tracings_path = self.root / TRACINGS_FILE
        with open_shard(self.tracings_path) as f:
            if "tracings" not in f or not isinstance(f["tracings"], h5py.Dataset):
                raise EcgFormatError(self.tracings_path, "has no 'tracings' dataset")
            shape = f["tracings"].shape
        if len(shape) != 3 or shape[2] != len(CODE_LEADS):
            raise EcgFormatError(
                self.tracings_path, f"tracings have shape {shape}, expected [exams, samples, 12]"
            )
        self.num_exams = int(shape[0])
        self._record_ids = tuple(str(i) for i in range(self.num_exams))
        self._age, self._sex = self._read_attributes(on_error)
        gold = self.root / ANNOTATIONS_DIR / f"{GOLD_STANDARD}.csv"
        self.gold_standard = read_annotation_file(gold, self.num_exams) if gold.is_file() else None
        self._file: h5py.File | None = None

    def _read_attributes(self, on_error: OnError) -> tuple[list, list]:
        path = self.root / ATTRIBUTES_FILE
        ages: list[float | None] = [None] * self.num_exams
        sexes: list[str | None] = [None] * self.num_exams
        if not path.is_file():
            return ages, sexes
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if len(rows) != self.num_exams:
            handle_bad_record(
                EcgFormatError(path, f"has {len(rows)} rows for {self.num_exams} exams"),
                on_error,
                self.skip_log,
            )
            return ages, sexes
        for i, row in enumerate(rows):
            try:
                ages[i] = float(row.get("age", "")) if row.get("age", "").strip() else None
            except ValueError:
                ages[i] = None
            sexes[i] = {"M": "M", "F": "F"}.get((row.get("sex") or "").strip().upper())
        return ages, sexes

    @property
    def record_ids(self) -> Sequence[str]:
        return self._record_ids

    @property
    def label_names(self) -> tuple[str, ...]:
        return CLASSES

    @property
    def annotators(self) -> tuple[str, ...]:
        """The annotator files present in `annotations/`, in the paper's order."""
        folder = self.root / ANNOTATIONS_DIR
        return tuple(name for name in ANNOTATORS if (folder / f"{name}.csv").is_file())

    def annotations(self, name: str) -> np.ndarray:
        """`[N, 6]` bool of `annotations/<name>.csv` (classes in `CLASSES` order)."""
        return read_annotation_file(self.root / ANNOTATIONS_DIR / f"{name}.csv", self.num_exams)

    def labels_by_record(self) -> dict[str, tuple[str, ...]]:
        """Record id → gold-standard classes (empty when there is no gold standard)."""
        if self.gold_standard is None:
            return {r: () for r in self._record_ids}
        return {
            r: tuple(c for c, on in zip(CLASSES, row, strict=True) if on)
            for r, row in zip(self._record_ids, self.gold_standard, strict=True)
        }

    def read(self, record_id: str) -> EcgRecord:
        """Exam `record_id` (its row) as `[T, 12]` mV at 400 Hz, padding removed."""
        try:
            row = int(record_id)
        except ValueError:
            raise KeyError(f"{record_id!r} is not a row of {self.tracings_path}") from None
        if not 0 <= row < self.num_exams:
            raise KeyError(f"row {row} is not in {self.tracings_path} ({self.num_exams} exams)")
        if self._file is None:
            self._file = open_shard(self.tracings_path)
        tracing_TC = read_tracing(self._file["tracings"], row, self.tracings_path)
        labels = ()
        if self.gold_standard is not None:
            row_labels = zip(CLASSES, self.gold_standard[row], strict=True)
            labels = tuple(sorted(c for c, on in row_labels if on))
        return tracing_record(
            tracing_TC,
            exam_id=row,
            lead_names=CODE_LEADS,
            path=self.tracings_path,
            row=row,
            fields={"labels": labels, "age": self._age[row], "sex": self._sex[row]},
        )

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_code_test_set(
    out_dir: str | pathlib.Path,
    *,
    num_exams: int = 827,
    seed: int = 0,
    annotators: Sequence[str] = ANNOTATORS,
    error_rates: dict[str, float] | None = None,
) -> pathlib.Path:
    """A synthetic CODE test set in the release's exact layout; returns `out_dir`.

    Signals follow their gold-standard labels (`ecgfm.data.synthetic`); each annotator file
    is the gold standard with each entry flipped with its error rate (default: 1 % for the
    cardiologists, 2 % for the DNN, 3–6 % for residents and students).
    """
    from ecgfm.data.synthetic.code import (
        LABEL_CONDITIONS,
        LONG_EXAM_S,
        SHORT_EXAM_S,
        _draw_labels,
        _padded,
    )
    from ecgfm.data.synthetic.generator import synthesize_ecg

    rates = {"cardiologist1": 0.01, "cardiologist2": 0.01, "dnn": 0.02,
             "cardiology_residents": 0.03, "emergency_residents": 0.05,
             "medical_students": 0.06} | (error_rates or {})  # fmt: skip
    out_dir = pathlib.Path(out_dir)
    (out_dir / ANNOTATIONS_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    gold = np.zeros((num_exams, len(CLASSES)), dtype=np.int64)
    tracings = np.zeros((num_exams, 4096, 12), np.float32)
    for i in range(num_exams):
        positives = _draw_labels(rng, CLASSES, LABEL_CONDITIONS)
        gold[i] = [name in positives for name in CLASSES]
        duration = SHORT_EXAM_S if rng.random() < 0.3 else LONG_EXAM_S
        signal_TC = synthesize_ecg(
            rng, {LABEL_CONDITIONS[n] for n in positives}, sampling_rate=SAMPLING_RATE,
            duration_s=duration,
        )  # fmt: skip
        tracings[i] = _padded(signal_TC)  # stored in the release's units
    with h5py.File(out_dir / TRACINGS_FILE, "w") as f:
        f.create_dataset("tracings", data=tracings)
    with (out_dir / ATTRIBUTES_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["age", "sex"])
        for _ in range(num_exams):
            writer.writerow([int(rng.integers(17, 95)), "M" if rng.random() < 0.4 else "F"])

    def write(name: str, table: np.ndarray) -> None:
        with (out_dir / ANNOTATIONS_DIR / f"{name}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CLASSES)
            writer.writerows(table.tolist())

    write(GOLD_STANDARD, gold)
    for name in annotators:
        flips = rng.random(gold.shape) < rates[name]
        write(name, np.where(flips, 1 - gold, gold))
    return out_dir
