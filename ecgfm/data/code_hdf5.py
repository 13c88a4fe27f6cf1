"""CODE-15% / CODE-II `exams_part{i}.hdf5` shards: 400 Hz tracings, their padding and units.

Each shard holds datasets `tracings` (float32 `[N, 4096, 12]`) and `exam_id` (int64 `[N]`,
same order): leads DI, DII, DIII, AVR, AVL, AVF, V1–V6 at 400 Hz (antonior92/ecg-preprocessing,
antonior92/automatic-ecg-diagnosis). Each shard ends with a dummy all-zero row whose exam_id is
0 (`DUMMY_EXAM_ID`); readers skip and count it.

Padding. Exams shorter than 4096 samples are zero padded on both sides, centred:
ecg-preprocessing puts `(4096 - T) // 2` zeros before and the rest after (648 on each side of a
7 s exam of 2800 samples, 48 around a 10 s exam of 4000). Audits of the real release also report
exams of 2934 samples and exams that fill all 4096, so no length is assumed: the padding is
found in the tracing itself (`unpadded_bounds`).

Units. `tracings` are read as millivolts (`MV_PER_STORED_UNIT`). The authors' READMEs say "at
the scale 1e-4V: so if the signal is in V it should be multiplied by 1000", which contradicts
itself (1e-4 V would be ×10,000 from volts; ×1000 from volts is mV) and the Zenodo record names
no unit. The PhysioNet/CinC Challenge 2025's `prepare_code15_data.py` writes the tracings to
WFDB unchanged with units "mV" (gain 1000 per mV), and measurements of the real arrays read as
mV give a median lead-II R wave of about 1.75 mV, which is physiological (0.175 mV under the
1e-4 V reading is not). Caveat: ecg-preprocessing's README says the HDF5 files were written with
`--scale 2`, and one audit found the amplitudes 1.4–2.3× those of other mV datasets, so the true
factor may be 0.5; the authors have not confirmed it, and we follow the Challenge's reading.

Fewer leads: a shard whose `tracings` hold 8 leads is read as the 8 independent leads in
ecg-preprocessing's `reduced_leads` order (`INDEPENDENT_LEADS`: DI, DII, V1–V6, what its
`generate_h5.py` writes without `--use_all_leads`; TNMG's own JSON carries the same eight); III,
aVR, aVL and aVF are derived and named in `EcgRecord.derived_leads`. Pass `lead_names=` for any
other order.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import h5py
import numpy as np
import pandas as pd

from ecgfm.data.files import check_file
from ecgfm.data.record import (
    INDEPENDENT_LEADS,
    EcgFormatError,
    EcgRecord,
    check_signal,
    to_canonical_leads,
)

log = logging.getLogger(__name__)

SAMPLING_RATE = 400.0
SHARD_PATTERN = re.compile(r"exams_part(\d+)\.hdf5")
# Stored value × this = millivolts; the evidence is in the module docstring.
MV_PER_STORED_UNIT = 1.0
DUMMY_EXAM_ID = 0
READ_BLOCK_ROWS = 128  # ~25 MB of float32 [128, 4096, 12] per read when iterating a shard
# Bounds on what a shard may declare, checked when it is opened, before any tracing is read.
# CODE ships 4096 samples per exam; a row is refused beyond 16 times that (164 s at 400 Hz), so
# one exam's read stays under 6.3 MB whatever a header says (a 2 KB file declaring 1e7-sample
# exams took 10 s and 480 MB per read). `exam_id`, which opening reads whole, may not declare
# more bytes than deflate can make of the file (1032:1, its most): unwritten chunks of a crafted
# file would otherwise read as gigabytes of zeros. (`tracings` may: a test folder of 4000 exams
# leaves their chunks unwritten, and they are read one listed exam at a time.) The real shards
# close with one dummy row; a shard with more than `MAX_DUMMY_ROWS` is refused, as each is read.
MAX_EXAM_SAMPLES = 16 * 4096
MAX_INFLATION = 1032
MAX_DUMMY_ROWS = 16
# What h5py raises for a file that HDF5 cannot parse (checked with h5py 3.16 / HDF5 2.0 on
# byte-flipped shards): OSError, KeyError ("Unable to synchronously open object ..."),
# RuntimeError ("Unable to synchronously check link existence ..."), ValueError, TypeError.
_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)

# Lead order of `tracings`, as the authors name them (`to_canonical_leads` knows DI/DII/DIII).
CODE_LEADS: tuple[str, ...] = (
    "DI", "DII", "DIII", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6",
)  # fmt: skip


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


@contextlib.contextmanager
def h5_errors(path: pathlib.Path, what: str) -> Iterator[None]:
    """Turns what h5py raises for a damaged file into `EcgFormatError` naming `path` and `what`."""
    try:
        yield
    except EcgFormatError:
        raise
    except _H5_ERRORS as err:
        raise EcgFormatError(path, f"{what}: {err}") from err


def open_shard(path: pathlib.Path) -> h5py.File:
    """The shard opened read-only; a missing or unreadable file raises `EcgFormatError`."""
    check_file(path, missing="shard is missing")  # a FIFO would block HDF5's open for ever
    with h5_errors(path, "cannot be read as HDF5 (truncated?)"):
        return h5py.File(path, "r")


def _dataset(f: h5py.File, name: str, path: pathlib.Path) -> h5py.Dataset:
    """`f[name]`, a dataset stored in this file; anything else raises naming it."""
    with h5_errors(path, f"dataset {name!r} cannot be opened"):
        link = f.get(name, getlink=True)
        if link is None:
            names = sorted(f.keys())
            # A damaged name index can list a name that lookup by name then misses.
            problem = "is listed but cannot be looked up" if name in names else "is missing"
            raise EcgFormatError(path, f"dataset {name!r} {problem} (the file lists {names})")
        if not isinstance(link, h5py.HardLink):
            raise EcgFormatError(path, f"{name!r} is a {type(link).__name__} to another file")
        dataset = f[name]
        if not isinstance(dataset, h5py.Dataset):
            raise EcgFormatError(path, f"{name!r} is not a dataset")
        # Data kept in other files (an external file list, a virtual dataset) could be
        # anything: a FIFO, a device. A shard holds its own data.
        if dataset.external or dataset.is_virtual:
            raise EcgFormatError(path, f"dataset {name!r} keeps its data outside the file")
        return dataset


def _shard_contents(
    f: h5py.File, path: pathlib.Path, lead_names: Sequence[str] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Checks a shard's datasets; returns its `[N]` exam ids and the names of its leads.

    Sizes are checked against `MAX_EXAM_SAMPLES` and `MAX_INFLATION` × the file's size before
    anything is read.
    """
    tracings, exam_id = _dataset(f, "tracings", path), _dataset(f, "exam_id", path)
    with h5_errors(path, "dataset shapes cannot be read"):
        shape, dtype = tracings.shape, tracings.dtype
        id_shape, id_dtype = exam_id.shape, exam_id.dtype
    if len(shape) != 3:
        raise EcgFormatError(path, f"tracings have shape {shape}, expected [exams, samples, leads]")
    names = _shard_lead_names(shape[2], lead_names, path)
    if dtype.kind not in "fiu" or dtype.itemsize > 8:
        raise EcgFormatError(path, f"tracings have dtype {dtype}, expected real numbers")
    if shape[1] > MAX_EXAM_SAMPLES:
        raise EcgFormatError(
            path,
            f"tracings declare {shape[1]} samples per exam, more than {MAX_EXAM_SAMPLES} "
            f"(CODE exams are 4096)",
        )
    if len(id_shape) != 1 or id_shape[0] != shape[0]:
        raise EcgFormatError(
            path, f"exam_id has shape {id_shape} but tracings hold {shape[0]} exams"
        )
    if not np.issubdtype(id_dtype, np.integer) or id_dtype.itemsize > 8:
        raise EcgFormatError(path, f"exam_id has dtype {id_dtype}, expected integers")
    file_bytes = check_file(path, missing="shard is missing")
    declared = id_shape[0] * id_dtype.itemsize
    if declared > MAX_INFLATION * max(file_bytes, 1):
        raise EcgFormatError(
            path,
            f"exam_id declares {id_shape[0]} ids ({declared} bytes) in a file of {file_bytes} "
            "bytes: more than compression could hold",
        )
    with h5_errors(path, "exam_id cannot be read (truncated?)"):
        return np.asarray(exam_id[:], dtype=np.int64), names


