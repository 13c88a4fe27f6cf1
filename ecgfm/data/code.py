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
header spells it. A column whose first rows are mostly not 0/1/True/False (a date, a site) is
not taken for a label: opening raises, naming it, rather than failing every row. A metadata
column holding 0/1 (e.g. `sex`) cannot be told from a label: pass `label_columns=` then.

Fewer leads: a shard whose `tracings` hold 8 leads is read as the 8 independent leads in
ecg-preprocessing's `reduced_leads` order (`INDEPENDENT_LEADS`: DI, DII, V1–V6, what its
`generate_h5.py` writes without `--use_all_leads`; TNMG's own JSON carries the same eight); III,
aVR, aVL and aVF are derived and named in `EcgRecord.derived_leads`. Pass `lead_names=` for any
other order.

Scale: CODE-II's `exams.csv` has ~2.7 M rows. It is read once with pandas and checked column by
column, and kept as compact arrays (labels bit-packed), so that `CodeDataset` pickles into
data-loader workers as a few arrays instead of re-reading the CSV and the shards.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import h5py
import numpy as np
import pandas as pd

from ecgfm.data.reader import Reader
from ecgfm.data.record import (
    INDEPENDENT_LEADS,
    MAX_AGE_YEARS,
    EcgFormatError,
    EcgRecord,
    OnError,
    SkipLog,
    check_on_error,
    check_signal,
    handle_bad_record,
    to_canonical_leads,
)
from ecgfm.data.tables import read_csv_table

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

# The documented non-label columns of CODE-15%'s exams.csv. Any other column is a label.
METADATA_COLUMNS: frozenset[str] = frozenset(
    {
        "exam_id", "age", "is_male", "nn_predicted_age", "patient_id", "death", "timey",
        "normal_ecg", "trace_file",
    }
)  # fmt: skip
# Metadata columns that become EcgRecord fields rather than `metadata` entries.
_RECORD_COLUMNS = frozenset({"exam_id", "age", "is_male", "patient_id"})
_NUMBER_COLUMNS = frozenset({"nn_predicted_age", "timey"})
_BOOLEAN_COLUMNS = frozenset({"death", "normal_ecg"})

_BOOLEAN_TEXT = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}
# A label column whose first rows are mostly not 0/1 is a metadata column, not a label.
_LABEL_CHECK_ROWS = 1000
_READ_BLOCK_ROWS = 128  # ~25 MB of float32 [128, 4096, 12] per read when iterating a shard


@dataclasses.dataclass
class _TextColumn:
    """A text column as `[N]` int32 codes into its distinct values (-1 where empty)."""

    codes: np.ndarray
    values: np.ndarray

    @classmethod
    def from_series(cls, column: pd.Series) -> _TextColumn:
        if column.dtype.kind == "f" and (column.dropna() % 1 == 0).all():
            column = column.astype("Int64")  # integer ids that pandas read as float (a blank)
        codes, values = pd.factorize(column)
        if values.dtype.kind in "iu":
            return cls(codes.astype(np.int32), values.to_numpy(np.int64))
        return cls(codes.astype(np.int32), values.astype(str).to_numpy(dtype=str))

    def __getitem__(self, i: int) -> str | None:
        code = int(self.codes[i])
        return None if code < 0 else str(self.values[code])

    def take(self, keep: np.ndarray) -> _TextColumn:
        return _TextColumn(self.codes[keep], self.values)


# A metadata column: float64 (NaN unknown), int8 booleans (-1 unknown) or text.
_Column = np.ndarray | _TextColumn


def _cell(column: _Column, i: int) -> Any:
    if isinstance(column, _TextColumn):
        return column[i]
    if column.dtype == np.int8:
        return None if column[i] < 0 else bool(column[i])
    value = float(column[i])
    return None if np.isnan(value) else value


