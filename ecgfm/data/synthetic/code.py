"""A synthetic dataset in CODE-15%'s exact layout, for tests and smoke runs without the real data.

`write_code_dataset` writes `exams.csv` (CODE-15%'s columns, in its order and cell formats) and
`exams_part{i}.hdf5` shards like the real ones: float32 `tracings` `[N + 1, 4096, 12]` and int64
`exam_id` `[N + 1]`, leads DI, DII, DIII, AVR, AVL, AVF, V1–V6 at 400 Hz, stored in the real
files' units (`ecgfm.data.code_hdf5.MV_PER_STORED_UNIT`), 7 s (2800 samples) and 10 s (4000 samples)
exams zero padded to 4096 centred as ecg-preprocessing pads them, and a dummy all-zero row with
exam_id 0 closing each shard. `exams.csv` lists the exams in another order than the shards hold
them, as the real one does. Patients have several exams; death and timey are filled only on a
patient's first exam (lowest exam_id).

Each exam's labels decide the conditions its signal is synthesised with, so the labels can be
learned from the signals: CODE-15%'s six by meaning (`LABEL_CONDITIONS`; ST is sinus
tachycardia), any other name (e.g. a CODE-II-like set of 66) by cycling through the generator's
`CONDITIONS` in header order (`label_conditions`). Labels that share a condition cannot be told
apart by the signal.
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Mapping, Sequence

import h5py
import numpy as np

from ecgfm.data.code_csv import CSV_NAME, METADATA_COLUMNS
from ecgfm.data.code_hdf5 import MV_PER_STORED_UNIT, SAMPLING_RATE
from ecgfm.data.synthetic.generator import CONDITIONS, CONFLICTS, synthesize_ecg

CODE15_LABELS: tuple[str, ...] = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")
LABEL_CONDITIONS: Mapping[str, str] = {
    "1dAVb": "avb1",
    "RBBB": "rbbb",
    "LBBB": "lbbb",
    "SB": "brady",
    "ST": "tachy",
    "AF": "af",
}
# SB and ST are sinus rhythms, so neither comes with AF (the generator would accept AF with a
# slow or fast ventricular rate, which CODE does not label SB/ST).
_EXCLUSIVE = (*CONFLICTS, frozenset({"af", "brady"}), frozenset({"af", "tachy"}))

NUM_SAMPLES_PADDED = 4096
SHORT_EXAM_S, LONG_EXAM_S = 7.0, 10.0
# Per-label probability of a positive draw (before conflicts are resolved): ~10–13 % each for
# six labels; for many labels, about one positive draw per exam in all.
_PREVALENCE = 0.13


def label_conditions(label_names: Sequence[str]) -> dict[str, str]:
    """The generator condition of each label: by meaning, else the next of `CONDITIONS` in turn."""
    conditions: dict[str, str] = {}
    others = 0
    for name in label_names:
        if name in LABEL_CONDITIONS:
            conditions[name] = LABEL_CONDITIONS[name]
        else:
            conditions[name] = CONDITIONS[others % len(CONDITIONS)]
            others += 1
    return conditions


def _draw_labels(
    rng: np.random.Generator, label_names: Sequence[str], conditions: Mapping[str, str]
) -> list[str]:
    """Positive labels of one exam, none whose condition conflicts with an earlier one's."""
    prevalence = min(_PREVALENCE, 1.0 / len(label_names))
    positives: list[str] = []
    chosen: set[str] = set()
    for k in rng.permutation(len(label_names)).tolist():
        if rng.random() >= prevalence:
            continue
        condition = conditions[label_names[k]]
        if any(pair <= chosen | {condition} for pair in _EXCLUSIVE):
            continue
        positives.append(label_names[k])
        chosen.add(condition)
    return positives


def _padded(signal_TC: np.ndarray) -> np.ndarray:
    """`[4096, 12]` with the exam centred, `(4096 - T) // 2` zeros before it, as CODE pads."""
    start = (NUM_SAMPLES_PADDED - signal_TC.shape[0]) // 2
    out = np.zeros((NUM_SAMPLES_PADDED, signal_TC.shape[1]), np.float32)
    out[start : start + signal_TC.shape[0]] = signal_TC / np.float32(MV_PER_STORED_UNIT)
    return out


