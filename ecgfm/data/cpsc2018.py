"""CPSC 2018 in its original layout: `A*.mat` (MATLAB 5 struct `ECG`) plus `REFERENCE.csv`.

Each `A0001.mat` holds one struct `ECG` with fields `sex` (char, 'Male'/'Female'), `age`
(uint8 1×1) and `data` (double 12 × T), at 500 Hz, 6–60 s. `REFERENCE.csv` has the columns
Recording, First_label, Second_label, Third_label; labels are 1–9 (`CPSC_CLASSES`, index + 1),
the second and third may be blank.

What the real files show (A1980–A1984, copied into tests/data/real/cpsc2018):
- `data` is in millivolts: the 99th percentile of |amplitude| is 0.7–1.0 mV and the maximum
  1.2–2.1 mV, which is an ECG in mV (µV would be ~1000× larger); two of the five files are
  quantised in steps of exactly 0.001 (1 µV).
- Rows are I, II, III, aVR, aVL, aVF, V1–V6: III equals II − I to 1e-15 mV and aVR equals
  −(I + II)/2 to within 1.2 µV in every file.

What the real REFERENCE.csv shows (6,877 rows, CRLF line ends, not in id order: e.g. A1497's
row stands where A0202's would): row A0953 reads `6,6,`, PAC twice. The Challenge's count of
PAC in the CPSC data (616, `dx_mapping_scored.csv`) counts that record once, so a label
repeated within a row is read once and logged, not rejected.

The `.mat` files are parsed by `ecgfm.data.matfile`, not `scipy.io.loadmat`, whose compiled
MATLAB 5 reader crashed the process (SIGSEGV) on a 2-byte change to a record; the samples go
through the plausibility rule of `record.check_signal` (finite, within ±50 mV, not every lead
flat: an all-zero record is refused as CODE's all-zero exams are).
"""

from __future__ import annotations

import csv
import io
import logging
import pathlib
from collections.abc import Mapping

import numpy as np

from ecgfm.data.files import is_regular_file, read_bytes
from ecgfm.data.matfile import MatValue, read_mat
from ecgfm.data.reader import Reader
from ecgfm.data.record import (
    LEADS,
    EcgFormatError,
    EcgRecord,
    OnError,
    Sex,
    SkipLog,
    check_on_error,
    check_signal,
    handle_bad_record,
    parse_age,
    parse_sex,
)

log = logging.getLogger(__name__)

CPSC_CLASSES: tuple[str, ...] = (
    "Normal", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE",
)  # fmt: skip

# The SNOMED-CT codes the PhysioNet/CinC Challenge gave the nine classes (its dx_mapping tables,
# CPSC column). Normal is "sinus rhythm" and PVC is "ventricular ectopics" 164884008, not the
# Challenge's scored PVC code 427172004; STD and STE are in the unscored table.
CPSC_TO_SNOMED: Mapping[str, str] = {
    "Normal": "426783006",
    "AF": "164889003",
    "I-AVB": "270492004",
    "LBBB": "164909002",
    "RBBB": "59118001",
    "PAC": "284470004",
    "PVC": "164884008",
    "STD": "429622005",
    "STE": "164931005",
}

CPSC_SAMPLING_RATE = 500.0
# Row order of `ECG.data`, checked on the real files (see the module docstring).
CPSC_LEADS: tuple[str, ...] = LEADS
REFERENCE_HEADER: tuple[str, ...] = ("Recording", "First_label", "Second_label", "Third_label")

# REFERENCE.csv is one short row per record (6,877 rows, 100 KB in the real file).
MAX_REFERENCE_BYTES = 64 * 2**20
_NOT_UTF8 = "\ufffd"  # what decoding with errors="replace" puts for bytes that are not UTF-8


def load_mat(path: pathlib.Path) -> dict[str, MatValue]:
    """The variables of a MATLAB v4/v5 file (`ecgfm.data.matfile`, not scipy: see there why).

    A missing, unreadable or malformed file raises `EcgFormatError` naming it.
    """
    return read_mat(path, missing="signal file is missing")


