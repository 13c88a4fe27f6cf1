"""Opens one ECG from any supported path, for `ecgfm inspect` and `ecgfm plot`.

Accepted paths:
  - `DIR/exams_part0.hdf5#EXAM_ID`: one exam of a CODE-15%/CODE-II shard;
  - `X.hea`, `X.mat` or `X` with a WFDB header that points at a MATLAB v4 `.mat`:
    PhysioNet/CinC Challenge layout;
  - `X.hea`, `X.dat` or `X` with a WFDB format-16 `.dat`: a PTB-XL record (labels when the
    dataset's `ptbxl_database.csv` is found above it);
  - `A1234.mat` with no header beside it: CPSC 2018 original (labels from a `REFERENCE.csv`
    beside it, when there is one).
"""

from __future__ import annotations

import pathlib

from ecgfm.data.files import is_regular_file, read_bytes
from ecgfm.data.record import EcgFormatError, EcgRecord
from ecgfm.data.wfdb_header import MAX_HEADER_BYTES

FORMATS = ("code", "challenge", "ptbxl", "cpsc2018")


def detect_format(path: str | pathlib.Path) -> str:
    """Names the layout of `path` (one of `FORMATS`), or raises `EcgFormatError`."""
    text = str(path)
    if "#" in text:
        shard = pathlib.Path(text.rsplit("#", 1)[0])
        if shard.suffix.lower() in (".hdf5", ".h5"):
            return "code"
        raise EcgFormatError(text, "'#EXAM_ID' is only valid after a CODE .hdf5 shard")
    p = pathlib.Path(text)
    header = p.with_suffix(".hea") if p.suffix.lower() in (".hea", ".mat", ".dat") else None
    if header is None:
        header = p.parent / (p.name + ".hea")
    if is_regular_file(header):
        signal_files = _header_signal_files(header)
        if any(name.lower().endswith(".mat") for name in signal_files):
            return "challenge"
        return "ptbxl"
    if p.suffix.lower() == ".mat" and is_regular_file(p):
        return "cpsc2018"
    if not _exists(p) and not _exists(header):
        raise EcgFormatError(text, "no such file (nor a WFDB header beside it)")
    raise EcgFormatError(text, f"cannot tell the format; expected one of {FORMATS}")


def _exists(path: pathlib.Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def _header_signal_files(header: pathlib.Path) -> list[str]:
    """The signal file names a WFDB header's signal lines point at."""
    text = read_bytes(header, max_bytes=MAX_HEADER_BYTES).decode("utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [line.split()[0] for line in lines[1:]]


def read_any(path: str | pathlib.Path) -> EcgRecord:
    """Reads one ECG from any path `detect_format` accepts."""
    fmt = detect_format(path)
    if fmt == "code":
        from ecgfm.data.code import read_code_exam

        shard, exam_id = str(path).rsplit("#", 1)
        if not exam_id.strip().isdigit():
            raise EcgFormatError(path, f"exam id {exam_id!r} is not an integer")
        return read_code_exam(shard, int(exam_id))
    if fmt == "challenge":
        from ecgfm.data.challenge import read_challenge_record

        return read_challenge_record(path)
    if fmt == "ptbxl":
        from ecgfm.data.ptbxl import read_ptbxl_record

        return read_ptbxl_record(path)
    from ecgfm.data.cpsc2018 import read_cpsc_mat_with_reference

    return read_cpsc_mat_with_reference(path)
