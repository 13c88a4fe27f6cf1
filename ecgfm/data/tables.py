"""Metadata tables (`exams.csv`, `ptbxl_database.csv`) read with pandas, row errors counted.

pandas' C parser reads a million-row table in seconds, but a row with more fields than the
header stops it for the whole file. Here such a row raises `EcgFormatError` naming its line, or
with `on_error="skip"` is left out and listed in the `SkipLog`, and the rest is read.
"""

from __future__ import annotations

import csv
import pathlib
import re
import warnings
from typing import Any

import numpy as np
import pandas as pd

from ecgfm.data.files import check_file, csv_error, non_utf8_lines
from ecgfm.data.record import EcgFormatError, OnError, SkipLog, handle_bad_record

_MAX_HEADER_BYTES = 2**20  # the header line is read up to this many bytes
# pandas' wording for a row it leaves out under on_bad_lines="warn" (checked with pandas 3.1).
_BAD_LINE = re.compile(r"Skipping line (\d+): expected (\d+) fields, saw (\d+)")


def read_csv_table(
    path: pathlib.Path, on_error: OnError, skip_log: SkipLog | None, **read_csv: Any
) -> tuple[pd.DataFrame, np.ndarray]:
    """Reads a CSV into a DataFrame (RangeIndex) and the `[N]` file line of each row.

    The header is line 1: its names are stripped and must not repeat. A blank line is kept as
    an all-empty row (so line numbers stay true and the caller's checks reject it). A row with
    too many fields, or with bytes that are not UTF-8, raises `EcgFormatError` naming its line,
    or with `on_error="skip"` is counted in `skip_log` and left out. Assumes no quoted field
    spans lines. `read_csv` goes to `pd.read_csv`.
    """
    check_file(path)  # before pandas opens it: a FIFO would block it forever
    header = read_csv_header(path)
    try:
        frame, bad_lines = _read_frame(path, on_error, skip_log, "strict", read_csv)
        not_utf8: list[int] = []
    except UnicodeDecodeError as err:
        # Only this path pays for finding the lines. A header that is not UTF-8 failed above.
        not_utf8 = non_utf8_lines(path, limit=1 if on_error == "raise" else None)
        if on_error == "raise" or not not_utf8:
            raise csv_error(path, err) from None
        frame, bad_lines = _read_frame(path, on_error, skip_log, "replace", read_csv)
    lines = np.setdiff1d(np.arange(2, 2 + len(frame) + len(bad_lines)), bad_lines)
    frame.columns = header
    frame = frame.reset_index(drop=True)
    if not_utf8:
        for line in not_utf8:
            handle_bad_record(
                EcgFormatError(path, f"line {line}: not UTF-8 text"), on_error, skip_log
            )
        keep = ~np.isin(lines, not_utf8)
        frame, lines = frame.loc[keep].reset_index(drop=True), lines[keep]
    return frame, lines


def _read_frame(
    path: pathlib.Path,
    on_error: OnError,
    skip_log: SkipLog | None,
    encoding_errors: str,
    read_csv: dict[str, Any],
) -> tuple[pd.DataFrame, list[int]]:
    """pandas' frame of `path` and the lines it left out for having too many fields."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        warnings.simplefilter("always", pd.errors.DtypeWarning)
        try:
            frame = pd.read_csv(
                path,
                on_bad_lines="warn",
                skip_blank_lines=False,
                low_memory=True,
                encoding_errors=encoding_errors,
                **read_csv,
            )
        except UnicodeDecodeError:
            raise
        except (ValueError, OverflowError, pd.errors.ParserError) as err:
            raise EcgFormatError(path, f"cannot be read as CSV: {err}") from err
        except OSError as err:
            raise EcgFormatError(path, f"cannot be read: {err}") from err
    bad_lines = []
    for warning in caught:
        if issubclass(warning.category, pd.errors.DtypeWarning):
            continue  # a column typed differently per chunk; the caller checks cells, not dtypes
        if not issubclass(warning.category, pd.errors.ParserWarning):
            warnings.warn(warning.message, warning.category, stacklevel=3)
            continue
        found = _BAD_LINE.findall(str(warning.message))
        if not found:
            raise EcgFormatError(path, f"cannot be read as CSV: {warning.message}")
        for line, expected, saw in found:
            bad_lines.append(int(line))
            problem = f"line {line}: has {saw} fields, the header has {expected}"
            handle_bad_record(EcgFormatError(path, problem), on_error, skip_log)
    return frame, bad_lines


def read_csv_header(path: pathlib.Path) -> list[str]:
    """The stripped column names of a CSV; a missing file, no header or a repeat raises."""
    try:
        with open(path, "rb") as f:
            first_line = f.readline(_MAX_HEADER_BYTES)
        header = [name.strip() for name in next(csv.reader([first_line.decode("utf-8-sig")]), [])]
    except FileNotFoundError as err:
        raise EcgFormatError(path, "is missing") from err
    except UnicodeDecodeError:
        raise EcgFormatError(path, "line 1: header is not UTF-8 text") from None
    except (csv.Error, OSError) as err:
        raise EcgFormatError(path, f"cannot be read as CSV: {err}") from err
    if not header:
        raise EcgFormatError(path, "is empty (no header)")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise EcgFormatError(path, f"header repeats columns {repeated}")
    return header
