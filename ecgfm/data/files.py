"""Opening the files of a dataset as untrusted input: every failure is an `EcgFormatError`.

A dataset folder names files in its own text (a header's signal file, a CSV's `trace_file` or
`filename_hr`), so a path may be a folder, a FIFO (reading one blocks forever), a device such as
`/dev/zero` (never ends), a symlink loop (`ELOOP`), a name longer than the file system allows
(`ENAMETOOLONG`, raised by `os.stat` itself) or hold a NUL byte (`ValueError`). The readers go
through `check_file` (before handing a path to a C library: h5py, pandas, `np.fromfile`) or
`read_bytes` (which opens without blocking and checks what it opened), so each of those is an
`EcgFormatError` naming the path, and no file can hang a reader.
"""

from __future__ import annotations

import os
import pathlib
import stat

from ecgfm.data.record import EcgFormatError

MIB = 2**20


def _os_problem(err: OSError | ValueError) -> str:
    """`strerror` without the path (the error names the path already)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


def check_file(
    path: str | os.PathLike, *, missing: str = "is missing", max_bytes: int | None = None
) -> int:
    """The size of `path`, a regular file no larger than `max_bytes`; anything else raises.

    `missing` is the problem a missing file is reported with (each reader has its wording).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise EcgFormatError(path, missing) from None
    except (OSError, ValueError) as err:
        raise EcgFormatError(path, f"cannot be opened: {_os_problem(err)}") from None
    return _check_stat(path, info, max_bytes)


def _check_stat(path: object, info: os.stat_result, max_bytes: int | None) -> int:
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO, socket or device"
        raise EcgFormatError(path, f"is {kind}, not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise EcgFormatError(
            path, f"is {info.st_size} bytes, more than the {max_bytes} this format may take"
        )
    return info.st_size


def read_bytes(path: str | os.PathLike, *, missing: str = "is missing", max_bytes: int) -> bytes:
    """The bytes of the regular file `path` (at most `max_bytes`); anything else raises.

    Opens with `O_NONBLOCK` and checks the opened file, so a FIFO put in a file's place is
    refused rather than waited on.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise EcgFormatError(path, missing) from None
    except (OSError, ValueError) as err:
        raise EcgFormatError(path, f"cannot be opened: {_os_problem(err)}") from None
    try:
        _check_stat(path, os.fstat(fd), max_bytes)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise EcgFormatError(path, f"cannot be read: {_os_problem(err)}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise EcgFormatError(path, f"holds more than the {max_bytes} bytes this format may take")
    return data


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a regular file; never raises (a name too long is simply not one)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def non_utf8_lines(path: str | os.PathLike, limit: int | None = None) -> list[int]:
    """The numbers (from 1) of the lines of `path` that are not UTF-8 text (the first `limit`)."""
    bad: list[int] = []
    try:
        with open(pathlib.Path(path), "rb") as f:
            for number, line in enumerate(f, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    bad.append(number)
                    if len(bad) == limit:
                        break
    except OSError as err:
        raise EcgFormatError(path, f"cannot be read: {_os_problem(err)}") from None
    return bad


def csv_error(path: str | os.PathLike, err: Exception) -> EcgFormatError:
    """The `EcgFormatError` for a CSV that a parser refused; bytes not UTF-8 named by line."""
    if isinstance(err, UnicodeDecodeError):
        bad = non_utf8_lines(path, limit=1)
        return EcgFormatError(path, f"line {bad[0] if bad else '?'}: not UTF-8 text")
    return EcgFormatError(path, f"cannot be read as CSV: {err}")
