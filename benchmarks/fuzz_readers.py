"""Hostile input for every reader: seeded mutations of real and synthetic files, outcomes by class.

    .venv/bin/python benchmarks/fuzz_readers.py --cases 2000 --workers 2
    .venv/bin/python benchmarks/fuzz_readers.py --replay cpsc2018:137    # one case, in-process

Each reader gets a small pristine folder in its dataset's layout: CODE (synthetic: `exams.csv`
and two HDF5 shards), PTB-XL (synthetic at 100 Hz, with the real `scp_statements.csv`), CPSC 2018
(the real A1980 as shipped, zlib-compressed, and the real A1981 saved uncompressed, where
scipy's reader crashed, with a `REFERENCE.csv`) and the Challenge layout (the real HR06000,
E07500 and JS20000). Case i of a reader copies its folder and applies one mutation drawn from
`random.Random(f"{seed}:{reader}:{i}")` to one of its files (cases 0-17 take each kind once,
then kinds are drawn by weight):

- bytes: 1-8 bytes set to random values (half of them in the first KB, where the structure is);
  bits: 1-8 bit flips; truncate; extend (garbage appended); empty;
- field: a whitespace/comma-separated token of a text file (.hea, .csv) replaced by a hostile
  value (huge or negative numbers, nan, inf, 1e400, a 5000-character name, a path, ...);
  non_utf8: Latin-1 / invalid bytes put into a line; lines: a line dropped or repeated;
- int_field: an aligned 4- or 8-byte word of a binary file's first 2 KB set to 0, 1, 2**31-1,
  2**32-1, 10**7, a MATLAB type code ... (declared sizes, types, offsets);
- dtype: the signal rewritten in another type (CODE tracings float64/int16/complex/text, CPSC
  data int16/complex/char, Challenge val uint16 wrapped/float/int32, PTB-XL format 212/32);
- scale: the signal ×1000, ×1e30, 3.5e38, all zeros, constant, NaN or Inf samples (CODE, CPSC:
  in the file; WFDB: through the header's gain or zeroed samples);
- huge: declared sizes far beyond the file (HDF5 shapes of 1e7 samples or 1e9 exams with no
  data, MATLAB dimensions of 2**31-1, a header promising 1e12 samples or 1e6 leads);
- fifo, symlink_loop, dev_zero (a symlink to /dev/zero), directory, delete, long_name (the
  file renamed to a 300-character name).

Then the case is read the three ways a user reads: the reader opened with `on_error="raise"`
and every record read; opened with `on_error="skip"` and iterated with `on_error="skip"`; and
each file through `formats.read_any` (`ecgfm inspect`). Outcomes:
- `read`: raise mode read every record (each record is checked: float32 `[T, 12]`, finite,
  within ±50 mV, not every lead flat, a positive sampling rate);
- `refused`: raise mode raised `EcgFormatError` whose path lies in the case folder.
Anything else is a failure, listed with its case and mutation: `crash` (the worker died of a
signal), `timeout` (over `--timeout` s), `exception` (any other exception type, anywhere),
`implausible` (a record breaking the rule above), `unnamed` (an `EcgFormatError` naming a path
outside the folder), `skip_broke` (skip mode raised while iterating, or yielded + skipped !=
listed), and `harness` (applying the mutation failed: a bug here, not in a reader). Cases run
in worker processes (`--workers`) with faulthandler on, so a segfault is a counted outcome, not
a dead run; the worker is restarted and the next case goes on.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import faulthandler
import json
import logging
import math
import os
import pathlib
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

READERS = ("code", "ptbxl", "cpsc2018", "challenge")
OK_OUTCOMES = ("read", "refused")
FAILURES = ("crash", "timeout", "exception", "implausible", "unnamed", "skip_broke", "harness")
_STARTUP_S = 120  # a worker's imports, on a loaded machine
REAL_DATA = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "real"

HOSTILE_TOKENS = (
    "", "0", "-1", "1", "2", "nan", "NaN", "inf", "-inf", "1e400", "1e-300", "-32768", "32768",
    "65536", "2147483648", "4294967296", "99999999999999999999999999", "1e30", "0.5", "16x2",
    "x" * 5000, "../../../etc/passwd", "/dev/zero", "mV", "uV", "(0)/mV", "True", "None", "{}",
    "{'NORM': 1e400}", "[", "\u00e9", "A0001", "7",
)  # fmt: skip
HOSTILE_INTS = (0, 1, 2, 3, 5, 9, 14, 15, 18, 255, 65535, 10**7, 2**31 - 1, 2**31, 2**32 - 1)


# --- Pristine samples ----------------------------------------------------------------------


def build_samples(workdir: pathlib.Path) -> dict[str, pathlib.Path]:
    """One small pristine folder per reader under `workdir/pristine` (kept if already there)."""
    import scipy.io

    from ecgfm.data.synthetic import write_dataset

    base = workdir / "pristine"
    folders = {name: base / name for name in READERS}
    if all(folder.is_dir() for folder in folders.values()):
        return folders
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    write_dataset("code", folders["code"], num_records=3, seed=0, exams_per_shard=2)
    write_dataset("ptbxl", folders["ptbxl"], num_records=3, seed=0, sampling_rates=(100,))
    cpsc = folders["cpsc2018"]
    cpsc.mkdir()
    shutil.copy(REAL_DATA / "cpsc2018" / "A1980.mat", cpsc)
    ecg = scipy.io.loadmat(REAL_DATA / "cpsc2018" / "A1981.mat")["ECG"][0, 0]
    fields = {"sex": str(ecg["sex"][0]), "age": ecg["age"], "data": ecg["data"]}
    scipy.io.savemat(cpsc / "A1981.mat", {"ECG": fields}, do_compression=False)
    (cpsc / "REFERENCE.csv").write_text(
        "Recording,First_label,Second_label,Third_label\nA1980,1,,\nA1981,2,6,\n"
    )
    challenge = folders["challenge"]
    challenge.mkdir()
    for record in ("HR06000", "E07500", "JS20000"):
        for suffix in (".hea", ".mat"):
            shutil.copy(REAL_DATA / "cinc2021" / f"{record}{suffix}", challenge)
    return folders


def list_files(folder: pathlib.Path) -> dict[str, int]:
    """Relative path -> size of every file of a pristine folder, sorted."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- Mutations -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One change to one file of a case folder; `params` are JSON-able."""

    kind: str
    target: str
    params: tuple[Any, ...] = ()

    def describe(self) -> str:
        shown = [p if not isinstance(p, str) or len(p) < 40 else f"{p[:12]}…({len(p)})"
                 for p in self.params]  # fmt: skip
        return f"{self.kind} {self.target} {shown}"


