"""Signal preprocessing as pure functions, and `Preprocessing`, the spec a checkpoint stores.

Every function takes a `[T, C]` signal in millivolts, leaves its input untouched and returns a
new float32 array (filters run in float64). Filters are zero-phase (forward-backward), so a
Butterworth filter of order n acts as |H(f)|² of that filter and shifts no wave in time.

A `Preprocessing` is a plain value (JSON-serialisable, hashable): it is written into every
checkpoint, and `check_compatible` refuses input that was not prepared the way the encoder
expects.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import scipy.signal

from ecgfm.data import windows
from ecgfm.data.record import LEADS, EcgRecord

Normalization = Literal[
    "none", "per_lead_standardize", "per_record_standardize", "per_lead_min_max"
]
NORMALIZATIONS: tuple[str, ...] = (
    "none",
    "per_lead_standardize",
    "per_record_standardize",
    "per_lead_min_max",
)
POWERLINE_HZ: tuple[float, ...] = (50.0, 60.0)
# Up/down factors above this make the polyphase filter needlessly long; real ECG rates
# (100, 250, 257, 360, 400, 500, 1000 Hz) all fit.
_MAX_RESAMPLE_FACTOR = 1000


def _as_signal(signal_TC: np.ndarray) -> np.ndarray:
    signal_TC = np.asarray(signal_TC)
    if signal_TC.ndim != 2:
        raise ValueError(f"expected a [time, leads] signal, got shape {signal_TC.shape}")
    if signal_TC.shape[0] == 0:
        raise ValueError("signal has no samples")
    return signal_TC.astype(np.float64)


def _check_rate(sampling_rate: float, name: str = "sampling_rate") -> None:
    if not (math.isfinite(sampling_rate) and sampling_rate > 0):
        raise ValueError(f"{name} must be a positive number of Hz, got {sampling_rate}")


def resample_factors(from_hz: float, to_hz: float) -> tuple[int, int]:
    """The integer (up, down) with up/down = to_hz/from_hz, e.g. 500→400 Hz gives (4, 5)."""
    _check_rate(from_hz, "from_hz")
    _check_rate(to_hz, "to_hz")
    exact = Fraction(float(to_hz)) / Fraction(float(from_hz))
    ratio = exact.limit_denominator(_MAX_RESAMPLE_FACTOR)
    if abs(ratio - exact) > 1e-9 * exact or ratio.numerator > _MAX_RESAMPLE_FACTOR:
        raise ValueError(
            f"cannot resample {from_hz} Hz to {to_hz} Hz: the ratio is not a fraction with "
            f"up and down factors of at most {_MAX_RESAMPLE_FACTOR}"
        )
    return ratio.numerator, ratio.denominator


def resampled_length(num_samples: int, from_hz: float, to_hz: float) -> int:
    """round(T · to/from), halves rounded up: the length `resample` returns."""
    up, down = resample_factors(from_hz, to_hz)
    return (2 * num_samples * up + down) // (2 * down)


def resample(signal_TC: np.ndarray, from_hz: float, to_hz: float) -> np.ndarray:
    """`[T, C]` → `[T', C]` at `to_hz` by polyphase filtering, T' = round(T · to/from).

    scipy's polyphase low-pass (Kaiser window, β = 5) suppresses what lies above the new Nyquist
    frequency by about 50 dB beyond a short transition band. Output sample n lies at time
    n / to_hz, as input sample n lies at n / from_hz. The ends are extended along the line
    through the first and last sample, so a baseline offset does not ring at the edges.
    """
    signal_TC = _as_signal(signal_TC)
    up, down = resample_factors(from_hz, to_hz)
    if up == down:
        return signal_TC.astype(np.float32)
    out_TC = scipy.signal.resample_poly(signal_TC, up, down, axis=0, padtype="line")
    # resample_poly returns ceil(T · up/down) samples; keep the documented round().
    return out_TC[: resampled_length(signal_TC.shape[0], from_hz, to_hz)].astype(np.float32)


def _zero_phase(signal_TC: np.ndarray, sos: np.ndarray, what: str) -> np.ndarray:
    signal_TC = _as_signal(signal_TC)
    # sosfiltfilt extends each end by this many samples (odd reflection); a shorter signal
    # cannot be filtered, and scipy's own message does not say which filter needed it.
    padlen = 3 * (2 * len(sos) + 1)
    if signal_TC.shape[0] <= padlen:
        raise ValueError(
            f"{what} needs a signal longer than {padlen} samples, got {signal_TC.shape[0]}"
        )
    return scipy.signal.sosfiltfilt(sos, signal_TC, axis=0, padlen=padlen).astype(np.float32)


def _check_below_nyquist(freq_hz: float, sampling_rate: float, name: str) -> None:
    _check_rate(sampling_rate)
    if not (math.isfinite(freq_hz) and 0 < freq_hz < sampling_rate / 2):
        raise ValueError(
            f"{name} must lie between 0 and the Nyquist frequency {sampling_rate / 2} Hz "
            f"at {sampling_rate} Hz, got {freq_hz}"
        )


def remove_baseline(
    signal_TC: np.ndarray, sampling_rate: float, cutoff_hz: float = 0.5, order: int = 2
) -> np.ndarray:
    """Zero-phase Butterworth high-pass against baseline wander; `cutoff_hz` is its −6 dB point.

    Forward-backward filtering keeps the ST segment in place, which a causal high-pass above
    0.05 Hz would distort (AHA recommendations allow 0.67 Hz only for zero-phase filters).
    """
    _check_below_nyquist(cutoff_hz, sampling_rate, "baseline cutoff_hz")
    sos = scipy.signal.butter(order, cutoff_hz, "highpass", fs=sampling_rate, output="sos")
    return _zero_phase(signal_TC, sos, f"the {cutoff_hz} Hz baseline high-pass")


def notch(
    signal_TC: np.ndarray, sampling_rate: float, powerline_hz: float = 50.0, quality: float = 30.0
) -> np.ndarray:
    """Zero-phase notch at the powerline frequency (−3 dB width powerline_hz / quality)."""
    _check_below_nyquist(powerline_hz, sampling_rate, "powerline_hz")
    b, a = scipy.signal.iirnotch(powerline_hz, quality, fs=sampling_rate)
    return _zero_phase(signal_TC, scipy.signal.tf2sos(b, a), f"the {powerline_hz} Hz notch")


def bandpass(
    signal_TC: np.ndarray, sampling_rate: float, low_hz: float, high_hz: float, order: int = 2
) -> np.ndarray:
    """Zero-phase Butterworth band-pass; `low_hz` and `high_hz` are its −6 dB points."""
    _check_below_nyquist(low_hz, sampling_rate, "band-pass low_hz")
    _check_below_nyquist(high_hz, sampling_rate, "band-pass high_hz")
    if low_hz >= high_hz:
        raise ValueError(f"band-pass needs low_hz < high_hz, got {low_hz} and {high_hz}")
    sos = scipy.signal.butter(order, (low_hz, high_hz), "bandpass", fs=sampling_rate, output="sos")
    return _zero_phase(signal_TC, sos, f"the {low_hz}–{high_hz} Hz band-pass")


def valid_range(num_samples: int, length: int) -> tuple[int, int]:
    """[start, stop) of the real samples in `center_crop_or_pad(signal of num_samples, length)`."""
    return windows.placement(num_samples, length).valid


def center_crop_or_pad(signal_TC: np.ndarray, length: int) -> np.ndarray:
    """`[T, C]` → `[length, C]` float32: the middle `length` samples, or the signal centred in
    zeros (`ecgfm.data.windows.placement`)."""
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    return windows.fit(np.asarray(signal_TC, np.float32), length)


def standardize(signal_TC: np.ndarray, eps: float = 1e-6, *, per_lead: bool = True) -> np.ndarray:
    """Zero mean and unit standard deviation over time, per lead (a flat lead becomes zeros),
    or with `per_lead=False` one mean and deviation over all leads and samples together (as
    ST-MEM's `Standardize(axis=(-1, -2))` and ECGFounder's `z_score_normalization` do)."""
    signal_TC = _as_signal(signal_TC)
    axis = 0 if per_lead else None
    centred_TC = signal_TC - signal_TC.mean(axis=axis)
    std = centred_TC.std(axis=axis)
    return (centred_TC / np.maximum(std, eps)).astype(np.float32)


def min_max_scale(signal_TC: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Each lead scaled to [-1, 1] by its minimum and maximum over time, as HuBERT-ECG's
    `scaling` does: `2 (x - min) / (max - min + eps) - 1` (a flat lead becomes -1)."""
    signal_TC = _as_signal(signal_TC).astype(np.float64)
    low, high = signal_TC.min(axis=0), signal_TC.max(axis=0)
    return (2 * (signal_TC - low) / (high - low + eps) - 1).astype(np.float32)


