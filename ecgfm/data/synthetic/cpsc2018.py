"""Synthetic CPSC 2018 datasets, in the original layout and in the PhysioNet/CinC Challenge layout.

The original layout copies the real files (A1980–A1984): `A0001.mat` is a compressed MATLAB 5
file with one 1×1 struct `ECG` whose fields are `sex` (char 'Male'/'Female'), `age` (uint8 1×1)
and `data` (double 12 × T, mV, 500 Hz, rows I, II, III, aVR, aVL, aVF, V1–V6), plus a
`REFERENCE.csv` with the real header and one to three labels 1–9 per record. The Challenge
layout writes the same records as `A0001.hea` + MATLAB v4 `A0001.mat` (`val`, int16, 1000/mV),
with the classes' SNOMED-CT codes on the `# Dx:` line, like the Challenge's copy of CPSC 2018.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
from collections.abc import Iterator

import numpy as np
import scipy.io

from ecgfm.data.cpsc2018 import (
    CPSC_CLASSES,
    CPSC_LEADS,
    CPSC_SAMPLING_RATE,
    CPSC_TO_SNOMED,
    REFERENCE_HEADER,
)
from ecgfm.data.synthetic.generator import CONFLICTS, synthesize_ecg

# The generator's condition for each CPSC class.
CPSC_CONDITIONS: dict[str, tuple[str, ...]] = {
    "Normal": (),
    "AF": ("af",),
    "I-AVB": ("avb1",),
    "LBBB": ("lbbb",),
    "RBBB": ("rbbb",),
    "PAC": ("pac",),
    "PVC": ("pvc",),
    "STD": ("st_depression",),
    "STE": ("st_elevation",),
}
# How often each class occurs in the real training set (CPSC column of the Challenge's
# dx_mapping tables), so that the synthetic class balance looks like CPSC's.
_CLASS_COUNTS = np.array([918, 1221, 722, 236, 1857, 616, 700, 869, 220], dtype=float)
_NUM_LABELS_P = (0.85, 0.12, 0.03)  # one, two or three labels per record
_TYPICAL_DURATION_S = 10.0
_GAIN = 1000.0  # digital units per mV in the Challenge layout


@dataclasses.dataclass(frozen=True)
class _Record:
    record_id: str
    labels: tuple[str, ...]  # in REFERENCE.csv order
    age: int
    sex: str  # as the files spell it: "Male"/"Female"
    signal_TC: np.ndarray  # [T, 12] float32 mV


def _draw_labels(rng: np.random.Generator) -> tuple[str, ...]:
    """One to three compatible CPSC classes; Normal only ever alone."""
    p = _CLASS_COUNTS / _CLASS_COUNTS.sum()
    first = CPSC_CLASSES[rng.choice(len(CPSC_CLASSES), p=p)]
    labels = [first]
    num_labels = 1 if first == "Normal" else rng.choice(3, p=_NUM_LABELS_P) + 1
    while len(labels) < num_labels:
        candidates = [
            name
            for name in CPSC_CLASSES[1:]
            if name not in labels and not _conflicts([*labels, name])
        ]
        if not candidates:
            break
        labels.append(candidates[rng.integers(len(candidates))])
    return tuple(labels)


def _conflicts(labels: list[str]) -> bool:
    conditions = {c for name in labels for c in CPSC_CONDITIONS[name]}
    return any(pair <= conditions for pair in CONFLICTS)


def _synthetic_records(num_records: int, seed: int) -> Iterator[_Record]:
    """The records both layouts write, `A0001`…, identical for the same `seed`."""
    if num_records < 1:
        raise ValueError(f"num_records must be positive, got {num_records}")
    rng = np.random.default_rng(seed)
    for index in range(1, num_records + 1):
        labels = _draw_labels(rng)
        # Real lengths are 6–60 s; most records here are 10 s so the dataset stays small.
        if rng.random() < 0.8:
            num_samples = round(_TYPICAL_DURATION_S * CPSC_SAMPLING_RATE)
        else:
            num_samples = int(rng.integers(6 * 500, 60 * 500 + 1))
        conditions = [c for name in labels for c in CPSC_CONDITIONS[name]]
        signal_TC = synthesize_ecg(
            rng,
            conditions,
            sampling_rate=CPSC_SAMPLING_RATE,
            duration_s=num_samples / CPSC_SAMPLING_RATE,
        )
        yield _Record(
            record_id=f"A{index:04d}",
            labels=labels,
            age=int(rng.integers(18, 91)),
            sex=("Male", "Female")[rng.integers(2)],
            signal_TC=signal_TC,
        )


def write_cpsc2018_dataset(
    out_dir: str | pathlib.Path, *, num_records: int = 100, seed: int = 0
) -> pathlib.Path:
    """Writes `A0001.mat`… and `REFERENCE.csv` in CPSC 2018's original layout; returns `out_dir`."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for record in _synthetic_records(num_records, seed):
        ecg = {
            "sex": record.sex,
            "age": np.array([[record.age]], dtype=np.uint8),
            "data": record.signal_TC.T.astype(np.float64),
        }
        scipy.io.savemat(out_dir / f"{record.record_id}.mat", {"ECG": ecg}, do_compression=True)
        codes = [str(CPSC_CLASSES.index(name) + 1) for name in record.labels]
        rows.append([record.record_id, *codes, *[""] * (3 - len(codes))])
    with (out_dir / "REFERENCE.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(REFERENCE_HEADER)
        writer.writerows(rows)
    return out_dir


def write_challenge_records(
    out_dir: str | pathlib.Path, *, num_records: int = 100, seed: int = 0
) -> pathlib.Path:
    """Writes the records of `write_cpsc2018_dataset(seed=seed)` in the Challenge layout.

    `A0001.hea` + `A0001.mat` (MATLAB v4 `val`, int16 = round(mV × 1000)), header lines and
    comments as in the Challenge 2021 files; returns `out_dir`.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for record in _synthetic_records(num_records, seed):
        digital = np.round(record.signal_TC.T.astype(np.float64) * _GAIN)
        if np.abs(digital).max() > np.iinfo(np.int16).max:
            raise ValueError(f"{record.record_id}: signal exceeds the int16 range at 1000/mV")
        val_CT = digital.astype(np.int16)
        mat_name = f"{record.record_id}.mat"
        scipy.io.savemat(out_dir / mat_name, {"val": val_CT}, format="4")
        checksums = (val_CT.astype(np.int64).sum(axis=1) + 2**15) % 2**16 - 2**15
        lines = [
            f"{record.record_id} {len(CPSC_LEADS)} {int(CPSC_SAMPLING_RATE)} {val_CT.shape[1]}"
        ]
        lines += [
            f"{mat_name} 16x1+24 {_GAIN}(0)/mV 16 0 {val_CT[c, 0]} {checksums[c]} 0 {lead}"
            for c, lead in enumerate(CPSC_LEADS)
        ]
        dx = ",".join(CPSC_TO_SNOMED[name] for name in record.labels)
        lines += [
            f"# Age: {record.age}",
            f"# Sex: {record.sex}",
            f"# Dx: {dx}",
            "# Rx: Unknown",
            "# Hx: Unknown",
            "# Sx: Unknown",
        ]
        (out_dir / f"{record.record_id}.hea").write_text("\n".join(lines) + "\n")
    return out_dir