GENERIC_KINDS = {  # kind -> weight
    "bytes": 24, "bits": 8, "truncate": 10, "extend": 3, "empty": 2, "delete": 2, "fifo": 2,
    "symlink_loop": 2, "dev_zero": 2, "directory": 2, "long_name": 2,
}  # fmt: skip
TEXT_KINDS = {"field": 16, "non_utf8": 6, "lines": 3}
BINARY_KINDS = {"int_field": 10}
SEMANTIC_KINDS = {"dtype": 6, "scale": 6, "huge": 5}
TEXT_SUFFIXES = (".csv", ".hea")
# The files each reader's semantic mutations rewrite.
SIGNAL_FILES = {
    "code": ("exams_part0.hdf5", "exams_part1.hdf5"),
    "ptbxl": ("records100/00000/00002_lr.hea",),
    "cpsc2018": ("A1980.mat", "A1981.mat"),
    "challenge": ("HR06000.mat", "E07500.mat"),
}
VARIANTS = {
    ("code", "dtype"): ("float64", "float16", "int16", "uint8", "complex64", "bool", "S4",
                        "exam_id_float", "exam_id_text", "compound"),
    ("code", "scale"): ("x1000", "x1e30", "zeros", "constant", "nan", "inf", "f64_huge"),
    ("code", "huge"): ("samples_1e7", "exams_1e9", "samples_0", "leads_1000", "dummy_rows"),
    ("ptbxl", "dtype"): ("212", "32", "8", "16x2", "16:1", "16+100", "80"),
    ("ptbxl", "scale"): ("gain_1", "gain_1e-30", "gain_1e30", "zeros"),
    ("ptbxl", "huge"): ("samples_1e12", "leads_1e6", "rate_1e12", "samples_2"),
    ("cpsc2018", "dtype"): ("int16", "float32", "uint8", "complex", "char", "bool", "empty",
                            "3d", "age_text", "sex_number", "no_struct"),
    ("cpsc2018", "scale"): ("x1000", "x1e30", "f64_huge", "zeros", "constant", "nan", "inf"),
    ("cpsc2018", "huge"): ("dims", "tag_size", "name_length", "field_count"),
    ("challenge", "dtype"): ("uint16", "float64", "half", "int32_wide", "uint8", "float32_nan",
                             "int64"),
    ("challenge", "scale"): ("gain_1", "gain_1e-30", "gain_inf", "gain_0", "gain_negative",
                             "zeros"),
    ("challenge", "huge"): ("v4_dims", "v4_namelen", "samples_1e12", "leads_1e6"),
}  # fmt: skip