def unpadded_bounds(tracing_TC: np.ndarray) -> tuple[int, int, int]:
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


def tracing_record(
    tracing_TC: np.ndarray,
    *,
    exam_id: int,
    lead_names: Sequence[str],
    path: pathlib.Path,
    row: int,
    fields: dict[str, Any],
) -> EcgRecord:
    """Builds the `EcgRecord` of one stored `[T, C]` tracing (padding removed, in mV).

    `metadata["padding_surplus"]` is `unpadded_bounds`' surplus; above 1 a warning is logged.
    """
    where = f"exam {exam_id} (row {row})"
    try:
        start, stop, surplus = unpadded_bounds(tracing_TC)
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


def read_tracing(dataset: h5py.Dataset, rows: slice | int, path: pathlib.Path) -> np.ndarray:
    """`tracings[rows]` as float32 (`[T, C]` for a row, `[B, T, C]` for a slice of rows)."""
    with h5_errors(path, "tracings cannot be read (truncated?)"):
        return np.asarray(dataset[rows], dtype=np.float32)


def shard_tracings(f: h5py.File, path: pathlib.Path) -> h5py.Dataset:
    """The `tracings` dataset of an open shard (checked when the shard was indexed)."""
    with h5_errors(path, "dataset 'tracings' cannot be opened"):
        return f["tracings"]