def lowpass(
    signal_TC: np.ndarray, sampling_rate: float, cutoff_hz: float, order: int = 2
) -> np.ndarray:
    """Zero-phase Butterworth low-pass; `cutoff_hz` is its −6 dB point."""
    _check_below_nyquist(cutoff_hz, sampling_rate, "low-pass cutoff_hz")
    sos = scipy.signal.butter(order, cutoff_hz, "lowpass", fs=sampling_rate, output="sos")
    return _zero_phase(signal_TC, sos, f"the {cutoff_hz} Hz low-pass")


def select_leads(signal_TC: np.ndarray, leads: Sequence[str]) -> np.ndarray:
    """Columns of a `[T, 12]` signal in `LEADS` order, picked by canonical lead names."""
    signal_TC = np.asarray(signal_TC)
    if signal_TC.ndim != 2 or signal_TC.shape[1] != len(LEADS):
        raise ValueError(f"expected a [time, 12] signal in LEADS order, got {signal_TC.shape}")
    unknown = [name for name in leads if name not in LEADS]
    if unknown:
        raise ValueError(f"unknown lead names {unknown}; expected names from {LEADS}")
    return signal_TC[:, [LEADS.index(name) for name in leads]].astype(np.float32)


def _field_error(name: str, problem: str) -> ValueError:
    return ValueError(f"Preprocessing.{name}: {problem}")