def plan(reader: str, index: int, seed: int, files: dict[str, int]) -> Mutation:
    """The mutation of case `index` of `reader`: a pure function of its arguments."""
    rng = random.Random(f"{seed}:{reader}:{index}")
    text = [f for f in files if f.endswith(TEXT_SUFFIXES)]
    binary = [f for f in files if not f.endswith(TEXT_SUFFIXES)]
    kinds = {**GENERIC_KINDS, **TEXT_KINDS, **BINARY_KINDS, **SEMANTIC_KINDS}
    # The first cases take each kind once, so that a short run still tries every kind.
    kind = (
        list(kinds)[index]
        if index < len(kinds)
        else rng.choices(list(kinds), list(kinds.values()))[0]
    )
    if kind in SEMANTIC_KINDS:
        target = rng.choice(SIGNAL_FILES[reader])
        return Mutation(kind, target, (rng.choice(VARIANTS[reader, kind]), rng.randrange(2**31)))
    if kind in TEXT_KINDS:
        target = rng.choice(text)
    elif kind in BINARY_KINDS:
        target = rng.choice(binary)
    else:
        target = rng.choice(list(files))
    size = files[target]
    if kind in ("bytes", "bits"):
        count = rng.choice((1, 1, 2, 2, 4, 8))
        spots = []
        for _ in range(count):
            head = rng.random() < 0.5
            at = rng.randrange(min(size, 1024) if head else size) if size else 0
            spots.append((at, rng.randrange(256) if kind == "bytes" else 1 << rng.randrange(8)))
        return Mutation(kind, target, tuple(spots))
    if kind == "truncate":
        cut = rng.choice((rng.randrange(max(size, 1)), rng.randrange(min(size, 512) or 1)))
        return Mutation(kind, target, (cut,))
    if kind == "extend":
        return Mutation(kind, target, (rng.randrange(1, 4096), rng.randrange(2**31)))
    if kind == "field":
        return Mutation(kind, target, (rng.randrange(2**31), rng.choice(HOSTILE_TOKENS)))
    if kind == "non_utf8":
        garbage = rng.choice(("\xff", "\xfe\xff", "\xe9", "\xc3(", "\x80\x80", "\xed\xa0\x80"))
        return Mutation(kind, target, (rng.randrange(2**31), rng.randrange(2**31), garbage))
    if kind == "lines":
        return Mutation(kind, target, (rng.choice(("drop", "repeat")), rng.randrange(2**31)))
    if kind == "int_field":
        width = rng.choice((4, 8))
        limit = max(min(size, 2048) // width, 1)
        at = rng.randrange(limit) * width
        return Mutation(kind, target, (at, width, rng.choice(HOSTILE_INTS)))
    return Mutation(kind, target)


def apply(mutation: Mutation, reader: str, folder: pathlib.Path) -> None:
    """Applies `mutation` to the case folder `folder` (a copy of the reader's pristine one)."""
    path = folder / mutation.target
    kind, params = mutation.kind, mutation.params
    if kind in SEMANTIC_KINDS:
        SEMANTIC[reader](kind, params[0], random.Random(params[1]), path)
    elif kind in ("bytes", "bits"):
        data = bytearray(path.read_bytes())
        for at, value in params:
            if at < len(data):
                data[at] = value if kind == "bytes" else data[at] ^ value
        path.write_bytes(bytes(data))
    elif kind == "truncate":
        path.write_bytes(path.read_bytes()[: params[0]])
    elif kind == "extend":
        length, garbage_seed = params
        path.write_bytes(path.read_bytes() + random.Random(garbage_seed).randbytes(length))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "delete":
        path.unlink()
    elif kind == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif kind == "symlink_loop":
        path.unlink()
        path.symlink_to(path.name)
    elif kind == "dev_zero":
        path.unlink()
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    elif kind == "long_name":
        path.rename(path.with_name("L" * 200 + path.name))  # long, still legal (< 255 bytes)
    elif kind == "field":
        _replace_token(path, params[0], params[1])
    elif kind == "non_utf8":
        line_pick, column_pick, garbage = params
        lines = path.read_bytes().split(b"\n")
        k = line_pick % len(lines)
        at = column_pick % (len(lines[k]) + 1)
        lines[k] = lines[k][:at] + garbage.encode("latin-1") + lines[k][at:]
        path.write_bytes(b"\n".join(lines))
    elif kind == "lines":
        how, pick = params
        lines = path.read_bytes().split(b"\n")
        k = pick % len(lines)
        lines[k : k + 1] = [] if how == "drop" else [lines[k], lines[k]]
        path.write_bytes(b"\n".join(lines))
    elif kind == "int_field":
        at, width, value = params
        data = bytearray(path.read_bytes())
        if at + width <= len(data):
            data[at : at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        path.write_bytes(bytes(data))
    else:
        raise ValueError(f"unknown mutation {kind}")


def _replace_token(path: pathlib.Path, pick: int, value: str) -> None:
    import re

    text = path.read_bytes().decode("latin-1")
    tokens = [m.span() for m in re.finditer(r"[^\s,]+", text)]
    if not tokens:
        return
    start, stop = tokens[pick % len(tokens)]
    path.write_bytes((text[:start] + value + text[stop:]).encode("utf-8"))


def _mutate_code(kind: str, variant: str, rng: random.Random, path: pathlib.Path) -> None:
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        exam_id, tracings = f["exam_id"][:], f["tracings"][:]
    datasets: dict[str, Any] = {"exam_id": exam_id, "tracings": tracings}
    row = rng.randrange(len(exam_id) - 1)
    if kind == "dtype":
        if variant == "exam_id_float":
            datasets["exam_id"] = exam_id.astype(np.float64) + 0.5
        elif variant == "exam_id_text":
            datasets["exam_id"] = exam_id.astype("S12")
        elif variant == "compound":
            datasets["tracings"] = np.zeros(tracings.shape[:2], [("a", "f4"), ("b", "i2")])
        else:
            datasets["tracings"] = tracings.astype(variant)
    elif kind == "scale":
        value = {"x1000": 1000.0, "x1e30": 1e30, "zeros": 0.0}.get(variant)
        if value is not None:
            tracings[row] *= np.float32(value)
        elif variant == "constant":
            tracings[row] = 0.3
        elif variant in ("nan", "inf"):
            tracings[row, rng.randrange(tracings.shape[1]), rng.randrange(12)] = float(variant)
        else:  # a float64 beyond float32's range
            datasets["tracings"] = tracings.astype(np.float64)
            datasets["tracings"][row, 2000, 3] = 3.5e38
    else:
        path.unlink()
        with h5py.File(path, "w") as f:
            n = len(exam_id)
            if variant == "samples_1e7":
                f.create_dataset("exam_id", data=exam_id)
                f.create_dataset("tracings", (n, 10**7, 12), "f4", chunks=(1, 4096, 12))
            elif variant == "exams_1e9":
                f.create_dataset("exam_id", (10**9,), "i8", chunks=(4096,))
                f.create_dataset("tracings", (10**9, 4096, 12), "f4", chunks=(1, 4096, 12))
            elif variant == "samples_0":
                f.create_dataset("exam_id", data=exam_id)
                f.create_dataset("tracings", (n, 0, 12), "f4")
            elif variant == "leads_1000":
                f.create_dataset("exam_id", data=exam_id)
                f.create_dataset("tracings", (n, 4096, 1000), "f4", chunks=(1, 4096, 12))
            else:  # every row a dummy: exam_id 0 everywhere, on a file of 10**5 rows
                f.create_dataset("exam_id", data=np.zeros(10**5, np.int64))
                f.create_dataset("tracings", (10**5, 4096, 12), "f4", chunks=(1, 4096, 12))
        return
    path.unlink()
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data)


def _mutate_ptbxl(kind: str, variant: str, rng: random.Random, path: pathlib.Path) -> None:
    lines = path.read_text().splitlines()
    record = lines[0].split()
    signals = [line.split() for line in lines[1:13]]
    if kind == "dtype":
        for fields in signals:
            fields[1] = variant
    elif kind == "scale" and variant == "zeros":
        path.with_suffix(".dat").write_bytes(b"\0" * path.with_suffix(".dat").stat().st_size)
        for fields in signals:
            fields[5], fields[6] = "0", "0"  # initial value and checksum of all-zero samples
    elif kind == "scale":
        gain = variant.removeprefix("gain_")
        for fields in signals:
            fields[2] = fields[2].replace("1000.0", gain, 1)
    elif variant == "samples_1e12":
        record[3] = str(10**12)
    elif variant == "leads_1e6":
        record[1] = str(10**6)
    elif variant == "rate_1e12":
        record[2] = str(10**12)
    else:
        record[3] = "2"
    lines[0] = " ".join(record)
    lines[1:13] = [" ".join(fields) for fields in signals]
    path.write_text("\n".join(lines) + "\n")


def _mutate_cpsc(kind: str, variant: str, rng: random.Random, path: pathlib.Path) -> None:
    import numpy as np
    import scipy.io

    if kind == "huge":
        _patch_mat5(path, variant)
        return
    ecg = scipy.io.loadmat(path, mat_dtype=True)["ECG"][0, 0]
    fields: dict[str, Any] = {"sex": str(ecg["sex"][0]), "age": ecg["age"], "data": ecg["data"]}
    data = fields["data"]
    lead, sample = rng.randrange(12), rng.randrange(data.shape[1])
    if kind == "dtype":
        conversions: dict[str, Callable[[], Any]] = {
            "int16": lambda: (data * 1000).astype(np.int16),
            "float32": lambda: data.astype(np.float32),
            "uint8": lambda: (data * 100).astype(np.uint8),
            "complex": lambda: data + 1j,
            "char": lambda: "12 leads of text",
            "bool": lambda: data > 0,
            "empty": lambda: np.zeros((0, 0)),
            "3d": lambda: data[:, :, None].repeat(2, axis=2),
        }
        if variant in conversions:
            fields["data"] = conversions[variant]()
        elif variant == "age_text":
            fields["age"] = "fifty"
        elif variant == "sex_number":
            fields["sex"] = np.array([[1.0]])
        else:
            scipy.io.savemat(path, {"ECG_other": fields})
            return
    else:
        value = {"x1000": 1000.0, "x1e30": 1e30, "zeros": 0.0}.get(variant)
        if value is not None:
            fields["data"] = data * value
        elif variant == "constant":
            fields["data"] = np.full_like(data, 0.3)
        elif variant == "f64_huge":
            fields["data"][lead, sample] = 3.5e38
        else:
            fields["data"][lead, sample] = float(variant)
    scipy.io.savemat(path, {"ECG": fields}, do_compression=path.name == "A1980.mat")


def _patch_mat5(path: pathlib.Path, variant: str) -> None:
    """Declares a size the file does not hold, in the uncompressed structure of a MATLAB 5 file."""
    import struct
    import zlib

    data = bytearray(path.read_bytes())
    if data[128] == 15:  # compressed: patch the inflated element and store it uncompressed
        inner = zlib.decompress(bytes(data[136:]))
        data = bytearray(data[:128] + inner)
    if variant == "dims":
        at = data.index(struct.pack("<ii", 5, 8), 200)  # the dims of a field (miINT32, 8 bytes)
        data[at + 8 : at + 16] = struct.pack("<ii", 2**31 - 1, 2**31 - 1)
    elif variant == "tag_size":
        data[132:136] = struct.pack("<I", 2**32 - 1)
    elif variant == "name_length":
        at = data.index(struct.pack("<HH", 5, 4))  # the struct's field name length (small)
        data[at + 4 : at + 8] = struct.pack("<i", 2**31 - 1)
    else:
        at = data.index(b"sex\0")
        data[at - 8 : at - 4] = struct.pack("<I", 1)  # miINT8 names, size 2**32 - 1
        data[at - 4 : at] = struct.pack("<I", 2**32 - 1)
    path.write_bytes(bytes(data))


def _mutate_challenge(kind: str, variant: str, rng: random.Random, path: pathlib.Path) -> None:
    import struct

    import numpy as np
    import scipy.io

    header = path.with_suffix(".hea")
    if kind == "dtype":
        val = scipy.io.loadmat(path)["val"]
        converted = {
            "uint16": lambda: val.astype(np.uint16),
            "float64": lambda: val.astype(np.float64),
            "half": lambda: val.astype(np.float64) + 0.5,
            "int32_wide": lambda: val.astype(np.int32) * 70000,
            "uint8": lambda: val.astype(np.uint8),
            "float32_nan": lambda: np.where(val == val.max(), np.nan, val).astype(np.float32),
            "int64": lambda: val.astype(np.int64),
        }[variant]()
        if converted.dtype == np.int64:
            converted = converted.astype(np.float64)  # MATLAB v4 has no int64: written as double
        scipy.io.savemat(path, {"val": converted}, format="4")
    elif kind == "scale" and variant == "zeros":
        val = scipy.io.loadmat(path)["val"]
        scipy.io.savemat(path, {"val": np.zeros_like(val)}, format="4")
        lines = header.read_text().splitlines()
        for k in range(1, 13):
            fields = lines[k].split()
            fields[5], fields[6] = "0", "0"
            lines[k] = " ".join(fields)
        header.write_text("\n".join(lines) + "\n")
    elif kind == "scale":
        gain = {"gain_1": "1.0", "gain_1e-30": "1e-30", "gain_inf": "inf", "gain_0": "0",
                "gain_negative": "-1000.0"}[variant]  # fmt: skip
        text = header.read_text()
        header.write_text(text.replace("1000.0(0)", f"{gain}(0)").replace("1000(0)", f"{gain}(0)"))
    elif variant in ("v4_dims", "v4_namelen"):
        data = bytearray(path.read_bytes())
        if variant == "v4_dims":
            data[4:12] = struct.pack("<ii", 2**31 - 1, 2**31 - 1)
        else:
            data[16:20] = struct.pack("<i", 2**31 - 1)
        path.write_bytes(bytes(data))
    else:
        lines = header.read_text().splitlines()
        record = lines[0].split()
        record[3 if variant == "samples_1e12" else 1] = str(10**12 if variant[0] == "s" else 10**6)
        lines[0] = " ".join(record)
        header.write_text("\n".join(lines) + "\n")


SEMANTIC: dict[str, Callable[[str, str, random.Random, pathlib.Path], None]] = {
    "code": _mutate_code,
    "ptbxl": _mutate_ptbxl,
    "cpsc2018": _mutate_cpsc,
    "challenge": _mutate_challenge,
}


# --- Reading a case ------------------------------------------------------------------------


class CaseFailure(Exception):
    """A failure outcome found while reading a case: `outcome` is one of `FAILURES`."""

    def __init__(self, outcome: str, detail: str):
        super().__init__(detail)
        self.outcome = outcome


def open_reader(reader: str, folder: pathlib.Path, on_error: str):
    from ecgfm.data.challenge import ChallengeDataset
    from ecgfm.data.code import CodeDataset
    from ecgfm.data.cpsc2018 import Cpsc2018
    from ecgfm.data.ptbxl import PtbXl

    if reader == "code":
        return CodeDataset(folder, on_error=on_error)
    if reader == "ptbxl":
        return PtbXl(folder, sampling_rate=100, on_error=on_error)
    if reader == "cpsc2018":
        return Cpsc2018(folder, on_error=on_error)
    return ChallengeDataset(folder, on_error=on_error)


def inspect_paths(reader: str, folder: pathlib.Path, pristine: pathlib.Path) -> Iterator[str]:
    """What `ecgfm inspect` would be given for each record of the (pristine) folder."""
    if reader == "code":
        import h5py

        for shard in sorted(pristine.glob("exams_part*.hdf5")):
            with h5py.File(shard, "r") as f:
                yield f"{folder / shard.name}#{int(f['exam_id'][0])}"
    elif reader == "ptbxl":
        for header in sorted(pristine.rglob("*.hea")):
            yield str(folder / header.relative_to(pristine))
    else:
        for mat in sorted(pristine.glob("*.mat")):
            yield str(folder / mat.name)


def check_record(record: Any) -> None:
    """Raises `CaseFailure("implausible")` for a record no reader may return."""
    import numpy as np

    from ecgfm.data.record import MAX_ABS_MV

    signal_TC = record.signal
    problems = []
    if not isinstance(signal_TC, np.ndarray) or signal_TC.dtype != np.float32:
        problems.append(f"signal is {type(signal_TC).__name__} {getattr(signal_TC, 'dtype', '')}")
    elif signal_TC.ndim != 2 or signal_TC.shape[1] != 12 or signal_TC.shape[0] < 1:
        problems.append(f"signal shape {signal_TC.shape}")
    elif not np.isfinite(signal_TC).all():
        problems.append("non-finite samples")
    elif np.abs(signal_TC).max() > MAX_ABS_MV:
        problems.append(f"|x| up to {np.abs(signal_TC).max():g} mV")
    elif (signal_TC == signal_TC[0]).all():
        problems.append("every lead constant")
    rate = record.sampling_rate
    if not (isinstance(rate, float) and math.isfinite(rate) and rate > 0):
        problems.append(f"sampling rate {rate!r}")
    if problems:
        raise CaseFailure("implausible", f"record {record.record_id}: {'; '.join(problems)}")


def check_named(error: Exception, folder: pathlib.Path) -> None:
    """Raises `CaseFailure("unnamed")` for an `EcgFormatError` that names no path in `folder`."""
    if not str(getattr(error, "path", "")).startswith(str(folder)):
        raise CaseFailure("unnamed", f"EcgFormatError names {error.path!r}: {error}")


def exercise(reader: str, folder: pathlib.Path, pristine: pathlib.Path) -> tuple[str, str]:
    """Reads a case folder the three ways; returns (outcome, detail) or raises CaseFailure."""
    from ecgfm.data.formats import read_any
    from ecgfm.data.record import EcgFormatError

    outcome, detail = "read", ""
    try:
        dataset = open_reader(reader, folder, "raise")
        records = [dataset.read(record_id) for record_id in list(dataset.record_ids)]
        for record in records:
            check_record(record)
        detail = f"{len(records)} records"
    except EcgFormatError as err:
        check_named(err, folder)
        outcome, detail = "refused", err.problem[:200]
    try:
        dataset = open_reader(reader, folder, "skip")
    except EcgFormatError as err:  # a file without which nothing can be listed
        check_named(err, folder)
    else:
        before = len(dataset.skip_log)
        try:
            read = 0
            for record in dataset.iter_records(on_error="skip"):
                check_record(record)
                read += 1
        except CaseFailure:
            raise
        except Exception as err:
            raise CaseFailure("skip_broke", f"iterating in skip mode raised {err!r}") from err
        skipped = len(dataset.skip_log) - before
        if read + skipped != len(dataset.record_ids):
            raise CaseFailure(
                "skip_broke",
                f"{read} read + {skipped} skipped != {len(dataset.record_ids)} listed",
            )
        for where, _ in dataset.skip_log.skipped:
            if not where.startswith(str(folder)):
                raise CaseFailure("unnamed", f"skip log names {where!r}")
    for path in inspect_paths(reader, folder, pristine):
        try:
            check_record(read_any(path))
        except EcgFormatError as err:
            check_named(err, folder)
    return outcome, detail


def run_case(reader: str, index: int, seed: int, workdir: pathlib.Path, slot: str) -> dict:
    """Builds, mutates and reads one case in this process; returns its result."""
    pristine = workdir / "pristine" / reader
    mutation = plan(reader, index, seed, list_files(pristine))
    folder = workdir / "cases" / slot / reader
    shutil.rmtree(folder.parent, ignore_errors=True)
    folder.parent.mkdir(parents=True)
    shutil.copytree(pristine, folder, symlinks=True)
    try:
        apply(mutation, reader, folder)
    except Exception as err:  # a bug of this script, not of a reader
        shutil.rmtree(folder.parent, ignore_errors=True)
        detail = f"applying the mutation raised {type(err).__name__}: {err}"
        return {"reader": reader, "index": index, "mutation": mutation.describe(),
                "kind": mutation.kind, "outcome": "harness", "detail": detail,
                "seconds": 0.0}  # fmt: skip
    start = time.perf_counter()
    try:
        outcome, detail = exercise(reader, folder, pristine)
    except CaseFailure as failure:
        outcome, detail = failure.outcome, str(failure)
    except Exception as err:  # anything a reader let escape
        outcome = "exception"
        detail = f"{type(err).__name__}: {err}"[:300] + " | " + _where(err)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    return {
        "reader": reader,
        "index": index,
        "mutation": mutation.describe(),
        "kind": mutation.kind,
        "outcome": outcome,
        "detail": detail,
        "seconds": round(time.perf_counter() - start, 4),
    }


def _where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    inside = [f for f in frames if "ecgfm" in f.filename] or frames
    return f"{pathlib.Path(inside[-1].filename).name}:{inside[-1].lineno}" if inside else "?"


# --- Worker processes ----------------------------------------------------------------------


def probe(name: str) -> None:
    """What a harness must notice: a segfault, a hang, a stray exception (`--self-check`)."""
    if name == "segfault":
        import ctypes

        ctypes.string_at(0)
    elif name == "hang":
        time.sleep(3600)
    elif name == "stray":
        raise KeyError("Unable to synchronously open object")


def worker_main(workdir: pathlib.Path, seed: int, slot: str) -> None:
    """Reads case requests (JSON lines) on stdin, answers one JSON line each on stdout."""
    faulthandler.enable()  # a segfault's traceback goes to this worker's stderr log
    logging.disable(logging.WARNING)  # the readers' skip warnings would flood the log
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but results on the pipe
    # Imported before the first case, so that its time limit does not pay for them.
    import ecgfm.data.challenge
    import ecgfm.data.code
    import ecgfm.data.formats
    import ecgfm.data.ptbxl  # noqa: F401

    out.write(json.dumps({"ready": True}) + "\n")  # the case clock starts after this
    out.flush()

    while line := sys.stdin.readline():
        request = json.loads(line)
        if "probe" in request:
            try:
                probe(request["probe"])
                result = {"outcome": "read"}
            except Exception as err:
                result = {"outcome": "exception", "detail": f"{type(err).__name__}: {err}"}
        else:
            result = run_case(request["reader"], request["index"], seed, workdir, slot)
        out.write(json.dumps(result) + "\n")
        out.flush()


class _Worker:
    def __init__(self, workdir: pathlib.Path, seed: int, slot: int):
        self.slot = slot
        self.log = open(workdir / f"worker{slot}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--workdir", str(workdir),
             "--seed", str(seed), "--slot", str(slot)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
        )  # fmt: skip
        self.request: dict | None = None
        self.ready = False
        self.started = time.monotonic()
        self.buffer = b""

    def send(self, request: dict) -> None:
        self.request, self.started = request, time.monotonic()
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


def run(
    requests: Sequence[dict],
    *,
    workdir: pathlib.Path,
    seed: int = 0,
    workers: int = 2,
    timeout: float = 5.0,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Runs `requests` ({"reader", "index"} or {"probe"}) in worker processes; their results.

    A worker that dies gives its case the outcome `crash` (with the signal), one that takes
    over `timeout` seconds is killed and gives `timeout`; either way a fresh worker goes on.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    pending = collections.deque(requests)
    results: list[dict] = []
    pool: dict[int, _Worker] = {}
    files = {reader: list_files(workdir / "pristine" / reader) for reader in READERS
             if (workdir / "pristine" / reader).is_dir()}  # fmt: skip

    def lost(worker: _Worker, outcome: str, detail: str) -> None:
        request = worker.request or {}
        result = {**request, "outcome": outcome, "detail": detail, "kind": "probe",
                  "seconds": round(time.monotonic() - worker.started, 4)}  # fmt: skip
        if "reader" in request:
            mutation = plan(request["reader"], request["index"], seed, files[request["reader"]])
            result.update(mutation=mutation.describe(), kind=mutation.kind)
        results.append(result)
        worker.stop()
        del pool[worker.slot]

    try:
        while pending or any(w.request for w in pool.values()):
            for slot in range(workers):
                if slot not in pool and pending:
                    pool[slot] = _Worker(workdir, seed, slot)
                worker = pool.get(slot)
                if worker is not None and worker.ready and worker.request is None and pending:
                    worker.send(pending.popleft())
            waiting = {w.process.stdout.fileno(): w for w in pool.values()
                       if w.request or not w.ready}  # fmt: skip
            ready, _, _ = select.select(list(waiting), [], [], 0.05)
            for fd in ready:
                worker = waiting[fd]
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = worker.process.wait()
                    name = signal.Signals(-code).name if code < 0 else f"exit {code}"
                    if not worker.ready:
                        raise RuntimeError(f"a fuzz worker died starting ({name}): see its log")
                    lost(worker, "crash", f"worker died: {name}")
                    continue
                worker.buffer += chunk
                while b"\n" in worker.buffer:
                    line, worker.buffer = worker.buffer.split(b"\n", 1)
                    result = json.loads(line)
                    if result.get("ready"):
                        worker.ready = True
                        continue
                    results.append({**worker.request, **result})
                    worker.request = None
            now = time.monotonic()
            for worker in list(pool.values()):
                if worker.request and now - worker.started > timeout:
                    lost(worker, "timeout", f"no answer in {timeout:g} s")
                elif not worker.ready and now - worker.started > _STARTUP_S:
                    raise RuntimeError(f"a fuzz worker did not start in {_STARTUP_S} s")
            if progress:
                progress(len(results), len(requests))
    finally:
        for worker in list(pool.values()):
            worker.stop()
    return results


# --- Report --------------------------------------------------------------------------------


def summarize(results: Sequence[dict]) -> str:
    """Markdown tables: outcomes by reader, and by mutation kind."""
    by_reader: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    seconds: dict[str, list[float]] = collections.defaultdict(list)
    for result in results:
        by_reader[result["reader"]][result["outcome"]] += 1
        by_kind[result["kind"]][result["outcome"]] += 1
        seconds[result["reader"]].append(result["seconds"])
    columns = [*OK_OUTCOMES, *FAILURES]
    lines = ["| reader | cases | " + " | ".join(columns) + " | median s | max s |",
             "|---|" + "---:|" * (len(columns) + 3)]  # fmt: skip
    for reader in sorted(by_reader, key=READERS.index):
        counts, times = by_reader[reader], sorted(seconds[reader])
        lines.append(
            f"| {reader} | {sum(counts.values())} | "
            + " | ".join(str(counts[c]) for c in columns)
            + f" | {times[len(times) // 2]:.3f} | {times[-1]:.2f} |"
        )
    lines += ["", "| mutation | cases | read | refused | failures |", "|---|---:|---:|---:|---:|"]
    for kind in sorted(by_kind):
        counts = by_kind[kind]
        failed = sum(counts[c] for c in FAILURES)
        lines.append(
            f"| {kind} | {sum(counts.values())} | {counts['read']} | {counts['refused']} | "
            f"{failed} |"
        )
    return "\n".join(lines)


def failures(results: Sequence[dict]) -> list[dict]:
    return [r for r in results if r["outcome"] in FAILURES]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=200, help="cases per reader")
    parser.add_argument("--readers", default=",".join(READERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per case")
    parser.add_argument("--workdir", type=pathlib.Path, default=None)
    parser.add_argument("--replay", default=None, help="READER:INDEX: run one case in-process")
    parser.add_argument("--self-check", action="store_true", help="check the harness first")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write every result")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--slot", default="0", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="ecgfm_fuzz_"))
    if args.worker:
        worker_main(workdir, args.seed, args.slot)
        return 0
    build_samples(workdir)
    if args.replay:
        reader, index = args.replay.split(":")
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(run_case(reader, int(index), args.seed, workdir, "replay"), indent=2))
        return 0
    if args.self_check:
        checks = run([{"probe": p} for p in ("segfault", "hang", "stray")],
                     workdir=workdir, workers=1, timeout=2.0)  # fmt: skip
        print("self-check:", {r["probe"]: r["outcome"] for r in checks})
    readers = args.readers.split(",")
    requests = [{"reader": r, "index": i} for i in range(args.cases) for r in readers]
    start = time.time()
    results = run(
        requests, workdir=workdir, seed=args.seed, workers=args.workers, timeout=args.timeout,
        progress=lambda done, total: print(f"\r{done}/{total}", end="", file=sys.stderr),
    )  # fmt: skip
    print(file=sys.stderr)
    print(f"{len(results)} cases, seed {args.seed}, {args.workers} workers, "
          f"{time.time() - start:.0f} s wall\n")  # fmt: skip
    print(summarize(results))
    bad = failures(results)
    for result in bad:
        print(f"\nFAILED {result['reader']}:{result['index']} {result['outcome']}: "
              f"{result['mutation']}\n  {result['detail']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