@dataclasses.dataclass
class _ExamTable:
    """The checked rows of `exams.csv` as compact arrays (cheap to pickle into workers)."""

    label_names: tuple[str, ...]
    exam_id: np.ndarray  # [N] int64
    labels_packed: np.ndarray  # [N, ceil(K / 8)] uint8: np.packbits of the [N, K] booleans
    age: np.ndarray  # [N] float64, NaN when unknown
    is_male: np.ndarray  # [N] int8: 1, 0, or -1 when unknown
    patient_id: _TextColumn
    metadata: dict[str, _Column]

    def take(self, keep: np.ndarray) -> _ExamTable:
        return _ExamTable(
            label_names=self.label_names,
            exam_id=self.exam_id[keep],
            labels_packed=self.labels_packed[keep],
            age=self.age[keep],
            is_male=self.is_male[keep],
            patient_id=self.patient_id.take(keep),
            metadata={name: column[keep] if isinstance(column, np.ndarray) else column.take(keep)
                      for name, column in self.metadata.items()},
        )  # fmt: skip

    def record_fields(self, i: int) -> dict[str, Any]:
        """The `EcgRecord` fields that come from row `i` (labels sorted, as records keep them)."""
        on = np.unpackbits(self.labels_packed[i], count=len(self.label_names))
        age = float(self.age[i])
        return {
            "labels": tuple(sorted(n for n, bit in zip(self.label_names, on, strict=True) if bit)),
            "patient_id": self.patient_id[i],
            "age": None if np.isnan(age) else age,
            "sex": {1: "M", 0: "F"}.get(int(self.is_male[i])),
            "metadata": {name: _cell(column, i) for name, column in self.metadata.items()},
        }


def _label_columns(
    header: list[str], label_columns: Sequence[str] | None, csv_path: pathlib.Path
) -> tuple[str, ...]:
    """The label columns: `label_columns` if given, else every non-metadata header column."""
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


def _text(value: object) -> str:
    """A cell as the file spelled it, near enough for a message ('' for an empty cell)."""
    return "" if pd.isna(value) else str(value)


