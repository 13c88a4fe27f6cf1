"""CODE-15% and CODE-II: `exams.csv` plus `exams_part{i}.hdf5` shards of 400 Hz tracings.

The layout (CODE-15%, Zenodo record 4916206, and the authors' repositories
antonior92/automatic-ecg-diagnosis, antonior92/ecg-age-prediction, antonior92/ecg-preprocessing):
- `exams.csv`: one row per exam with the columns exam_id, age, is_male, nn_predicted_age,
  1dAVb, RBBB, LBBB, SB, ST, AF, patient_id, death, timey, normal_ecg, trace_file. The six
  diagnoses are True/False; ST is sinus tachycardia. death and timey are filled only on a
  patient's first exam; trace_file names the shard that holds the exam.
- `exams_part{i}.hdf5`: datasets `tracings` (float32 `[N, 4096, 12]`) and `exam_id` (int64
  `[N]`, same order). Leads DI, DII, DIII, AVR, AVL, AVF, V1–V6 at 400 Hz. Each shard ends with a
  dummy all-zero row whose exam_id is 0; it is skipped and counted (`num_dummy_rows`).
- Exams shorter than 4096 samples are zero padded on both sides, centred: ecg-preprocessing
  puts `(4096 - T) // 2` zeros before and the rest after (648 on each side of a 7 s exam of
  2800 samples, 48 around a 10 s exam of 4000). Audits of the real release also report exams
  of 2934 samples and exams that fill all 4096, so no length is assumed: the padding is found
  in the tracing itself (`_unpadded_bounds`).

Units. `tracings` are read as millivolts (`MV_PER_STORED_UNIT`). The authors' READMEs say "at
the scale 1e-4V: so if the signal is in V it should be multiplied by 1000", which contradicts
itself (1e-4 V would be ×10,000 from volts; ×1000 from volts is mV) and the Zenodo record names
no unit. The PhysioNet/CinC Challenge 2025's `prepare_code15_data.py` writes the tracings to
WFDB unchanged with units "mV" (gain 1000 per mV), and measurements of the real arrays read as
mV give a median lead-II R wave of about 1.75 mV, which is physiological (0.175 mV under the
1e-4 V reading is not). Caveat: ecg-preprocessing's README says the HDF5 files were written with
`--scale 2`, and one audit found the amplitudes 1.4–2.3× those of other mV datasets, so the true
factor may be 0.5; the authors have not confirmed it, and we follow the Challenge's reading.

CODE-II (66 diagnostic classes whose names are not public yet) is assumed to share this layout,
with its label columns in `exams.csv`. Label names are never hard-coded: every header column
that is not in `METADATA_COLUMNS` is a label (or pass `label_columns=`), kept exactly as the
header spells it.

Fewer leads: a shard whose `tracings` hold 8 leads is read as the 8 independent leads in
ecg-preprocessing's `reduced_leads` order (DI, DII, V1–V6, what its `generate_h5.py` writes
without `--use_all_leads`; TNMG's own JSON carries the same eight); III, aVR, aVL and aVF are
derived and named in `EcgRecord.derived_leads`. Pass `lead_names=` for any other order.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import pathlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import h5py
import numpy as np

from ecgfm.data.record import (
    EcgFormatError,
    EcgRecord,
    OnError,
    SkipLog,
    check_signal,
    handle_bad_record,
    to_canonical_leads,
)

log = logging.getLogger(__name__)

SAMPLING_RATE = 400.0
CSV_NAME = "exams.csv"
SHARD_PATTERN = re.compile(r"exams_part(\d+)\.hdf5")
# Stored value × this = millivolts; the evidence is in the module docstring.
MV_PER_STORED_UNIT = 1.0
DUMMY_EXAM_ID = 0

# Lead order of `tracings`, as the authors name them (`to_canonical_leads` knows DI/DII/DIII).
CODE_LEADS: tuple[str, ...] = (
    "DI", "DII", "DIII", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6",
)  # fmt: skip
CODE_REDUCED_LEADS: tuple[str, ...] = ("DI", "DII", "V1", "V2", "V3", "V4", "V5", "V6")

# The documented non-label columns of CODE-15%'s exams.csv. Any other column is a label.
METADATA_COLUMNS: frozenset[str] = frozenset(
    {
        "exam_id", "age", "is_male", "nn_predicted_age", "patient_id", "death", "timey",
        "normal_ecg", "trace_file",
    }
)  # fmt: skip
# Metadata columns that become EcgRecord fields rather than `metadata` entries.
_RECORD_COLUMNS = frozenset({"exam_id", "age", "is_male", "patient_id"})

_BOOLEAN_TEXT = {"0": False, "1": True, "0.0": False, "1.0": True, "false": False, "true": True}
_READ_BLOCK_ROWS = 128  # ~25 MB of float32 [128, 4096, 12] per read when iterating a shard


def _parse_bool(text: str) -> bool | None:
    """True/False/1/0 as booleans, an empty field as None; raises ValueError otherwise."""
    text = text.strip()
    if not text:
        return None
    value = _BOOLEAN_TEXT.get(text.lower())
    if value is None:
        raise ValueError(f"{text!r} is not 0/1/True/False")
    return value


def _parse_float(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    value = float(text)
    return None if math.isnan(value) else value


def _parse_text(text: str) -> str | None:
    return text.strip() or None


_METADATA_PARSERS = {
    "nn_predicted_age": _parse_float,
    "timey": _parse_float,
    "death": _parse_bool,
    "normal_ecg": _parse_bool,
}


@dataclasses.dataclass
class _ExamTable:
    """The rows of `exams.csv`, column by column (cheap to pickle into data-loader workers)."""

    label_names: tuple[str, ...]
    exam_id: np.ndarray  # [N] int64
    labels: np.ndarray  # [N, K] bool
    patient_id: np.ndarray  # [N] object: str or None
    age: np.ndarray  # [N] float64, NaN when unknown
    is_male: np.ndarray  # [N] int8: 1, 0, or -1 when unknown
    metadata: dict[str, np.ndarray]  # column -> [N] object
    line: np.ndarray  # [N] int64, line of the row in exams.csv

    def take(self, keep: np.ndarray) -> _ExamTable:
        return _ExamTable(
            label_names=self.label_names,
            exam_id=self.exam_id[keep],
            labels=self.labels[keep],
            patient_id=self.patient_id[keep],
            age=self.age[keep],
            is_male=self.is_male[keep],
            metadata={name: column[keep] for name, column in self.metadata.items()},
            line=self.line[keep],
        )

    def record_fields(self, i: int) -> dict[str, Any]:
        """The `EcgRecord` fields that come from row `i` (labels sorted, as records keep them)."""
        age = float(self.age[i])
        positive = [n for n, on in zip(self.label_names, self.labels[i], strict=True) if on]
        return {
            "labels": tuple(sorted(positive)),
            "patient_id": self.patient_id[i],
            "age": None if math.isnan(age) else age,
            "sex": {1: "M", 0: "F"}.get(int(self.is_male[i])),
            "metadata": {name: column[i] for name, column in self.metadata.items()},
        }


def _label_columns(
    header: list[str], label_columns: Sequence[str] | None, csv_path: pathlib.Path
) -> tuple[str, ...]:
    """The label columns: `label_columns` if given, else every non-metadata header column."""
    if len(set(header)) != len(header):
        repeated = sorted({name for name in header if header.count(name) > 1})
        raise EcgFormatError(csv_path, f"header repeats columns {repeated}")
    if "exam_id" not in header:
        raise EcgFormatError(csv_path, f"header has no exam_id column: {header}")
    if label_columns is None:
        return tuple(name for name in header if name not in METADATA_COLUMNS)
    missing = [name for name in label_columns if name not in header]
    if missing:
        raise EcgFormatError(csv_path, f"label columns {missing} are not in the header")
    if "exam_id" in label_columns:
        raise EcgFormatError(csv_path, "exam_id cannot be a label column")
    return tuple(label_columns)


def _read_exam_table(
    csv_path: pathlib.Path,
    label_columns: Sequence[str] | None,
    on_error: OnError,
    skip_log: SkipLog | None,
    only_exam_id: int | None = None,
) -> _ExamTable:
    """Reads and checks `exams.csv`; with `only_exam_id`, just that exam's row (or none)."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = [name.strip() for name in next(reader, [])]
            if not header:
                raise EcgFormatError(csv_path, "is empty (no header)")
            label_names = _label_columns(header, label_columns, csv_path)
            columns = _TableBuilder(header, label_names, csv_path)
            id_column = header.index("exam_id")
            for fields in reader:
                if only_exam_id is not None and not _holds_exam(fields, id_column, only_exam_id):
                    continue
                try:
                    columns.add_row(fields, reader.line_num)
                except EcgFormatError as err:
                    handle_bad_record(err, on_error, skip_log)
                if only_exam_id is not None and columns.num_rows:
                    break
    except FileNotFoundError as err:
        raise EcgFormatError(csv_path, "is missing") from err
    except (csv.Error, UnicodeDecodeError) as err:
        raise EcgFormatError(csv_path, f"cannot be parsed as CSV: {err}") from err
    table = columns.build()
    order = np.argsort(table.exam_id, kind="stable")
    repeat = np.flatnonzero(table.exam_id[order][1:] == table.exam_id[order][:-1])
    keep = np.ones(len(order), dtype=bool)
    for first, again in sorted(
        zip(order[repeat], order[repeat + 1], strict=True), key=lambda p: p[1]
    ):
        line, first_line = int(table.line[again]), int(table.line[first])
        problem = f"line {line}: exam_id {table.exam_id[again]} repeats line {first_line}"
        handle_bad_record(EcgFormatError(csv_path, problem), on_error, skip_log)
        keep[again] = False
    return table.take(keep)


