"""The one record type every reader returns, the canonical 12 leads, and bad-input handling.

Shape legend used across ecgfm: B batch, T samples (time), C leads, N tokens, D width, K classes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)  # fmt: skip
# The eight leads a 12-lead device records independently; the other four follow from I and II.
INDEPENDENT_LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
DERIVED_LIMB_LEADS: tuple[str, ...] = ("III", "aVR", "aVL", "aVF")

_LEAD_ALIASES = {name.upper(): name for name in LEADS} | {
    "D1": "I", "D2": "II", "D3": "III", "DI": "I", "DII": "II", "DIII": "III",
}  # fmt: skip

# The largest |amplitude| a record may hold, in mV (`check_signal`). Surface ECG waves are a
# few mV: R waves of 0.5-3 mV, LVH voltage criteria at 3.5-4.5 mV. Diagnostic electrocardiographs
# must record ±5 mV undistorted (ANSI/AAMI EC11, input dynamic range) and their inputs saturate
# not far above (a monitor built to IEC 60601-2-25/-27:2011 specifies an input range of -10 to
# +10 mV); a pacemaker spike or a saturated ADC can reach the storage format's limit,
# which for WFDB format 16 at 1000/mV (PTB-XL, every Challenge source) is ±32.77 mV. 50 mV is
# above all of these, so no sample those files can store is refused, and far below what a
# unit error gives (µV read as mV: ×1000) or garbage (1e30), which are.
MAX_ABS_MV = 50.0

Sex = Literal["M", "F"]
# Ages above this are not ages in years but codes (PTB-XL writes 300 for "over 89").
MAX_AGE_YEARS = 150.0
_SEX_WORDS: dict[str, Sex] = {"male": "M", "m": "M", "female": "F", "f": "F"}
_UNKNOWN_WORDS = frozenset({"", "unknown", "nan", "none"})


class EcgFormatError(ValueError):
    """A file that does not hold what its format promises; the message names the file."""

    def __init__(self, path: object, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclasses.dataclass(frozen=True, eq=False)
class EcgRecord:
    """One ECG as every reader returns it.

    Attributes:
      signal: `[T, 12]` float32 in millivolts, leads in `LEADS` order, only the real samples
        (padding that a format adds is removed).
      sampling_rate: samples per second (Hz).
      record_id: the source's own id of the exam/record, as a string.
      source: which dataset/format it came from, e.g. "code", "ptbxl", "cpsc2018", "challenge".
      labels: the source's own label namespace (CODE column names, PTB-XL SCP codes,
        CPSC class names, SNOMED-CT codes), sorted.
      patient_id: the source's patient id, or None where the source has none.
      age: years, or None when unknown.
      sex: "M", "F" or None.
      derived_leads: leads computed from others (e.g. III, aVR, aVL, aVF from I and II).
      metadata: source-specific fields a researcher needs (e.g. PTB-XL `strat_fold`).
    """

    signal: np.ndarray
    sampling_rate: float
    record_id: str
    source: str
    labels: tuple[str, ...] = ()
    patient_id: str | None = None
    age: float | None = None
    sex: Sex | None = None
    derived_leads: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(self.signal.shape[0])

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sampling_rate

    def lead(self, name: str) -> np.ndarray:
        """`[T]` samples of one lead, by canonical name."""
        return self.signal[:, LEADS.index(canonical_lead_name(name))]


def parse_sex(value: object, path: object, what: str = "sex") -> Sex | None:
    """Sex as "M" or "F" from text as files spell it ("Male", "f"); empty or "Unknown" is None.

    Anything else raises `EcgFormatError` naming `path` and `what` (the field, e.g. "ECG.sex").
    """
    text = "" if value is None else str(value)
    key = text.strip().lower()
    if key in _UNKNOWN_WORDS:
        return None
    if key not in _SEX_WORDS:
        raise EcgFormatError(path, f"{what} is {text!r}, expected Male or Female")
    return _SEX_WORDS[key]


def parse_age(value: object, path: object, what: str = "age") -> float | None:
    """Age in years from a number or text; empty, NaN or "Unknown" gives None.

    A value that is not a number, or lies outside 0..`MAX_AGE_YEARS`, raises `EcgFormatError`
    naming `path` and `what`. Codes such as PTB-XL's 300 ("over 89") are the reader's to map
    before calling this.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in _UNKNOWN_WORDS):
        return None
    try:
        years = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise EcgFormatError(path, f"{what} is {value!r}, not a number") from None
    if np.isnan(years):
        return None
    if not 0 <= years <= MAX_AGE_YEARS:
        raise EcgFormatError(path, f"{what} is {value!r}, not an age in years (0-150)")
    return years


