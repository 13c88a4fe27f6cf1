"""CODE-15% / CODE-II `exams.csv`: one row per exam, checked column by column with pandas.

Columns (CODE-15%, Zenodo record 4916206): exam_id, age, is_male, nn_predicted_age, 1dAVb,
RBBB, LBBB, SB, ST, AF, patient_id, death, timey, normal_ecg, trace_file. The six diagnoses are
True/False; ST is sinus tachycardia. death and timey are filled only on a patient's first exam;
trace_file names the shard that holds the exam.

CODE-II (66 diagnostic classes whose names are not public yet) is assumed to share this layout,
with its label columns in `exams.csv`. Label names are never hard-coded: every header column
that is not in `METADATA_COLUMNS` is a label (or pass `label_columns=`), kept exactly as the
header spells it. A column whose first rows are mostly not 0/1/True/False (a date, a site) is
not taken for a label: opening raises, naming it, rather than failing every row. A metadata
column holding 0/1 (e.g. `sex`) cannot be told from a label: pass `label_columns=` then.

Scale: CODE-II's `exams.csv` has ~2.7 M rows. It is read once with pandas and checked column by
column, and kept as compact arrays (`ExamTable`, labels bit-packed), so that a `CodeDataset`
pickles into data-loader workers as a few arrays instead of re-reading the CSV.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ecgfm.data.record import MAX_AGE_YEARS, EcgFormatError, OnError, SkipLog, handle_bad_record
from ecgfm.data.tables import read_csv_table

CSV_NAME = "exams.csv"
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


@dataclasses.dataclass
class TextColumn:
    """A text column as `[N]` int32 codes into its distinct values (-1 where empty)."""

    codes: np.ndarray
    values: np.ndarray

    @classmethod
    def from_series(cls, column: pd.Series) -> TextColumn:
        if column.dtype.kind == "f" and (column.dropna() % 1 == 0).all():
            column = column.astype("Int64")  # integer ids that pandas read as float (a blank)
        codes, values = pd.factorize(column)
        if values.dtype.kind in "iu":
            return cls(codes.astype(np.int32), values.to_numpy(np.int64))
        return cls(codes.astype(np.int32), values.astype(str).to_numpy(dtype=str))

    def __getitem__(self, i: int) -> str | None:
        code = int(self.codes[i])
        return None if code < 0 else str(self.values[code])

    def take(self, keep: np.ndarray) -> TextColumn:
        return TextColumn(self.codes[keep], self.values)


# A metadata column: float64 (NaN unknown), int8 booleans (-1 unknown) or text.
_Column = np.ndarray | TextColumn


def _cell(column: _Column, i: int) -> Any:
    if isinstance(column, TextColumn):
        return column[i]
    if column.dtype == np.int8:
        return None if column[i] < 0 else bool(column[i])
    value = float(column[i])
    return None if np.isnan(value) else value


@dataclasses.dataclass
class ExamTable:
    """The checked rows of `exams.csv` as compact arrays (cheap to pickle into workers)."""

    label_names: tuple[str, ...]
    exam_id: np.ndarray  # [N] int64
    labels_packed: np.ndarray  # [N, ceil(K / 8)] uint8: np.packbits of the [N, K] booleans
    age: np.ndarray  # [N] float64, NaN when unknown
    is_male: np.ndarray  # [N] int8: 1, 0, or -1 when unknown
    patient_id: TextColumn
    metadata: dict[str, _Column]

    def take(self, keep: np.ndarray) -> ExamTable:
        return ExamTable(
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


def _check_rows(
    frame: pd.DataFrame,
    lines: np.ndarray,
    csv_path: pathlib.Path,
    label_columns: Sequence[str] | None,
    on_error: OnError,
    skip_log: SkipLog | None,
) -> tuple[ExamTable, np.ndarray]:
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
        check(exam_id <= 0, "exam_id", ", not a positive integer")
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
            metadata[name] = TextColumn.from_series(frame[name])

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
    table = ExamTable(
        label_names=label_names,
        exam_id=exam_id,
        labels_packed=np.packbits(labels, axis=1),
        age=age,
        is_male=is_male,
        patient_id=TextColumn.from_series(
            frame["patient_id"] if "patient_id" in frame else pd.Series([None] * len(frame))
        ),
        metadata=metadata,
    )
    keep = ~(bad_row | repeat)
    return table.take(keep), lines[keep]


def read_exams_csv(
    csv_path: pathlib.Path,
    label_columns: Sequence[str] | None,
    on_error: OnError,
    skip_log: SkipLog | None,
) -> tuple[ExamTable, np.ndarray, np.ndarray]:
    """The checked rows of `exams.csv`, the file line of each, and every exam id it names.

    The last is sorted and includes the ids of skipped rows (those are in the skip log
    already), so that an exam of a shard can be told apart from one the CSV does not list.
    """
    frame, lines = read_csv_table(csv_path, on_error, skip_log)
    table, lines = _check_rows(frame, lines, csv_path, label_columns, on_error, skip_log)
    listed = np.sort(pd.to_numeric(frame.pop("exam_id"), errors="coerce").dropna().to_numpy())
    return table, lines, listed


def exam_fields(
    csv_path: pathlib.Path, exam_id: int, label_columns: Sequence[str] | None
) -> dict[str, Any] | None:
    """The `EcgRecord` fields of one exam's row, checked as every row is; None if not listed.

    Parses the whole CSV: read many exams through `CodeDataset`.
    """
    frame, lines = read_csv_table(csv_path, "raise", None)
    if "exam_id" not in frame:
        raise EcgFormatError(csv_path, f"header has no exam_id column: {list(frame)}")
    rows = (pd.to_numeric(frame["exam_id"], errors="coerce") == exam_id).to_numpy()
    frame = frame.loc[rows].reset_index(drop=True)
    table, _ = _check_rows(frame, lines[rows], csv_path, label_columns, "raise", None)
    return table.record_fields(0) if len(table.exam_id) else None