def _holds_exam(fields: list[str], id_column: int, exam_id: int) -> bool:
    """Whether a CSV row is `exam_id`'s, without checking the rest of the row."""
    try:
        return int(fields[id_column]) == exam_id
    except (IndexError, ValueError):
        return False


class _TableBuilder:
    """Checks `exams.csv` rows one by one and collects them into an `_ExamTable`."""

    def __init__(self, header: list[str], label_names: tuple[str, ...], csv_path: pathlib.Path):
        self.header = header
        self.label_names = label_names
        self.csv_path = csv_path
        index = {name: i for i, name in enumerate(header)}
        self.index = index
        self.label_index = [index[name] for name in label_names]
        self.metadata_names = [
            name for name in header if name not in label_names and name not in _RECORD_COLUMNS
        ]
        self.exam_id: list[int] = []
        self.labels = bytearray()
        self.patient_id: list[str | None] = []
        self.age: list[float] = []
        self.is_male: list[int] = []
        self.metadata: dict[str, list[Any]] = {name: [] for name in self.metadata_names}
        self.line: list[int] = []

    @property
    def num_rows(self) -> int:
        return len(self.exam_id)

    def _bad(self, line: int, problem: str) -> EcgFormatError:
        return EcgFormatError(self.csv_path, f"line {line}: {problem}")

    def _cell(self, fields: list[str], line: int, name: str, parse):
        if name not in self.index:
            return None
        text = fields[self.index[name]]
        try:
            return parse(text)
        except ValueError as err:
            raise self._bad(line, f"column {name!r} has {text!r}: {err}") from err

    def add_row(self, fields: list[str], line: int) -> None:
        if len(fields) != len(self.header):
            raise self._bad(line, f"has {len(fields)} fields, the header has {len(self.header)}")
        text = fields[self.index["exam_id"]].strip()
        try:
            exam_id = int(text)
        except ValueError:
            raise self._bad(line, f"exam_id {text!r} is not an integer") from None
        if exam_id <= DUMMY_EXAM_ID:
            raise self._bad(line, f"exam_id {exam_id} is not a positive integer")
        labels = []
        for name, i in zip(self.label_names, self.label_index, strict=True):
            value = _BOOLEAN_TEXT.get(fields[i].strip().lower())
            if value is None:
                raise self._bad(
                    line, f"label column {name!r} has {fields[i]!r}; expected 0/1/True/False"
                )
            labels.append(value)
        age = self._cell(fields, line, "age", _parse_float)
        is_male = self._cell(fields, line, "is_male", _parse_bool)
        patient_id = self._cell(fields, line, "patient_id", _parse_text)
        metadata = {
            name: self._cell(fields, line, name, _METADATA_PARSERS.get(name, _parse_text))
            for name in self.metadata_names
        }
        # Appended only once the whole row has passed, so a skipped row leaves no trace.
        self.exam_id.append(exam_id)
        self.labels.extend(labels)
        self.patient_id.append(patient_id)
        self.age.append(math.nan if age is None else age)
        self.is_male.append(-1 if is_male is None else int(is_male))
        for name, value in metadata.items():
            self.metadata[name].append(value)
        self.line.append(line)

    def build(self) -> _ExamTable:
        def objects(values: list[Any]) -> np.ndarray:
            array = np.empty(len(values), dtype=object)
            array[:] = values
            return array

        return _ExamTable(
            label_names=self.label_names,
            exam_id=np.asarray(self.exam_id, dtype=np.int64),
            labels=np.frombuffer(bytes(self.labels), dtype=bool).reshape(
                self.num_rows, len(self.label_names)
            ),
            patient_id=objects(self.patient_id),
            age=np.asarray(self.age, dtype=np.float64),
            is_male=np.asarray(self.is_male, dtype=np.int8),
            metadata={name: objects(values) for name, values in self.metadata.items()},
            line=np.asarray(self.line, dtype=np.int64),
        )