def canonical_lead_name(name: str, path: object = "<lead names>") -> str:
    """Maps a lead name as files spell it ("AVR", "avr", "DII") to its canonical form."""
    key = name.strip().upper()
    if key not in _LEAD_ALIASES:
        raise EcgFormatError(path, f"unknown lead name {name!r}; expected one of {LEADS}")
    return _LEAD_ALIASES[key]


def derive_limb_leads(lead_I: np.ndarray, lead_II: np.ndarray) -> dict[str, np.ndarray]:
    """III, aVR, aVL, aVF from I and II (Einthoven's law and Goldberger's augmented leads)."""
    lead_III = lead_II - lead_I
    return {
        "III": lead_III,
        "aVR": -(lead_I + lead_II) / 2,
        "aVL": (lead_I - lead_III) / 2,
        "aVF": (lead_II + lead_III) / 2,
    }


def to_canonical_leads(
    signal_TC: np.ndarray, lead_names: Sequence[str], path: object
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Reorders `[T, C]` named leads into `[T, 12]` canonical order, deriving missing limb leads.

    Returns the signal (float32, or float64 when given float64: `check_signal` casts it once it
    is known to fit) and the names of the leads that were derived. Raises
    `EcgFormatError` naming `path` for an unknown or repeated lead, a column count that does not
    match the names, or a set of leads the 12 cannot be completed from.
    """
    if signal_TC.ndim != 2 or signal_TC.shape[1] != len(lead_names):
        raise EcgFormatError(
            path, f"signal has shape {signal_TC.shape}, expected [time, {len(lead_names)}] leads"
        )
    names = [canonical_lead_name(n, path) for n in lead_names]
    if len(set(names)) != len(names):
        raise EcgFormatError(path, f"repeated lead in {list(lead_names)}")
    if signal_TC.dtype.kind not in "iuf":
        raise EcgFormatError(path, f"signal has type {signal_TC.dtype}, expected real numbers")
    # At least float32, and float64 kept: a float64 above float32's range must reach
    # `check_signal` as the number it is, not as the inf a cast would make of it.
    dtype = np.result_type(signal_TC.dtype, np.float32)
    columns = {n: signal_TC[:, i].astype(dtype) for i, n in enumerate(names)}
    derived: tuple[str, ...] = ()
    missing = [n for n in LEADS if n not in columns]
    if missing:
        if set(missing) - set(DERIVED_LIMB_LEADS) or not {"I", "II"} <= columns.keys():
            raise EcgFormatError(
                path, f"has leads {names}; cannot complete 12 leads (missing {missing})"
            )
        with np.errstate(over="ignore", invalid="ignore"):  # check_signal refuses what overflows
            limb = derive_limb_leads(columns["I"], columns["II"])
        for n in missing:
            columns[n] = limb[n].astype(dtype)
        derived = tuple(n for n in LEADS if n in missing)
    return np.stack([columns[n] for n in LEADS], axis=1), derived


def check_signal(signal_TC: np.ndarray, path: object) -> np.ndarray:
    """Returns a `[T, 12]` float32 signal in mV that an ECG can be, or raises naming `path`.

    The plausibility rule every reader applies to every record it builds (one rule, so that a
    record refused from one dataset is refused from all):

    - `[T, 12]` real numbers, T ≥ 1;
    - every sample finite (no NaN, no ±Inf);
    - every |sample| ≤ `MAX_ABS_MV` (50 mV, the reasons are at the constant);
    - not every lead constant: a record whose 12 leads are each one value throughout (all zeros
      being the common case) holds no ECG. One or a few flat leads (an electrode off) pass.

    A record that breaks the rule raises `EcgFormatError`, which `on_error="skip"` counts and
    lists like any other bad record; it is never returned with a quality flag. Why an error:
    such a record carries no usable ECG, and a flag would have to be honoured by every consumer
    (`prepare`, the pipelines, probe and fine-tune): one that forgot would train on it, which is
    how a ×1000 CODE exam became "loss is nan at step 1" with no pointer to the exam. The check
    is on the values as read, before the cast to float32, so a float64 above float32's range is
    reported as the number it is and never becomes inf.
    """
    if signal_TC.ndim != 2 or signal_TC.shape[1] != len(LEADS):
        raise EcgFormatError(path, f"signal has shape {signal_TC.shape}, expected [time, 12]")
    if signal_TC.shape[0] == 0:
        raise EcgFormatError(path, "signal has no samples")
    if signal_TC.dtype.kind not in "iuf":
        raise EcgFormatError(path, f"signal has type {signal_TC.dtype}, expected real numbers")
    if signal_TC.dtype.kind != "f":
        signal_TC = signal_TC.astype(np.float64)
    # NaN propagates through max and min, Inf exceeds the bound: two passes check both rules.
    if not max(signal_TC.max(), -signal_TC.min()) <= MAX_ABS_MV:
        _raise_implausible(signal_TC, path)
    first = signal_TC[0]
    # A real ECG differs from its first sample at its middle or its end: the full comparison
    # runs only on what is flat there (it costs ~4x the two passes above).
    if (
        np.array_equal(signal_TC[-1], first)
        and np.array_equal(signal_TC[signal_TC.shape[0] // 2], first)
        and (signal_TC == first).all()
    ):
        level = ", ".join(f"{v:g}" for v in np.unique(signal_TC[0])[:3])
        raise EcgFormatError(
            path,
            f"every lead is constant over its {signal_TC.shape[0]} samples (at {level} mV): "
            "a flat line, not an ECG",
        )
    return np.ascontiguousarray(signal_TC, dtype=np.float32)


def _raise_implausible(signal_TC: np.ndarray, path: object) -> None:
    """Raises naming the first non-finite sample, else the samples beyond `MAX_ABS_MV`."""
    finite = np.isfinite(signal_TC)
    if not finite.all():
        bad_t, bad_c = np.nonzero(~finite)
        raise EcgFormatError(
            path,
            f"{bad_t.size} non-finite samples (NaN/Inf), first at sample {bad_t[0]} "
            f"of lead {LEADS[bad_c[0]]}",
        )
    beyond = np.abs(signal_TC) > MAX_ABS_MV
    bad_t, bad_c = np.nonzero(beyond)
    peak = float(np.abs(signal_TC).max())
    raise EcgFormatError(
        path,
        f"{bad_t.size} samples beyond ±{MAX_ABS_MV:g} mV (up to {peak:.4g} mV), first at sample "
        f"{bad_t[0]} of lead {LEADS[bad_c[0]]}: no ECG reaches that (wrong units, or corrupted "
        "samples?)",
    )


@dataclasses.dataclass
class SkipLog:
    """Records that a reader skipped because the caller asked it to skip bad input.

    Nothing is dropped silently: each skip is logged as a warning and kept here with its reason.
    """

    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def add(self, where: object, reason: str) -> None:
        log.warning("skipped %s: %s", where, reason)
        self.skipped.append((str(where), reason))

    def __len__(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        if not self.skipped:
            return "no records skipped"
        lines = [f"{len(self.skipped)} records skipped:"]
        lines += [f"  {where}: {reason}" for where, reason in self.skipped]
        return "\n".join(lines)


OnError = Literal["raise", "skip"]
ON_ERROR_CHOICES: tuple[str, ...] = ("raise", "skip")


def check_on_error(on_error: str) -> OnError:
    """Returns `on_error` if it is "raise" or "skip"; anything else (a typo) raises ValueError."""
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error is {on_error!r}, expected one of {ON_ERROR_CHOICES}")
    return on_error  # type: ignore[return-value]


def handle_bad_record(error: EcgFormatError, on_error: OnError, skip_log: SkipLog | None) -> None:
    """Raises `error` unless the caller asked to skip, in which case it is counted and logged."""
    if check_on_error(on_error) == "raise":
        raise error
    if skip_log is None:
        raise ValueError("on_error='skip' needs a SkipLog to record what was skipped") from error
    skip_log.add(error.path, error.problem)


def read_each(
    read: Callable[[Any], EcgRecord],
    record_ids: Iterable[Any],
    on_error: OnError = "raise",
    skip_log: SkipLog | None = None,
) -> Iterator[EcgRecord]:
    """Yields `read(id)` for each id; a bad record raises, or is skipped, counted and logged.

    `on_error` and `skip_log` are checked here, before the first record is read.
    """
    if check_on_error(on_error) == "skip" and skip_log is None:
        raise ValueError("on_error='skip' needs a SkipLog to record what was skipped")
    return _read_each(read, record_ids, on_error, skip_log)


def _read_each(
    read: Callable[[Any], EcgRecord],
    record_ids: Iterable[Any],
    on_error: OnError,
    skip_log: SkipLog | None,
) -> Iterator[EcgRecord]:
    for record_id in record_ids:
        try:
            record = read(record_id)
        except EcgFormatError as error:
            handle_bad_record(error, on_error, skip_log)
            continue
        yield record
