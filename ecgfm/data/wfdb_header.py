"""WFDB headers (`.hea`) read strictly, and WFDB format-16 samples turned into millivolts.

PTB-XL's `.dat` files and the PhysioNet/CinC Challenge's `.mat` files both store format 16
(int16) samples described by a WFDB header. Headers are parsed here rather than with
`wfdb.rdheader`, which accepts a header whose signal count disagrees with its signal lines and
silently turns a missing or zero gain into 200/mV, or an unreadable sampling rate into 250 Hz
(checked with wfdb 4.3.1): a corrupt header would read with wrong amplitudes and no error.

Header layout (WFDB "header" format): a record line `name n_leads rate num_samples [time date]`,
then one signal line per lead `file fmt[xN][:skew][+offset] gain(baseline)/units adc_res adc_zero
init checksum block_size lead_name`, and `#` comment lines.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np

from ecgfm.data.files import read_bytes
from ecgfm.data.record import EcgFormatError

# WFDB format 16 marks a missing sample with the smallest int16.
INVALID_SAMPLE = -(2**15)
# Bounds on what a header may declare, far outside any ECG's and checked before anything is
# allocated: real headers are < 1 KB, 12-15 leads, 100-1000 Hz (PTB: 1000, INCART: 257).
MAX_HEADER_BYTES = 2**20
MAX_LEADS = 64
MAX_SAMPLING_RATE = 100_000.0
# A checksum is a 16-bit sum, printed signed or unsigned; a baseline an ADC value.
_CHECKSUM_RANGE = (-(2**15), 2**16 - 1)
_BASELINE_LIMIT = 2**31

_FORMAT = re.compile(
    r"^(?P<fmt>\d+)(?:x(?P<per_frame>\d+))?(?::(?P<skew>\d+))?(?:\+(?P<offset>\d+))?$"
)
_GAIN = re.compile(
    r"^(?P<gain>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:\((?P<baseline>-?\d+)\))?"
    r"(?:/(?P<units>\S+))?$"
)


@dataclasses.dataclass(frozen=True)
class WfdbHeader:
    """What a single-file, format-16 WFDB header says (one entry per lead where a tuple).

    `comment_lines` are the `#` lines as (line number, text after the `#`, stripped).
    """

    record_name: str
    sampling_rate: float
    num_samples: int
    signal_file: str
    byte_offset: int
    lead_names: tuple[str, ...]
    gains: tuple[float, ...]
    baselines: tuple[int, ...]
    checksums: tuple[int, ...]
    comment_lines: tuple[tuple[int, str], ...]

    @property
    def num_leads(self) -> int:
        return len(self.lead_names)


def read_wfdb_header(path: str | pathlib.Path) -> WfdbHeader:
    """Parses a `.hea` of one format-16 signal file in mV; any field it cannot read raises.

    Raises `EcgFormatError` naming the header and the line for: a missing file, a record line
    without name, lead count, rate or sample count, a record name that is not the file name, a
    lead count that disagrees with the signal lines, a sampling rate that is not finite and
    positive up to `MAX_SAMPLING_RATE`, more than `MAX_LEADS` leads, a format other than 16 (one
    sample per frame, no skew), a missing, unreadable, zero, negative or infinite gain, units
    other than mV, a checksum that is not a 16-bit sum, signal lines that name several files or
    byte offsets, a header over `MAX_HEADER_BYTES`, or a path that is not a regular file.
    """
    path = pathlib.Path(path)
    data = read_bytes(path, missing="WFDB header file not found", max_bytes=MAX_HEADER_BYTES)
    # Headers are ASCII; a byte that is not UTF-8 becomes U+FFFD and fails the field it is in.
    text = data.decode("utf-8", errors="replace")
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1)]
    body = [(i, line) for i, line in lines if line and not line.startswith("#")]
    if not body:
        raise EcgFormatError(path, "header has no record line")
    i, record_line = body[0]
    fields = record_line.split()
    if len(fields) < 4:
        raise EcgFormatError(
            path, f"line {i}: record line {record_line!r} lacks name, leads, rate or samples"
        )
    record_name, num_leads, rate, num_samples = fields[:4]
    if "/" in record_name:
        raise EcgFormatError(path, f"line {i}: multi-segment record {record_name!r}")
    if record_name != path.stem:
        raise EcgFormatError(path, f"line {i}: header is for record {record_name!r}")
    try:
        # `rate` may carry a counter frequency and base counter: "500/1000(0)".
        sampling_rate = float(rate.split("/")[0])
        n_leads, n_samples = int(num_leads), int(num_samples)
    except ValueError as err:
        raise EcgFormatError(path, f"line {i}: unreadable record line {record_line!r}") from err
    if not sampling_rate > 0 or n_leads <= 0 or n_samples <= 0:
        raise EcgFormatError(
            path, f"line {i}: record line {record_line!r} has a non-positive field"
        )
    if not sampling_rate <= MAX_SAMPLING_RATE or n_leads > MAX_LEADS:
        raise EcgFormatError(
            path,
            f"line {i}: record line {record_line!r}: sampling rate over {MAX_SAMPLING_RATE:g} Hz "
            f"(or not finite), or over {MAX_LEADS} leads",
        )
    signal_lines = body[1:]
    if len(signal_lines) != n_leads:
        raise EcgFormatError(
            path, f"record line says {n_leads} leads but {len(signal_lines)} signal lines follow"
        )
    leads = [_parse_signal_line(path, i, line) for i, line in signal_lines]
    files = {(lead["file"], lead["offset"]) for lead in leads}
    if len(files) != 1:
        raise EcgFormatError(path, f"signal lines name several files or offsets {sorted(files)}")
    signal_file, byte_offset = files.pop()
    if "/" in signal_file or "\\" in signal_file or signal_file in (".", ".."):
        raise EcgFormatError(
            path, f"signal file {signal_file!r} is not a file name in the header's folder"
        )
    return WfdbHeader(
        record_name=record_name,
        sampling_rate=sampling_rate,
        num_samples=n_samples,
        signal_file=signal_file,
        byte_offset=byte_offset,
        lead_names=tuple(lead["name"] for lead in leads),
        gains=tuple(lead["gain"] for lead in leads),
        baselines=tuple(lead["baseline"] for lead in leads),
        checksums=tuple(lead["checksum"] for lead in leads),
        comment_lines=tuple((i, line[1:].strip()) for i, line in lines if line.startswith("#")),
    )


def _parse_signal_line(path: pathlib.Path, i: int, line: str) -> dict:
    """One signal line: `file fmt gain(baseline)/units adcres adczero init checksum block lead`."""
    fields = line.split()
    if len(fields) < 9:
        raise EcgFormatError(path, f"line {i}: signal line {line!r} has fewer than 9 fields")
    file, fmt, gain_field, _adc_res, adc_zero, _init, checksum, _block = fields[:8]
    fmt_match, gain_match = _FORMAT.match(fmt), _GAIN.match(gain_field)
    if (
        fmt_match is None
        or fmt_match["fmt"] != "16"
        or int(fmt_match["per_frame"] or 1) != 1
        or int(fmt_match["skew"] or 0) != 0
    ):
        raise EcgFormatError(
            path, f"line {i}: signal format {fmt!r}, expected 16 (one sample per frame, no skew)"
        )
    if gain_match is None:
        # Also a gain left out, "(0)/mV": WFDB would read it as 200/mV.
        raise EcgFormatError(path, f"line {i}: unreadable gain {gain_field!r}")
    units = gain_match["units"] or "mV"
    if units.lower() != "mv":
        raise EcgFormatError(path, f"line {i}: units {units!r}, expected mV")
    try:
        gain = float(gain_match["gain"])
        baseline = int(gain_match["baseline"] or adc_zero)
        checksum_value = int(checksum)
    except ValueError as err:
        raise EcgFormatError(path, f"line {i}: unreadable signal line {line!r}") from err
    if not 0 < gain < np.inf:
        # A gain of 0 means "uncalibrated" in WFDB: there is no way to get millivolts.
        raise EcgFormatError(path, f"line {i}: gain {gain_field!r} is not positive and finite")
    if not _CHECKSUM_RANGE[0] <= checksum_value <= _CHECKSUM_RANGE[1]:
        raise EcgFormatError(path, f"line {i}: checksum {checksum} is not a 16-bit sum")
    if abs(baseline) >= _BASELINE_LIMIT:
        raise EcgFormatError(path, f"line {i}: baseline {baseline} is not an ADC value")
    return {
        "file": file,
        "offset": int(fmt_match["offset"] or 0),
        "gain": gain,
        "baseline": baseline,
        "checksum": checksum_value,
        "name": " ".join(fields[8:]),
    }


def digital_to_millivolts(
    digital_TC: np.ndarray, header: WfdbHeader, signal_path: object
) -> np.ndarray:
    """`[T, C]` float64 mV, `(digital - baseline) / gain` per lead, from `[T, C]` stored samples.

    The samples must be format 16's, int16 values, whatever type the file keeps them in (MATLAB
    can save them as double or uint16): a non-integer, NaN, or a value outside -32768..32767
    raises. So the header's WFDB checksums (16-bit sums per lead) are checked for every stored
    type, and corrupted bytes in a file of the right size raise; a uint16 `val` that wrapped
    negative samples to 32768..65535 (and would read up to 65 mV) is refused rather than passing
    the mod-2**16 sum. WFDB's invalid sample (-32768) becomes NaN, which `check_signal` then
    reports. Raises `EcgFormatError` naming `signal_path`.
    """
    expected = (header.num_samples, header.num_leads)
    if digital_TC.shape != expected:
        raise EcgFormatError(
            signal_path, f"holds samples of shape {digital_TC.shape}, the header says {expected}"
        )
    if digital_TC.dtype.kind not in "iuf":
        raise EcgFormatError(signal_path, f"holds {digital_TC.dtype} samples, not numbers")
    if digital_TC.dtype != np.int16:
        with np.errstate(invalid="ignore"):
            bad_TC = ~((digital_TC >= INVALID_SAMPLE) & (digital_TC <= 2**15 - 1))
            if digital_TC.dtype.kind == "f":
                bad_TC |= np.round(digital_TC) != digital_TC
        if bad_TC.any():
            bad_t, bad_c = np.nonzero(bad_TC)
            raise EcgFormatError(
                signal_path,
                f"{bad_t.size} {digital_TC.dtype} samples are not int16 values, as WFDB format 16 "
                f"(the header's) stores, first {digital_TC[bad_t[0], bad_c[0]]} at sample "
                f"{bad_t[0]} of lead {header.lead_names[bad_c[0]]}",
            )
    physical_TC = digital_TC.astype(np.float64)
    # Writers differ in whether they print the 16-bit sum signed or unsigned.
    sums = digital_TC.astype(np.int64).sum(axis=0) % 2**16
    for name, promised, found in zip(
        header.lead_names, header.checksums, sums.tolist(), strict=True
    ):
        if (promised - found) % 2**16:
            found = found - 2**16 if promised < 0 and found >= 2**15 else found
            raise EcgFormatError(
                signal_path,
                f"lead {name}: checksum {found} differs from the header's {promised} "
                "(corrupted samples?)",
            )
    physical_TC[digital_TC == INVALID_SAMPLE] = np.nan
    physical_TC -= np.asarray(header.baselines, dtype=np.float64)
    physical_TC /= np.asarray(header.gains, dtype=np.float64)
    return physical_TC