def read_cpsc_mat(path: str | pathlib.Path, labels: tuple[str, ...] = ()) -> EcgRecord:
    """Reads one CPSC 2018 `A*.mat` into an `EcgRecord` (`[T, 12]` mV, 500 Hz).

    `labels` are CPSC class names (from `read_reference`); the record stores them sorted and
    keeps `REFERENCE.csv`'s order in `metadata["reference_labels"]`.
    """
    path = pathlib.Path(path)
    unknown = [name for name in labels if name not in CPSC_CLASSES]
    if unknown:
        raise EcgFormatError(path, f"labels {unknown} are not CPSC classes {CPSC_CLASSES}")
    ecg = load_mat(path).get("ECG")
    if not isinstance(ecg, dict) or not {"sex", "age", "data"} <= ecg.keys():
        raise EcgFormatError(path, "no 1×1 struct 'ECG' with fields sex, age, data")
    data_CT = ecg["data"]
    if not isinstance(data_CT, np.ndarray) or data_CT.dtype.kind not in "iuf":
        raise EcgFormatError(path, f"ECG.data is {_describe(data_CT)}, expected numbers")
    if data_CT.ndim != 2 or data_CT.shape[0] != len(CPSC_LEADS):
        raise EcgFormatError(path, f"ECG.data has shape {data_CT.shape}, expected [12, time]")
    return EcgRecord(
        signal=check_signal(data_CT.T, path),
        sampling_rate=CPSC_SAMPLING_RATE,
        record_id=path.stem,
        source="cpsc2018",
        labels=tuple(sorted(labels)),
        age=_read_age(ecg["age"], path),
        sex=_read_sex(ecg["sex"], path),
        metadata={"reference_labels": tuple(labels)},
    )


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {'×'.join(map(str, value.shape))}"
    return "text" if isinstance(value, str) else "a struct"


def _read_age(value: MatValue, path: pathlib.Path) -> float | None:
    """Age in years from `ECG.age` (1×1 in the real files); empty or NaN means unknown."""
    if isinstance(value, np.ndarray) and value.size == 0:
        return None
    if not isinstance(value, np.ndarray) or value.size != 1 or value.dtype.kind not in "iuf":
        raise EcgFormatError(path, f"ECG.age is {_describe(value)}, expected one number")
    return parse_age(float(value.flat[0]), path, "ECG.age")


def _read_sex(value: MatValue, path: pathlib.Path) -> Sex | None:
    """'M'/'F' from `ECG.sex` (MATLAB char 'Male'/'Female' in the real files); empty is None."""
    if isinstance(value, np.ndarray) and value.size == 0:
        return None
    if not isinstance(value, str):
        raise EcgFormatError(path, f"ECG.sex is {_describe(value)}, expected text")
    return parse_sex(value, path, "ECG.sex")


def read_reference(
    path: str | pathlib.Path, on_error: OnError = "raise", skip_log: SkipLog | None = None
) -> dict[str, tuple[str, ...]]:
    """Reads `REFERENCE.csv` into {record_id: CPSC class names in the row's order}.

    Every row needs a recording name and a first label; the second and third may be blank; a
    label repeated within a row is read once (the real file has one such row, see the module
    docstring). A wrong header or a missing file raises `EcgFormatError`. A bad row (a label
    outside 1–9, a recording listed again) raises naming the file and line, or with
    `on_error="skip"` is left out and listed in `skip_log`.
    """
    return _read_reference(pathlib.Path(path), check_on_error(on_error), skip_log)[0]


def _read_reference(
    path: pathlib.Path, on_error: OnError, skip_log: SkipLog | None
) -> tuple[dict[str, tuple[str, ...]], set[str]]:
    """`read_reference`, plus the recording names of the rows it skipped."""
    data = read_bytes(path, missing="reference file is missing", max_bytes=MAX_REFERENCE_BYTES)
    # Bytes that are not UTF-8 become U+FFFD here and make their row bad (below), so that one
    # garbled row is skipped like any other bad row rather than losing the whole reference.
    text = data.decode("utf-8-sig", errors="replace")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:  # e.g. a field over csv's size limit
        raise EcgFormatError(path, f"cannot be read as CSV: {err}") from None
    if not rows or tuple(c.strip() for c in rows[0]) != REFERENCE_HEADER:
        found = rows[0] if rows else "an empty file"
        raise EcgFormatError(path, f"line 1: header is {found}, expected {list(REFERENCE_HEADER)}")
    reference: dict[str, tuple[str, ...]] = {}
    skipped: set[str] = set()
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            record_id, labels = _reference_row(row, reference, f"line {line} {row}", path)
        except EcgFormatError as err:
            handle_bad_record(err, on_error, skip_log)
            skipped.add(row[0].strip())
            continue
        reference[record_id] = labels
    return reference, skipped - set(reference) - {""}


