"""CODE-15% and CODE-II: `exams.csv` plus `exams_part{i}.hdf5` shards of 400 Hz tracings.

The layout is that of CODE-15% (Zenodo record 4916206, and the authors' repositories
antonior92/automatic-ecg-diagnosis, antonior92/ecg-age-prediction, antonior92/ecg-preprocessing);
CODE-II is assumed to share it. Each half has its module:
- `ecgfm.data.code_csv`: `exams.csv`, one row per exam (labels, age, sex, patient, trace_file),
  read with pandas and kept as compact arrays;
- `ecgfm.data.code_hdf5`: the `exams_part{i}.hdf5` shards (`tracings [N, 4096, 12]` and
  `exam_id`, 400 Hz), their centred zero padding, the dummy exam_id 0 row, units and leads.

Here the two are joined: `CodeDataset` (the `Reader` of a folder) and `read_code_exam` (one
exam of one shard, for `ecgfm inspect`).
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import h5py
import numpy as np

from ecgfm.data.code_csv import CSV_NAME, TextColumn, exam_fields, read_exams_csv
from ecgfm.data.code_hdf5 import (
    DUMMY_EXAM_ID,
    READ_BLOCK_ROWS,
    index_shard,
    locate_exams,
    open_shard,
    read_shard_exam,
    read_tracing,
    shard_order,
    shard_tracings,
    tracing_record,
)
from ecgfm.data.files import is_regular_file
from ecgfm.data.reader import Reader
from ecgfm.data.record import (
    EcgFormatError,
    EcgRecord,
    OnError,
    SkipLog,
    handle_bad_record,
)

log = logging.getLogger(__name__)


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
    differ by more than a sample (see `unpadded_bounds`).

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
        super().__init__(root, on_error=on_error, skip_log=skip_log)
        self.csv_path = self.root / CSV_NAME
        self.num_uneven_padding = 0
        self._files: dict[int, h5py.File] = {}
        table, lines, listed = read_exams_csv(self.csv_path, label_columns, on_error, self.skip_log)

        trace_files = table.metadata.get("trace_file")
        shard_paths = set(self.root.glob("exams_part*.hdf5"))
        if isinstance(trace_files, TextColumn):
            # A trace_file is a file name in the folder; any other (a path) locates no exam.
            names = [str(n) for n in trace_files.values.tolist()]
            names = [n for n in names if n == pathlib.PurePath(n).name]
            shard_paths |= {self.root / name for name in names if name not in ("", ".", "..")}
        self.shard_paths: list[pathlib.Path] = []
        self._lead_names: list[tuple[str, ...]] = []
        self.num_dummy_rows = 0
        bad_shards: dict[str, EcgFormatError] = {}
        shard_exam_ids: list[np.ndarray] = []
        for path in sorted(shard_paths, key=shard_order):
            try:
                exam_ids, names, num_dummy = index_shard(path, lead_names)
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

        shard_index, row_index, repeated = locate_exams(table.exam_id, shard_exam_ids)
        keep = (shard_index >= 0) & ~np.isin(table.exam_id, repeated)
        for i in np.flatnonzero(~keep).tolist():
            exam_id, line = int(table.exam_id[i]), int(lines[i])
            if shard_index[i] >= 0:
                err = EcgFormatError(
                    self.shard_paths[shard_index[i]],
                    f"exam {exam_id} (line {line} of {CSV_NAME}) is stored in several rows",
                )
            else:
                trace_file = trace_files[i] if isinstance(trace_files, TextColumn) else None
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
            self._files[shard] = open_shard(self.shard_paths[shard])
        return self._files[shard]

    def _record(self, i: int, tracing_TC: np.ndarray) -> EcgRecord:
        shard = int(self._shard_index[i])
        record = tracing_record(
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
        path = self.shard_paths[shard]
        row = int(self._row_index[i])
        return self._record(i, read_tracing(shard_tracings(self._file(shard), path), row, path))

    def _reading_plan(self) -> tuple[Iterable[str], Callable[[str], EcgRecord]]:
        """Shard by shard in row order, reading blocks of consecutive rows.

        One HDF5 read per block of up to `READ_BLOCK_ROWS` rows instead of one per exam. A
        block that cannot be read loses each of its exams (each raises, or is skipped).
        """
        order = np.lexsort((self._row_index, self._shard_index))
        shard_of, row_of = self._shard_index[order], self._row_index[order]
        block: dict[str, Any] = {"shard": -1}  # the block read last: shard, rows, tracings

        def read(record_id: str) -> EcgRecord:
            i = self._position(record_id)
            shard, row = int(self._shard_index[i]), int(self._row_index[i])
            if block["shard"] != shard or not block["first"] <= row <= block["last"]:
                # This exam starts a block: its shard's planned rows up to READ_BLOCK_ROWS on.
                lo, hi = np.searchsorted(shard_of, [shard, shard + 1])
                rows = row_of[lo:hi]
                last = int(rows[np.searchsorted(rows, row + READ_BLOCK_ROWS) - 1])
                block.update(shard=shard, first=row, last=last)
                try:
                    path = self.shard_paths[shard]
                    tracings = shard_tracings(self._file(shard), path)
                    block["tracings"] = read_tracing(tracings, slice(row, last + 1), path)
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
    tracing_TC, names, row = read_shard_exam(path, exam_id, lead_names)
    csv_path = path.parent / CSV_NAME
    fields = exam_fields(csv_path, exam_id, label_columns) if is_regular_file(csv_path) else None
    if fields is None:
        fields = {"metadata": {"exams_csv": None}}
    else:
        fields["metadata"]["exams_csv"] = str(csv_path)
    return tracing_record(
        tracing_TC, exam_id=exam_id, lead_names=names, path=path, row=row, fields=fields
    )