def _positive_number(name: str, value: Any) -> float:
    # bool is an int in Python; `True` Hz is a mistake, not a rate.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _field_error(name, f"must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise _field_error(name, f"must be positive and finite, got {value!r}")
    return float(value)


def _positive_integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise _field_error(name, f"must be a positive integer, got {value!r}")
    return int(value)


def _below_nyquist(name: str, value: Any, sampling_rate: float) -> float:
    freq_hz = _positive_number(name, value)
    if freq_hz >= sampling_rate / 2:
        raise _field_error(
            name, f"{freq_hz} Hz is not below the Nyquist frequency at {sampling_rate} Hz"
        )
    return freq_hz


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How raw `[T, 12]` millivolt signals become an encoder's `[num_samples, len(leads)]` input.

    Attributes:
      sampling_rate: Hz the encoder sees; input at another rate is resampled.
      num_samples: fixed length (centred crop or zero pad), or None to keep the length.
      leads: canonical lead names, in the order of the output columns.
      baseline_cutoff_hz: zero-phase high-pass cutoff against baseline wander, None = off.
      powerline_hz: zero-phase notch at 50 or 60 Hz, None = off.
      bandpass: zero-phase band-pass (low_hz, high_hz), None = off.
      lowpass_hz: zero-phase low-pass cutoff, None = off (after the high-pass: together they
        are ST-MEM's two order-5 filters, which differ from one order-5 band-pass).
      filter_order: Butterworth order of the high-, low- and band-pass (doubled by zero-phase).
      notch_quality: quality factor Q of the notch (−3 dB width powerline_hz / Q).
      normalization: "none", "per_lead_standardize" (zero mean, unit std per lead and record),
        "per_record_standardize" (one mean and std over all leads and samples of a record), or
        "per_lead_min_max" (each lead scaled to [-1, 1], HuBERT-ECG's `scaling`).
      input_units: units the raw signal must be in; only "mV".
    """

    sampling_rate: float
    num_samples: int | None = None
    leads: tuple[str, ...] = LEADS
    baseline_cutoff_hz: float | None = None
    powerline_hz: float | None = None
    bandpass: tuple[float, float] | None = None
    lowpass_hz: float | None = None
    filter_order: int = 2
    notch_quality: float = 30.0
    normalization: Normalization = "none"
    input_units: str = "mV"

    def __post_init__(self) -> None:
        # Values are stored in one canonical type (float Hz, tuples) so equal specs compare
        # equal and give identical JSON, whether built in Python or read back from JSON.
        canonical: dict[str, Any] = {}
        rate = canonical["sampling_rate"] = _positive_number("sampling_rate", self.sampling_rate)
        if self.num_samples is not None:
            canonical["num_samples"] = _positive_integer("num_samples", self.num_samples)
        if isinstance(self.leads, str) or not isinstance(self.leads, Sequence):
            raise _field_error("leads", f"must be a sequence of lead names, got {self.leads!r}")
        leads = canonical["leads"] = tuple(self.leads)
        if not leads or not all(n in LEADS for n in leads) or len(set(leads)) != len(leads):
            raise _field_error(
                "leads", f"must be distinct canonical names from {LEADS}, got {leads!r}"
            )
        if self.baseline_cutoff_hz is not None:
            canonical["baseline_cutoff_hz"] = _below_nyquist(
                "baseline_cutoff_hz", self.baseline_cutoff_hz, rate
            )
        if self.powerline_hz is not None:
            if self.powerline_hz not in POWERLINE_HZ:
                raise _field_error(
                    "powerline_hz", f"must be 50, 60 or None, got {self.powerline_hz!r}"
                )
            canonical["powerline_hz"] = _below_nyquist("powerline_hz", self.powerline_hz, rate)
        if self.bandpass is not None:
            if not isinstance(self.bandpass, Sequence) or len(self.bandpass) != 2:
                raise _field_error("bandpass", f"must be (low_hz, high_hz), got {self.bandpass!r}")
            low, high = (_below_nyquist("bandpass", f, rate) for f in self.bandpass)
            if low >= high:
                raise _field_error("bandpass", f"needs low_hz < high_hz, got ({low}, {high})")
            canonical["bandpass"] = (low, high)
        if self.lowpass_hz is not None:
            canonical["lowpass_hz"] = _below_nyquist("lowpass_hz", self.lowpass_hz, rate)
        canonical["filter_order"] = _positive_integer("filter_order", self.filter_order)
        canonical["notch_quality"] = _positive_number("notch_quality", self.notch_quality)
        if self.normalization not in NORMALIZATIONS:
            raise _field_error(
                "normalization", f"must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if self.input_units != "mV":
            raise _field_error("input_units", f"only 'mV' is supported, got {self.input_units!r}")
        for name, value in canonical.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["leads"] = list(self.leads)
        out["bandpass"] = None if self.bandpass is None else list(self.bandpass)
        if self.lowpass_hz is None:
            # Added for imported encoders: left out when off, so the JSON (and every cache key
            # and checkpoint hash derived from it) of a spec without it stays what it was.
            del out["lowpass_hz"]
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocessing:
        """Inverse of `to_dict`; a missing field takes its default, an unknown one is an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Preprocessing: unknown fields {unknown}; known are {sorted(known)}")
        if "sampling_rate" not in values:
            raise _field_error("sampling_rate", "is required")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError(f"Preprocessing JSON must be an object, got {type(values).__name__}")
        return cls.from_dict(values)

    def __call__(self, signal_TC: np.ndarray, sampling_rate: float) -> np.ndarray:
        """Raw `[T, 12]` mV in `LEADS` order at `sampling_rate` → `[num_samples, len(leads)]`."""
        signal_TC = np.asarray(signal_TC)
        if signal_TC.ndim != 2 or signal_TC.shape[1] != len(LEADS):
            raise ValueError(
                f"expected a raw [time, 12] signal in LEADS order, got shape {signal_TC.shape}"
            )
        # Order: every step acts on each lead alone, so leads are selected first to save work.
        # Resampling precedes filtering so that filters are designed once, at the spec's rate.
        # Filters run on the whole record, before cropping, so their edge transients fall
        # mostly in samples the crop removes. Standardisation uses only real samples (after
        # the crop, before the zero pad), so the padding neither dilutes the statistics nor
        # differs from the lead's mean.
        out_TC = select_leads(signal_TC, self.leads)
        out_TC = resample(out_TC, sampling_rate, self.sampling_rate)
        if self.baseline_cutoff_hz is not None:
            out_TC = remove_baseline(
                out_TC, self.sampling_rate, self.baseline_cutoff_hz, self.filter_order
            )
        if self.powerline_hz is not None:
            out_TC = notch(out_TC, self.sampling_rate, self.powerline_hz, self.notch_quality)
        if self.bandpass is not None:
            out_TC = bandpass(out_TC, self.sampling_rate, *self.bandpass, self.filter_order)
        if self.lowpass_hz is not None:
            out_TC = lowpass(out_TC, self.sampling_rate, self.lowpass_hz, self.filter_order)
        if self.num_samples is not None and out_TC.shape[0] > self.num_samples:
            out_TC = center_crop_or_pad(out_TC, self.num_samples)
        if self.normalization == "per_lead_min_max":
            out_TC = min_max_scale(out_TC)
        elif self.normalization != "none":
            out_TC = standardize(out_TC, per_lead=self.normalization == "per_lead_standardize")
        if self.num_samples is not None:
            out_TC = center_crop_or_pad(out_TC, self.num_samples)
        return out_TC

    def apply(self, record: EcgRecord) -> np.ndarray:
        """`record.signal` prepared by this spec: `[num_samples, len(leads)]` float32."""
        return self(record.signal, record.sampling_rate)

    def check_compatible(self, signal_TC: np.ndarray, sampling_rate: float) -> None:
        """Raises ValueError unless `[..., T, C]` input is at this spec's rate, length and leads."""
        shape = np.shape(signal_TC)
        problems = []
        if sampling_rate != self.sampling_rate:
            problems.append(f"sampling_rate is {sampling_rate} Hz, expected {self.sampling_rate}")
        if len(shape) < 2:
            problems.append(f"shape {shape} is not [..., time, leads]")
        else:
            if self.num_samples is not None and shape[-2] != self.num_samples:
                problems.append(f"{shape[-2]} samples, expected {self.num_samples}")
            if shape[-1] != len(self.leads):
                problems.append(f"{shape[-1]} leads, expected {len(self.leads)} {self.leads}")
        if problems:
            raise ValueError(
                f"input does not match preprocessing ({self.describe()}): " + "; ".join(problems)
            )

    def describe(self) -> str:
        """One human-readable line, e.g. "400 Hz, 4096 samples, 12 leads, no filters, ..."."""
        parts = [
            f"{self.sampling_rate:g} Hz",
            "any length" if self.num_samples is None else f"{self.num_samples} samples",
            "12 leads" if self.leads == LEADS else f"{len(self.leads)} leads {list(self.leads)}",
        ]
        if self.baseline_cutoff_hz is not None:
            parts.append(f"high-pass {self.baseline_cutoff_hz:g} Hz (order {self.filter_order})")
        if self.powerline_hz is not None:
            parts.append(f"notch {self.powerline_hz:g} Hz (Q {self.notch_quality:g})")
        if self.bandpass is not None:
            low, high = self.bandpass
            parts.append(f"band-pass {low:g}–{high:g} Hz (order {self.filter_order})")
        if self.lowpass_hz is not None:
            parts.append(f"low-pass {self.lowpass_hz:g} Hz (order {self.filter_order})")
        if len(parts) == 3:
            parts.append("no filters")
        parts += [f"normalization {self.normalization}", f"input {self.input_units}"]
        return ", ".join(parts)


# Ribeiro et al. 2020 (CODE / CODE-15%): 400 Hz, zero-padded to 4096 samples, raw mV.
CODE_400HZ = Preprocessing(sampling_rate=400, num_samples=4096)
# PTB-XL benchmark (Strodthoff et al. 2021): 10 s at 100 Hz or 500 Hz. The benchmark scales
# with one StandardScaler fitted on all training samples and leads; here each record's leads
# are standardised on their own, which needs no fitted statistics but is not identical.
PTBXL_100HZ = Preprocessing(
    sampling_rate=100, num_samples=1000, normalization="per_lead_standardize"
)
PTBXL_500HZ = Preprocessing(
    sampling_rate=500, num_samples=5000, normalization="per_lead_standardize"
)