def _reference_row(
    row: list[str], reference: Mapping[str, object], where: str, path: pathlib.Path
) -> tuple[str, tuple[str, ...]]:
    if len(row) > len(REFERENCE_HEADER):
        raise EcgFormatError(path, f"{where}: more than {len(REFERENCE_HEADER)} columns")
    if any(_NOT_UTF8 in cell for cell in row):
        raise EcgFormatError(path, f"{where}: not UTF-8 text")
    record_id, *cells = (cell.strip() for cell in row)
    if not record_id:
        raise EcgFormatError(path, f"{where}: no recording name")
    if record_id in reference:
        raise EcgFormatError(path, f"{where}: recording {record_id} is listed twice")
    codes = [c for c in cells if c]
    if not codes or not cells[0]:
        raise EcgFormatError(path, f"{where}: no first label")
    if any(c not in {str(i) for i in range(1, 10)} for c in codes):
        raise EcgFormatError(path, f"{where}: labels must be integers 1–9")
    if len(set(codes)) != len(codes):
        log.warning("%s: %s: repeated label read once", path, where)
        codes = list(dict.fromkeys(codes))
    return record_id, tuple(CPSC_CLASSES[int(c) - 1] for c in codes)


class Cpsc2018(Reader):
    """CPSC 2018 in its original layout: `A*.mat` anywhere under `root`, labels from a reference.

    `reference` defaults to `root/REFERENCE.csv`; pass `None` for unlabelled records (e.g. the
    CPSC test set), which then carry no labels. `record_ids` is every id that either a `.mat`
    or a reference row names: an id with a reference row but no `.mat`, or a `.mat` with no
    reference row, is kept in the list so that reading it raises `EcgFormatError` (or, in
    `iter_records(on_error="skip")`, is counted in the `SkipLog`) rather than vanishing.

    With `on_error="skip"`, a bad reference row or a record name found twice is left out and
    listed in `skip_log` (a new `SkipLog` when None, also `iter_records`' default); the record
    of a skipped reference row is left out of `record_ids`. `label_names` are `CPSC_CLASSES`.
    """

    label_names = CPSC_CLASSES

    def __init__(
        self,
        root: str | pathlib.Path,
        reference: str | pathlib.Path | None = "REFERENCE.csv",
        *,
        on_error: OnError = "raise",
        skip_log: SkipLog | None = None,
    ):
        super().__init__(root, on_error=on_error, skip_log=skip_log)
        if not self.root.is_dir():
            raise EcgFormatError(self.root, "dataset folder is missing")
        self._mat_files: dict[str, pathlib.Path] = {}
        for mat in sorted(self.root.rglob("*.mat")):
            if mat.stem in self._mat_files:
                repeat = EcgFormatError(
                    mat, f"repeats record {mat.stem} of {self._mat_files[mat.stem]}"
                )
                handle_bad_record(repeat, on_error, self.skip_log)
                continue
            self._mat_files[mat.stem] = mat
        self.reference_path = None if reference is None else self.root / reference
        self._labels, skipped = None, set()
        if self.reference_path is not None:
            self._labels, skipped = _read_reference(self.reference_path, on_error, self.skip_log)
        self.record_ids: tuple[str, ...] = tuple(
            sorted((self._mat_files.keys() | (self._labels or {}).keys()) - skipped)
        )

    @property
    def labels_by_record(self) -> Mapping[str, tuple[str, ...]] | None:
        """Record id → class names from the reference (rows kept); None without a reference."""
        return self._labels

    def read(self, record_id: str) -> EcgRecord:
        """Reads one record with its labels; raises `EcgFormatError` if either is missing."""
        mat = self._mat_files.get(record_id)
        if mat is None:
            where = self.reference_path if self._labels is not None else self.root
            raise EcgFormatError(
                where, f"record {record_id} has no {record_id}.mat under {self.root}"
            )
        if self._labels is None:
            return read_cpsc_mat(mat)
        if record_id not in self._labels:
            raise EcgFormatError(mat, f"record has no row in {self.reference_path}")
        return read_cpsc_mat(mat, self._labels[record_id])


def read_cpsc_mat_with_reference(path: str | pathlib.Path) -> EcgRecord:
    """Reads one `A*.mat` with its labels from a `REFERENCE.csv` beside it or one folder up.

    The original download keeps the `.mat` files in `TrainingSet1..3/` folders with the
    reference next to them or above them. With no `REFERENCE.csv` found the record is returned
    unlabelled; a reference that lacks the record raises `EcgFormatError`.
    """
    path = pathlib.Path(path)
    for folder in (path.parent, path.parent.parent):
        reference_path = folder / "REFERENCE.csv"
        if is_regular_file(reference_path):
            reference = read_reference(reference_path)
            if path.stem not in reference:
                raise EcgFormatError(path, f"record has no row in {reference_path}")
            return read_cpsc_mat(path, reference[path.stem])
    return read_cpsc_mat(path)