def _boolean_column(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """`[N]` int8 1/0 for 0/1/True/False cells, -1 where empty, and a mask of other cells."""
    if column.dtype == bool:
        return column.to_numpy(np.int8), np.zeros(len(column), dtype=bool)
    missing = column.isna().to_numpy()
    if column.dtype.kind in "iuf":
        number = column.to_numpy(np.float64)
        values = np.where(number == 1, 1, np.where(number == 0, 0, -1)).astype(np.int8)
    else:
        mapped = column.astype(str).str.strip().str.lower().map(_BOOLEAN_TEXT)
        values = mapped.fillna(-1).to_numpy(np.int8)
    return values, (values < 0) & ~missing


def _number_column(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """`[N]` float64 (NaN where empty) and a mask of the cells that are not numbers."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
    return values, np.isnan(values) & column.notna().to_numpy()


def _exam_table(
    frame: pd.DataFrame,
    lines: np.ndarray,
    csv_path: pathlib.Path,
    label_columns: Sequence[str] | None,
    on_error: OnError,
    skip_log: SkipLog | None,
) -> tuple[_ExamTable, np.ndarray]:
    """Checks the rows of `exams.csv` column by column; returns the good ones and their lines.

    A bad row (exam_id, a label, age, is_male, a typed metadata cell, an exam_id seen on an
    earlier line) raises naming its line, or is skipped and listed in `skip_log`, one message
    per row (its first problem), in line order.
    """
    header = list(frame.columns)
    label_names = _label_columns(header, label_columns, csv_path)
    checks: list[tuple[np.ndarray, Callable[[int], str]]] = []

    def check(bad: np.ndarray, column: str, problem: str, what: str = "column") -> None:
        cells = frame[column]
        checks.append((bad, lambda i: f"{what} {column!r} has '{_text(cells.iloc[i])}'{problem}"))

    if frame["exam_id"].dtype.kind in "iu":
        exam_id = frame["exam_id"].to_numpy(np.int64)
        check(exam_id <= DUMMY_EXAM_ID, "exam_id", ", not a positive integer")
    else:
        number, _ = _number_column(frame["exam_id"])
        check(~(number > 0) | (number % 1 != 0), "exam_id", ", not a positive integer")
        exam_id = np.nan_to_num(number, nan=-1).astype(np.int64)

    labels = np.zeros((len(frame), len(label_names)), dtype=bool)
    for k, name in enumerate(label_names):
        values, bad = _boolean_column(frame[name])
        bad |= values < 0  # an empty label cell is not "absent"
        head = bad[:_LABEL_CHECK_ROWS]
        if head.size and head.mean() > 0.5:
            example = _text(frame[name].iloc[int(np.argmax(head))])
            raise EcgFormatError(
                csv_path,
                f"column {name!r} does not hold 0/1 labels ({int(head.sum())} of its first "
                f"{head.size} rows are not 0/1/True/False, e.g. '{example}'); if it is not a "
                "label, name the label columns with label_columns=",
            )
        check(bad, name, "; expected 0/1/True/False", what="label column")
        labels[:, k] = values == 1

    age, is_male = np.full(len(frame), np.nan), np.full(len(frame), -1, dtype=np.int8)
    if "age" in frame:
        age, bad = _number_column(frame["age"])
        check(bad | (age < 0) | (age > MAX_AGE_YEARS), "age", ", not an age in years (0-150)")
    if "is_male" in frame:
        is_male, bad = _boolean_column(frame["is_male"])
        check(bad, "is_male", "; expected 0/1/True/False or empty")
    metadata: dict[str, _Column] = {}
    for name in header:
        if name in label_names or name in _RECORD_COLUMNS:
            continue
        if name in _NUMBER_COLUMNS:
            metadata[name], bad = _number_column(frame[name])
            check(bad, name, ", not a number")
        elif name in _BOOLEAN_COLUMNS:
            metadata[name], bad = _boolean_column(frame[name])
            check(bad, name, "; expected 0/1/True/False or empty")
        else:
            metadata[name] = _TextColumn.from_series(frame[name])

    first_problem = np.full(len(frame), -1, dtype=np.int32)
    for k, (bad, _) in enumerate(checks):
        first_problem[(first_problem < 0) & bad] = k
    bad_row = first_problem >= 0
    # Among the readable rows, an exam_id seen on an earlier line is a repeat.
    first_line = pd.Series(lines).where(~bad_row).groupby(exam_id).transform("min").to_numpy()
    repeat = ~bad_row & (first_line != lines)
    errors = [(int(lines[i]), checks[first_problem[i]][1](i)) for i in np.flatnonzero(bad_row)]
    errors += [
        (int(lines[i]), f"exam_id {exam_id[i]} repeats line {int(first_line[i])}")
        for i in np.flatnonzero(repeat)
    ]
    for line, problem in sorted(errors):
        handle_bad_record(EcgFormatError(csv_path, f"line {line}: {problem}"), on_error, skip_log)
    table = _ExamTable(
        label_names=label_names,
        exam_id=exam_id,
        labels_packed=np.packbits(labels, axis=1),
        age=age,
        is_male=is_male,
        patient_id=_TextColumn.from_series(
            frame["patient_id"] if "patient_id" in frame else pd.Series([None] * len(frame))
        ),
        metadata=metadata,
    )
    keep = ~(bad_row | repeat)
    return table.take(keep), lines[keep]


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
    if num_leads == len(INDEPENDENT_LEADS):
        return INDEPENDENT_LEADS
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


def _unpadded_bounds(tracing_TC: np.ndarray) -> tuple[int, int, int]:
    """`start, stop` of the real samples inside a centred zero padding of a `[T, C]` tracing.

    A sample counts as padding only where all leads are exactly zero. The padding is symmetric
    (`(T - n) // 2` zeros before an exam of n samples, the rest after), so the shorter of the two
    zero runs is the padding on both sides and any surplus on the other side is the exam's own
    zeros, which are kept. An exam of odd length keeps one zero sample of padding at its end
    (all the lengths known in the releases, 2800, 2934, 4000 and 4096, are even): real samples
    are never cut. The third value is that surplus: above 1, the exam has zeros of its own at one
    end, and if it also has some at the other end, that many samples were taken for padding.
    Raises ValueError for an all-zero tracing.
    """
    nonzero = np.flatnonzero(np.any(tracing_TC != 0, axis=1))
    if nonzero.size == 0:
        raise ValueError("tracing is all zeros (no signal)")
    num_samples = tracing_TC.shape[0]
    before, after = int(nonzero[0]), num_samples - 1 - int(nonzero[-1])
    pad = min(before, after)
    return pad, num_samples - pad, abs(before - after)


def _tracing_record(
    tracing_TC: np.ndarray,
    *,
    exam_id: int,
    lead_names: Sequence[str],
    path: pathlib.Path,
    row: int,
    fields: dict[str, Any],
) -> EcgRecord:
    """Builds the `EcgRecord` of one stored `[T, C]` tracing (padding removed, in mV).

    `metadata["padding_surplus"]` is `_unpadded_bounds`' surplus; above 1 a warning is logged.
    """
    where = f"exam {exam_id} (row {row})"
    try:
        start, stop, surplus = _unpadded_bounds(tracing_TC)
    except ValueError as err:
        raise EcgFormatError(path, f"{where}: {err}") from None
    if surplus > 1:
        log.warning(
            "%s: %s has zero runs of %d and %d samples at its two ends; only %d taken as padding",
            path, where, start, start + surplus, start,
        )  # fmt: skip
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
        "padding_surplus": surplus,
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
    stored = pd.Index(np.concatenate([np.zeros(0, np.int64), *shard_exam_ids]))
    shard_of = np.repeat(np.arange(len(shard_exam_ids)), [len(ids) for ids in shard_exam_ids])
    row_of = np.concatenate([np.zeros(0, np.int64), *map(np.arange, map(len, shard_exam_ids))])
    first = ~stored.duplicated() & (stored != DUMMY_EXAM_ID)
    repeated = stored[~first & (stored != DUMMY_EXAM_ID)].unique().to_numpy()
    at = stored[first].get_indexer(exam_ids)
    found = at >= 0
    shard = np.where(found, shard_of[first][at], -1).astype(np.int32)
    row = np.where(found, row_of[first][at], -1).astype(np.int64)
    return shard, row, repeated


def _shard_order(path: pathlib.Path) -> tuple[int, str]:
    match = SHARD_PATTERN.fullmatch(path.name)
    return (int(match.group(1)) if match else -1, path.name)


def _find(exam_ids: np.ndarray, sorter: np.ndarray, exam_id: str | int) -> int:
    """Position of `exam_id` (an integer, or its string) in `exam_ids`, or -1."""
    try:
        wanted = int(exam_id)
    except (TypeError, ValueError):
        return -1
    k = int(np.searchsorted(exam_ids, wanted, sorter=sorter))
    if k == len(exam_ids) or exam_ids[sorter[k]] != wanted:
        return -1
    return int(sorter[k])


class _ExamIdStrings(Sequence[str]):
    """`[N]` int64 exam ids seen as their strings, made only when asked for.

    CODE-II has ~2.7 M exams: a tuple of their strings would cost ~200 MB in every process.
    """

    def __init__(self, exam_ids: np.ndarray, sorter: np.ndarray):
        self._exam_ids = exam_ids
        self._sorter = sorter

    def __len__(self) -> int:
        return len(self._exam_ids)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(str(e) for e in self._exam_ids[index].tolist())
        return str(int(self._exam_ids[index]))

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self._exam_ids), 65536):
            yield from map(str, self._exam_ids[start : start + 65536].tolist())

    def __contains__(self, record_id: object) -> bool:
        return isinstance(record_id, str) and _find(self._exam_ids, self._sorter, record_id) >= 0


class CodeDataset(Reader):
    """A CODE-15% / CODE-II folder: `exams.csv` and its `exams_part{i}.hdf5` shards.

    Opening reads `exams.csv` and each shard's `exam_id` (not the tracings). Bad input raises
    `EcgFormatError` naming the file, or with `on_error="skip"` is left out and listed in
    `skip_log` (a new `SkipLog` when None): a bad CSV row, a missing/truncated shard or one with
    the wrong lead count, a shard whose `exam_id` and `tracings` differ in length, an exam listed
    in the CSV but in no shard. Exams in a shard but not in the CSV are left out, counted in
    `num_unlisted_exams` and listed in `skip_log` once per shard (a CSV cut down to a subset is
    not an error). A tracing that is all zeros or holds NaN/Inf is found when it is read;
    `num_uneven_padding` counts, in this process, the exams read whose zero runs at the two ends
    differ by more than a sample (see `_unpadded_bounds`).

    Record ids are the exam ids as strings (`record_ids`; `exam_ids` holds them as integers);
    `read`, `patient_id` also take an integer exam id. `label_names` are the CSV's label columns.

    Picklable and cheap to unpickle: the checked table travels as compact arrays (neither the CSV
    nor the shards are read again); open HDF5 files do not travel (workers reopen them lazily).
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
        check_on_error(on_error)
        self.root = pathlib.Path(root)
        self.csv_path = self.root / CSV_NAME
        self.skip_log = SkipLog() if skip_log is None else skip_log
        self.num_uneven_padding = 0
        self._files: dict[int, h5py.File] = {}
        frame, lines = read_csv_table(self.csv_path, on_error, self.skip_log)
        table, lines = _exam_table(
            frame, lines, self.csv_path, label_columns, on_error, self.skip_log
        )
        # Every exam the CSV names, skipped rows included (those are in the skip log already).
        listed = np.sort(pd.to_numeric(frame.pop("exam_id"), errors="coerce").dropna().to_numpy())
        del frame

        trace_files = table.metadata.get("trace_file")
        shard_paths = set(self.root.glob("exams_part*.hdf5"))
        if isinstance(trace_files, _TextColumn):
            shard_paths |= {self.root / name for name in trace_files.values.tolist()}
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
            exam_id, line = int(table.exam_id[i]), int(lines[i])
            if shard_index[i] >= 0:
                err = EcgFormatError(
                    self.shard_paths[shard_index[i]],
                    f"exam {exam_id} (line {line} of {CSV_NAME}) is stored in several rows",
                )
            else:
                trace_file = trace_files[i] if isinstance(trace_files, _TextColumn) else None
                err = self._unlocated(exam_id, line, trace_file, bad_shards)
            handle_bad_record(err, on_error, self.skip_log)
        self.num_unlisted_exams = 0
        for path, exam_ids in zip(self.shard_paths, shard_exam_ids, strict=True):
            stored = exam_ids[exam_ids != DUMMY_EXAM_ID]
            at = np.minimum(np.searchsorted(listed, stored), max(len(listed) - 1, 0))
            unlisted = stored[listed[at] != stored] if len(listed) else stored
            if unlisted.size:
                self.num_unlisted_exams += int(unlisted.size)
                self.skip_log.add(
                    path, f"{unlisted.size} exams (e.g. {unlisted.min()}) are not in {CSV_NAME}"
                )
        self._table = table.take(keep)
        self._shard_index = shard_index[keep].astype(np.int16)
        self._row_index = row_index[keep].astype(np.int32)
        self._sorted = np.argsort(self._table.exam_id, kind="stable")

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

    @property
    def record_ids(self) -> Sequence[str]:
        """The exam ids as strings, in CSV order (a view: no string is made until asked for)."""
        return _ExamIdStrings(self._table.exam_id, self._sorted)

    def _position(self, exam_id: str | int) -> int:
        i = _find(self._table.exam_id, self._sorted, exam_id)
        if i < 0:
            raise KeyError(f"exam {exam_id} is not in {self.root}")
        return i

    def patient_id(self, exam_id: str | int) -> str | None:
        """The patient id of an exam, as `exams.csv` spells it."""
        return self._table.patient_id[self._position(exam_id)]

    def _file(self, shard: int) -> h5py.File:
        if shard not in self._files:
            self._files[shard] = _open_shard(self.shard_paths[shard])
        return self._files[shard]

    def _record(self, i: int, tracing_TC: np.ndarray) -> EcgRecord:
        shard = int(self._shard_index[i])
        record = _tracing_record(
            tracing_TC,
            exam_id=int(self._table.exam_id[i]),
            lead_names=self._lead_names[shard],
            path=self.shard_paths[shard],
            row=int(self._row_index[i]),
            fields=self._table.record_fields(i),
        )
        self.num_uneven_padding += record.metadata["padding_surplus"] > 1
        return record

    def read(self, record_id: str | int) -> EcgRecord:
        """One exam as an `EcgRecord` (`[T, 12]` mV at 400 Hz, padding removed)."""
        i = self._position(record_id)
        shard = int(self._shard_index[i])
        tracings = self._file(shard)["tracings"]
        row = int(self._row_index[i])
        return self._record(i, _read_tracing(tracings, row, self.shard_paths[shard]))

    def _reading_plan(self) -> tuple[Iterable[str], Callable[[str], EcgRecord]]:
        """Shard by shard in row order, reading blocks of consecutive rows.

        One HDF5 read per block of up to `_READ_BLOCK_ROWS` rows instead of one per exam. A
        block that cannot be read loses each of its exams (each raises, or is skipped).
        """
        order = np.lexsort((self._row_index, self._shard_index))
        shard_of, row_of = self._shard_index[order], self._row_index[order]
        block: dict[str, Any] = {"shard": -1}  # the block read last: shard, rows, tracings

        def read(record_id: str) -> EcgRecord:
            i = self._position(record_id)
            shard, row = int(self._shard_index[i]), int(self._row_index[i])
            if block["shard"] != shard or not block["first"] <= row <= block["last"]:
                # This exam starts a block: its shard's planned rows up to _READ_BLOCK_ROWS on.
                lo, hi = np.searchsorted(shard_of, [shard, shard + 1])
                rows = row_of[lo:hi]
                last = int(rows[np.searchsorted(rows, row + _READ_BLOCK_ROWS) - 1])
                block.update(shard=shard, first=row, last=last)
                try:
                    tracings = self._file(shard)["tracings"]
                    block["tracings"] = _read_tracing(
                        tracings, slice(row, last + 1), self.shard_paths[shard]
                    )
                except EcgFormatError as err:
                    block["tracings"] = err
            if isinstance(block["tracings"], EcgFormatError):
                exam_id = int(self._table.exam_id[i])
                raise EcgFormatError(
                    self.shard_paths[shard],
                    f"exam {exam_id} (row {row}): {block['tracings'].problem}",
                )
            return self._record(i, block["tracings"][row - block["first"]])

        return (str(exam_id) for exam_id in self._table.exam_id[order].tolist()), read

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
    patient; `metadata["exams_csv"]` names the CSV the fields came from, or is None. The exam's
    row is checked as `CodeDataset` checks every row (the whole CSV is parsed: use `CodeDataset`
    for many exams).
    """
    path = pathlib.Path(hdf5_path)
    if exam_id == DUMMY_EXAM_ID:
        raise EcgFormatError(path, "exam_id 0 marks the dummy padding row, not an exam")
    with _open_shard(path) as f:
        shard_exam_ids, names = _shard_contents(f, path, lead_names)
        (shard,), (row,), repeated = _locate(np.array([exam_id]), [shard_exam_ids])
        if shard < 0 or repeated.size:
            problem = "has no exam" if shard < 0 else "has several rows for exam"
            raise EcgFormatError(path, f"{problem} {exam_id}")
        tracing_TC = _read_tracing(f["tracings"], int(row), path)
    csv_path = path.parent / CSV_NAME
    fields: dict[str, Any] = {"metadata": {"exams_csv": None}}
    if csv_path.is_file():
        frame, lines = read_csv_table(csv_path, "raise", None)
        if "exam_id" not in frame:
            raise EcgFormatError(csv_path, f"header has no exam_id column: {list(frame)}")
        rows = (pd.to_numeric(frame["exam_id"], errors="coerce") == exam_id).to_numpy()
        frame = frame.loc[rows].reset_index(drop=True)
        table, _ = _exam_table(frame, lines[rows], csv_path, label_columns, "raise", None)
        if len(table.exam_id):
            fields = table.record_fields(0)
            fields["metadata"]["exams_csv"] = str(csv_path)
    return _tracing_record(
        tracing_TC, exam_id=exam_id, lead_names=names, path=path, row=int(row), fields=fields
    )