def _check_label_names(label_names: Sequence[str]) -> None:
    if not label_names:
        raise ValueError("need at least one label name")
    if len(set(label_names)) != len(label_names):
        raise ValueError(f"label names repeat: {list(label_names)}")
    clashes = sorted(set(label_names) & METADATA_COLUMNS)
    if clashes:
        raise ValueError(f"label names {clashes} are metadata columns of exams.csv")


def write_code_dataset(
    out_dir: str | pathlib.Path,
    *,
    num_exams: int = 200,
    num_patients: int | None = None,
    exams_per_shard: int = 64,
    seed: int = 0,
    label_names: Sequence[str] = CODE15_LABELS,
    short_exam_fraction: float = 0.3,
) -> pathlib.Path:
    """Writes `exams.csv` and `exams_part{i}.hdf5` into `out_dir` and returns `out_dir`.

    `num_patients` defaults to half of `num_exams` (each patient gets at least one exam);
    `short_exam_fraction` of the exams last 7 s, the others 10 s. Same seed, same files.
    """
    label_names = tuple(label_names)
    _check_label_names(label_names)
    num_patients = max(1, (num_exams + 1) // 2) if num_patients is None else num_patients
    if not 1 <= num_patients <= num_exams:
        raise ValueError(f"need 1 <= num_patients <= num_exams, got {num_patients}, {num_exams}")
    if exams_per_shard < 1:
        raise ValueError(f"exams_per_shard must be positive, got {exams_per_shard}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    conditions = label_conditions(label_names)

    exam_ids = rng.choice(np.arange(1, 20 * num_exams + 1), num_exams, replace=False)
    patient_ids = rng.choice(np.arange(1, 20 * num_patients + 1), num_patients, replace=False)
    patient_of = rng.permutation(
        np.concatenate(
            [np.arange(num_patients), rng.integers(0, num_patients, num_exams - num_patients)]
        )
    )
    first_age = rng.integers(18, 90, num_patients)
    is_male = rng.random(num_patients) < 0.4
    first_exam = {}
    for i in np.argsort(exam_ids).tolist():
        first_exam.setdefault(int(patient_of[i]), i)
    years_since_first = rng.integers(0, 4, num_exams)

    rows: dict[int, list[str]] = {}
    order = rng.permutation(num_exams)
    for part, begin in enumerate(range(0, num_exams, exams_per_shard)):
        members = order[begin : begin + exams_per_shard].tolist()
        trace_file = f"exams_part{part}.hdf5"
        tracings = np.zeros((len(members) + 1, NUM_SAMPLES_PADDED, 12), np.float32)
        for row, i in enumerate(members):
            positives = _draw_labels(rng, label_names, conditions)
            short = rng.random() < short_exam_fraction
            signal_TC = synthesize_ecg(
                rng,
                {conditions[name] for name in positives},
                sampling_rate=SAMPLING_RATE,
                duration_s=SHORT_EXAM_S if short else LONG_EXAM_S,
            )
            tracings[row] = _padded(signal_TC)
            patient = int(patient_of[i])
            first = first_exam[patient] == i
            age = int(first_age[patient] + (0 if first else years_since_first[i]))
            rows[i] = [
                str(int(exam_ids[i])),
                str(age),
                str(bool(is_male[patient])),
                f"{age + rng.normal(0, 8):.6f}",
                *(str(name in positives) for name in label_names),
                str(int(patient_ids[patient])),
                str(bool(rng.random() < 0.05)) if first else "",
                f"{rng.uniform(0.5, 7.5):.6f}" if first else "",
                str(not positives and bool(rng.random() < 0.7)),
                trace_file,
            ]
        with h5py.File(out_dir / trace_file, "w") as f:
            # The real shards close with a dummy all-zero row whose exam_id is 0.
            f.create_dataset("exam_id", data=np.append(exam_ids[members], 0).astype(np.int64))
            f.create_dataset("tracings", data=tracings)

    header = [
        "exam_id", "age", "is_male", "nn_predicted_age", *label_names, "patient_id", "death",
        "timey", "normal_ecg", "trace_file",
    ]  # fmt: skip
    with open(out_dir / CSV_NAME, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in rng.permutation(num_exams).tolist():
            writer.writerow(rows[i])
    return out_dir