def _shard_lead_names(num_leads: int, lead_names: Sequence[str] | None, path: object):
    """The lead names of a shard's `tracings` columns, or raises for a lead count we can't name."""
    if lead_names is not None:
        if num_leads != len(lead_names):
            raise EcgFormatError(
                path, f"tracings have {num_leads} leads, expected {len(lead_names)}"
            )
        return tuple(lead_names)
    if num_leads == len(CODE_LEADS):
        return CODE_LEADS
    if num_leads == len(CODE_REDUCED_LEADS):
        return CODE_REDUCED_LEADS
    raise EcgFormatError(
        path, f"tracings have {num_leads} leads, expected 12 (or the 8 independent leads)"
    )


def _open_shard(path: pathlib.Path) -> h5py.File:
    if not path.is_file():
        raise EcgFormatError(path, "shard is missing")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise EcgFormatError(path, f"cannot be read as HDF5 (truncated?): {err}") from err


def _shard_contents(
    f: h5py.File, path: pathlib.Path, lead_names: Sequence[str] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Checks a shard's datasets; returns its `[N]` exam ids and the names of its leads."""
    for name in ("tracings", "exam_id"):
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise EcgFormatError(path, f"has no {name!r} dataset (has {sorted(f.keys())})")
    tracings, exam_id = f["tracings"], f["exam_id"]
    if tracings.ndim != 3:
        raise EcgFormatError(
            path, f"tracings have shape {tracings.shape}, expected [exams, samples, leads]"
        )
    names = _shard_lead_names(tracings.shape[2], lead_names, path)
    if exam_id.ndim != 1 or exam_id.shape[0] != tracings.shape[0]:
        raise EcgFormatError(
            path,
            f"exam_id has shape {exam_id.shape} but tracings hold {tracings.shape[0]} exams",
        )
    if not np.issubdtype(exam_id.dtype, np.integer):
        raise EcgFormatError(path, f"exam_id has dtype {exam_id.dtype}, expected integers")
    try:
        return np.asarray(exam_id[:], dtype=np.int64), names
    except OSError as err:
        raise EcgFormatError(path, f"exam_id cannot be read (truncated?): {err}") from err


def _unpadded_bounds(tracing_TC: np.ndarray) -> tuple[int, int]:
    """`start, stop` of the real samples inside a centred zero padding of a `[T, C]` tracing.

    A sample counts as padding only where all leads are exactly zero. The padding is symmetric
    (`(T - n) // 2` zeros before an exam of n samples, the rest after), so the shorter of the two
    zero runs is the padding on both sides and any surplus on the other side is the exam's own
    zeros, which are kept. An exam of odd length keeps one zero sample of padding at its end
    (all the lengths known in the releases, 2800, 2934, 4000 and 4096, are even): real samples
    are never cut. Raises ValueError for an all-zero tracing.
    """
    nonzero = np.flatnonzero(np.any(tracing_TC != 0, axis=1))
    if nonzero.size == 0:
        raise ValueError("tracing is all zeros (no signal)")
    num_samples = tracing_TC.shape[0]
    pad = min(int(nonzero[0]), num_samples - 1 - int(nonzero[-1]))
    return pad, num_samples - pad


def _tracing_record(
    tracing_TC: np.ndarray,
    *,
    exam_id: int,
    lead_names: Sequence[str],
    path: pathlib.Path,
    row: int,
    fields: dict[str, Any],
) -> EcgRecord:
    """Builds the `EcgRecord` of one stored `[T, C]` tracing (padding removed, in mV)."""
    where = f"exam {exam_id} (row {row})"
    try:
        start, stop = _unpadded_bounds(tracing_TC)
    except ValueError as err:
        raise EcgFormatError(path, f"{where}: {err}") from None
    try:
        signal_TC, derived = to_canonical_leads(
            tracing_TC[start:stop] * np.float32(MV_PER_STORED_UNIT), lead_names, path
        )
        signal_TC = check_signal(signal_TC, path)
    except EcgFormatError as err:
        raise EcgFormatError(path, f"{where}: {err.problem}") from None
    metadata = {
        **fields.pop("metadata", {}),
        "shard": path.name,
        "row": row,
        "num_samples_padded": int(tracing_TC.shape[0]),
        "padding_start": start,
    }
    return EcgRecord(
        signal=signal_TC,
        sampling_rate=SAMPLING_RATE,
        record_id=str(exam_id),
        source="code",
        derived_leads=derived,
        metadata=metadata,
        **fields,
    )


def _read_tracing(dataset: h5py.Dataset, rows: slice | int, path: pathlib.Path) -> np.ndarray:
    try:
        return np.asarray(dataset[rows], dtype=np.float32)
    except OSError as err:
        raise EcgFormatError(path, f"tracings cannot be read (truncated?): {err}") from err


def _index_shard(
    path: pathlib.Path, lead_names: Sequence[str] | None
) -> tuple[np.ndarray, tuple[str, ...], int]:
    """Checks one shard; returns its `[N]` exam ids, its lead names and its dummy-row count."""
    with _open_shard(path) as f:
        exam_ids, names = _shard_contents(f, path, lead_names)
        dummy_rows = np.flatnonzero(exam_ids == DUMMY_EXAM_ID)
        for row in dummy_rows.tolist():
            if np.any(_read_tracing(f["tracings"], row, path) != 0):
                raise EcgFormatError(path, f"row {row} has exam_id 0 but a non-zero tracing")
    return exam_ids, names, int(dummy_rows.size)


def _locate(
    exam_ids: np.ndarray, shard_exam_ids: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shard and row of each of `exam_ids` (-1 where no shard has it), and ids stored twice."""
    stored = np.concatenate([np.zeros(0, np.int64), *shard_exam_ids])
    shard_of = np.repeat(np.arange(len(shard_exam_ids)), [len(ids) for ids in shard_exam_ids])
    row_of = np.concatenate(
        [np.zeros(0, np.int64), *(np.arange(len(ids)) for ids in shard_exam_ids)]
    )
    real = np.flatnonzero(stored != DUMMY_EXAM_ID)
    order = real[np.argsort(stored[real], kind="stable")]
    sorted_ids = stored[order]
    repeated = np.unique(sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]])
    shard = np.full(len(exam_ids), -1, dtype=np.int32)
    row = np.full(len(exam_ids), -1, dtype=np.int64)
    if order.size:
        at = np.minimum(np.searchsorted(sorted_ids, exam_ids), order.size - 1)
        hit = sorted_ids[at] == exam_ids
        shard[hit], row[hit] = shard_of[order[at[hit]]], row_of[order[at[hit]]]
    return shard, row, repeated


def _shard_order(path: pathlib.Path) -> tuple[int, str]:
    match = SHARD_PATTERN.fullmatch(path.name)
    return (int(match.group(1)) if match else -1, path.name)


class CodeDataset:
    """A CODE-15% / CODE-II folder: `exams.csv` and its `exams_part{i}.hdf5` shards.

    Opening reads `exams.csv` and each shard's `exam_id` (not the tracings). Bad input raises
    `EcgFormatError` naming the file, or with `on_error="skip"` is left out and listed in
    `skip_log`: a bad CSV row, a missing/truncated shard or one with the wrong lead count, a
    shard whose `exam_id` and `tracings` differ in length, an exam listed in the CSV but in no
    shard. A tracing that is all zeros or holds NaN/Inf is found when it is read.

    Picklable: the table travels, open HDF5 files do not (workers reopen them lazily).
    """

    def __init__(
        self,
        root: str | pathlib.Path,
        *,
        label_columns: Sequence[str] | None = None,
        lead_names: Sequence[str] | None = None,
        on_error: OnError = "raise",
        skip_log: SkipLog | None = None,
    ):
        self.root = pathlib.Path(root)
        self.csv_path = self.root / CSV_NAME
        self.skip_log = SkipLog() if skip_log is None else skip_log
        self._files: dict[int, h5py.File] = {}
        table = _read_exam_table(self.csv_path, label_columns, on_error, self.skip_log)

        trace_files = table.metadata.get("trace_file")
        shard_paths = set(self.root.glob("exams_part*.hdf5"))
        if trace_files is not None:
            shard_paths |= {self.root / name for name in set(trace_files.tolist()) - {None}}
        self.shard_paths: list[pathlib.Path] = []
        self._lead_names: list[tuple[str, ...]] = []
        self.num_dummy_rows = 0
        bad_shards: dict[str, EcgFormatError] = {}
        shard_exam_ids: list[np.ndarray] = []
        for path in sorted(shard_paths, key=_shard_order):
            try:
                exam_ids, names, num_dummy = _index_shard(path, lead_names)
            except EcgFormatError as err:
                if on_error == "raise":
                    raise
                log.warning("%s", err)
                bad_shards[path.name] = err
                continue
            self.num_dummy_rows += num_dummy
            self.shard_paths.append(path)
            self._lead_names.append(names)
            shard_exam_ids.append(exam_ids)
        if not shard_paths:
            raise EcgFormatError(self.root, "has no exams_part*.hdf5 shards")

        shard_index, row_index, repeated = _locate(table.exam_id, shard_exam_ids)
        keep = (shard_index >= 0) & ~np.isin(table.exam_id, repeated)
        for i in np.flatnonzero(~keep).tolist():
            exam_id, line = int(table.exam_id[i]), int(table.line[i])
            if shard_index[i] >= 0:
                err = EcgFormatError(
                    self.shard_paths[shard_index[i]],
                    f"exam {exam_id} (line {line} of {CSV_NAME}) is stored in several rows",
                )
            else:
                trace_file = None if trace_files is None else trace_files[i]
                err = self._unlocated(exam_id, line, trace_file, bad_shards)
            handle_bad_record(err, on_error, self.skip_log)
        stored = np.unique(np.concatenate([np.zeros(0, np.int64), *shard_exam_ids]))
        unlisted = np.setdiff1d(stored[stored != DUMMY_EXAM_ID], table.exam_id)
        if unlisted.size:
            log.warning(
                "%d exams in the shards of %s are not in %s and are left out (e.g. exam %d)",
                unlisted.size, self.root, CSV_NAME, unlisted[0],
            )  # fmt: skip
        self._table = table.take(keep)
        self._shard_index = shard_index[keep]
        self._row_index = row_index[keep]
        self._sorted = np.argsort(self._table.exam_id, kind="stable")
        self._sorted_ids = self._table.exam_id[self._sorted]

    def _unlocated(
        self,
        exam_id: int,
        line: int,
        trace_file: str | None,
        bad_shards: dict[str, EcgFormatError],
    ) -> EcgFormatError:
        """The error for an exam of `exams.csv` that no readable shard holds."""
        listed = f"exam {exam_id} (line {line} of {CSV_NAME})"
        if trace_file in bad_shards:
            err = bad_shards[trace_file]
            return EcgFormatError(err.path, f"{listed} is lost: {err.problem}")
        if trace_file is not None:
            return EcgFormatError(
                self.root / trace_file, f"{listed} is not in its trace_file {trace_file}"
            )
        return EcgFormatError(self.csv_path, f"{listed} is in no shard")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}

    def __len__(self) -> int:
        return len(self._table.exam_id)

    def __iter__(self) -> Iterator[EcgRecord]:
        return self.iter_records()

    @property
    def label_names(self) -> tuple[str, ...]:
        """The label columns of `exams.csv`, spelled and ordered as in its header."""
        return self._table.label_names

    @property
    def exam_ids(self) -> np.ndarray:
        """`[N]` int64 ids of the exams in both `exams.csv` and a shard, in CSV order."""
        ids = self._table.exam_id.view()
        ids.flags.writeable = False
        return ids

    def _position(self, exam_id: int) -> int:
        i = int(np.searchsorted(self._sorted_ids, exam_id))
        if i == len(self._sorted_ids) or self._sorted_ids[i] != exam_id:
            raise KeyError(f"exam {exam_id} is not in {self.root}")
        return int(self._sorted[i])

    def patient_id(self, exam_id: int) -> str | None:
        """The patient id of an exam, as `exams.csv` spells it."""
        return self._table.patient_id[self._position(exam_id)]

    def _file(self, shard: int) -> h5py.File:
        if shard not in self._files:
            self._files[shard] = _open_shard(self.shard_paths[shard])
        return self._files[shard]

    def _record(self, i: int, tracing_TC: np.ndarray) -> EcgRecord:
        shard = int(self._shard_index[i])
        return _tracing_record(
            tracing_TC,
            exam_id=int(self._table.exam_id[i]),
            lead_names=self._lead_names[shard],
            path=self.shard_paths[shard],
            row=int(self._row_index[i]),
            fields=self._table.record_fields(i),
        )

    def read(self, exam_id: int) -> EcgRecord:
        """One exam as an `EcgRecord` (`[T, 12]` mV at 400 Hz, padding removed)."""
        i = self._position(exam_id)
        shard = int(self._shard_index[i])
        tracings = self._file(shard)["tracings"]
        row = int(self._row_index[i])
        return self._record(i, _read_tracing(tracings, row, self.shard_paths[shard]))

    def iter_records(
        self, on_error: OnError = "raise", skip_log: SkipLog | None = None
    ) -> Iterator[EcgRecord]:
        """Every exam, shard by shard in row order, reading blocks of consecutive rows.

        With `on_error="skip"`, a tracing that cannot be read or is all zeros or non-finite is
        left out and listed in `skip_log` (by default this dataset's `skip_log`).
        """
        skip_log = self.skip_log if skip_log is None else skip_log
        for shard in range(len(self.shard_paths)):
            (positions,) = np.nonzero(self._shard_index == shard)
            positions = positions[np.argsort(self._row_index[positions], kind="stable")]
            rows = self._row_index[positions]
            path = self.shard_paths[shard]
            tracings = self._file(shard)["tracings"]
            k = 0
            while k < len(rows):
                first = int(rows[k])
                end = int(np.searchsorted(rows, first + _READ_BLOCK_ROWS))
                try:
                    block = _read_tracing(tracings, slice(first, int(rows[end - 1]) + 1), path)
                except EcgFormatError as err:
                    for j in range(k, end):
                        exam_id = int(self._table.exam_id[positions[j]])
                        lost = EcgFormatError(
                            path, f"exam {exam_id} (row {rows[j]}): {err.problem}"
                        )
                        handle_bad_record(lost, on_error, skip_log)
                    k = end
                    continue
                for j in range(k, end):
                    try:
                        yield self._record(int(positions[j]), block[int(rows[j]) - first])
                    except EcgFormatError as err:
                        handle_bad_record(err, on_error, skip_log)
                k = end

    def close(self) -> None:
        """Closes the shards this process opened (they reopen on the next read)."""
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> CodeDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_code_exam(
    hdf5_path: str | pathlib.Path,
    exam_id: int,
    *,
    label_columns: Sequence[str] | None = None,
    lead_names: Sequence[str] | None = None,
) -> EcgRecord:
    """One exam of a CODE shard; labels, patient, age and sex from an `exams.csv` beside it.

    Without an `exams.csv` (or when it does not list the exam) the record has no labels and no
    patient; `metadata["exams_csv"]` names the CSV the fields came from, or is None.
    """
    path = pathlib.Path(hdf5_path)
    with _open_shard(path) as f:
        shard_exam_ids, names = _shard_contents(f, path, lead_names)
        if exam_id == DUMMY_EXAM_ID:
            raise EcgFormatError(path, "exam_id 0 marks the dummy padding row, not an exam")
        (rows,) = np.nonzero(shard_exam_ids == exam_id)
        if rows.size != 1:
            problem = "has no exam" if rows.size == 0 else "has several rows for exam"
            raise EcgFormatError(path, f"{problem} {exam_id}")
        row = int(rows[0])
        tracing_TC = _read_tracing(f["tracings"], row, path)
    csv_path = path.parent / CSV_NAME
    fields: dict[str, Any] = {"metadata": {"exams_csv": None}}
    if csv_path.is_file():
        table = _read_exam_table(csv_path, label_columns, "raise", None, only_exam_id=exam_id)
        if len(table.exam_id):
            fields = table.record_fields(0)
            fields["metadata"]["exams_csv"] = str(csv_path)
    return _tracing_record(
        tracing_TC, exam_id=exam_id, lead_names=names, path=path, row=row, fields=fields
    )