def index_shard(
    path: pathlib.Path, lead_names: Sequence[str] | None
) -> tuple[np.ndarray, tuple[str, ...], int]:
    """Checks one shard; returns its `[N]` exam ids, its lead names and its dummy-row count."""
    with open_shard(path) as f:
        exam_ids, names = _shard_contents(f, path, lead_names)
        dummy_rows = np.flatnonzero(exam_ids == DUMMY_EXAM_ID)
        if dummy_rows.size > MAX_DUMMY_ROWS:
            raise EcgFormatError(
                path, f"{dummy_rows.size} rows have exam_id 0 (CODE shards close with one)"
            )
        for row in dummy_rows.tolist():
            if np.any(read_tracing(shard_tracings(f, path), row, path) != 0):
                raise EcgFormatError(path, f"row {row} has exam_id 0 but a non-zero tracing")
    return exam_ids, names, int(dummy_rows.size)


def locate_exams(
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
    at = np.where(found, at, 0)  # a valid index where nothing was found (masked below)
    if not first.any():  # no shard stores an exam: nothing to index into
        return np.full(len(exam_ids), -1, np.int32), np.full(len(exam_ids), -1), repeated
    shard = np.where(found, shard_of[first][at], -1).astype(np.int32)
    row = np.where(found, row_of[first][at], -1).astype(np.int64)
    return shard, row, repeated


def shard_order(path: pathlib.Path) -> tuple[int, str]:
    """Sort key of shard files: `exams_part{i}.hdf5` by i (2 before 10), others first."""
    match = SHARD_PATTERN.fullmatch(path.name)
    return (int(match.group(1)) if match else -1, path.name)


def read_shard_exam(
    path: pathlib.Path, exam_id: int, lead_names: Sequence[str] | None
) -> tuple[np.ndarray, tuple[str, ...], int]:
    """One exam's stored `[T, C]` tracing (padding kept), its shard's lead names and its row."""
    if exam_id == DUMMY_EXAM_ID:
        raise EcgFormatError(path, "exam_id 0 marks the dummy padding row, not an exam")
    with open_shard(path) as f:
        shard_exam_ids, names = _shard_contents(f, path, lead_names)
        (shard,), (row,), repeated = locate_exams(np.array([exam_id]), [shard_exam_ids])
        if shard < 0 or repeated.size:
            problem = "has no exam" if shard < 0 else "has several rows for exam"
            raise EcgFormatError(path, f"{problem} {exam_id}")
        return read_tracing(shard_tracings(f, path), int(row), path), names, int(row)
