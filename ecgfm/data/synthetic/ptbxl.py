"""A synthetic dataset in PTB-XL's exact layout, for tests and smoke runs without the real data.

`write_ptbxl_dataset` writes `ptbxl_database.csv` (the real columns and cell formats),
a byte-for-byte copy of the real `scp_statements.csv` (package data, CC BY 4.0), and WFDB
format-16 records in `records500/` and `records100/`. Each record's SCP codes decide the
conditions its signal is synthesised with (`CODE_CONDITIONS`), so the benchmark tasks,
superdiagnostic above all, can be learned from the signals. The 100 Hz file of a record is its
500 Hz recording downsampled, as PTB-XL's is, not a second random draw.
"""

from __future__ import annotations

import datetime
import importlib.resources
import os
import pathlib
import shutil
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.signal
import wfdb

from ecgfm.data import ptbxl
from ecgfm.data.synthetic.generator import synthesize_ecg

# SCP code -> condition of `synthesize_ecg`; codes not listed (NORM, SR, ...) add none.
CODE_CONDITIONS: Mapping[str, str] = {
    "IMI": "mi_inferior",
    "AMI": "mi_anterior",
    "ASMI": "mi_anterior",
    "CLBBB": "lbbb",
    "CRBBB": "rbbb",
    "1AVB": "avb1",
    "LVH": "lvh",
    "VCLVH": "lvh",
    "NDT": "t_inversion",
    "INVT": "t_inversion",
    "ISC_": "st_depression",
    "STD_": "st_depression",
    "NST_": "st_elevation",
    "STE_": "st_elevation",
    "AFIB": "af",
    "SBRAD": "brady",
    "STACH": "tachy",
    "PAC": "pac",
    "PVC": "pvc",
}

# Per superclass, the diagnostic codes and the form codes that may come with each. PTB-XL files
# ST elevation (STE_) under form only; it comes here with NST_, a diagnostic STTC statement.
_DIAGNOSES: Mapping[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "MI": (("IMI", ()), ("ASMI", ()), ("AMI", ())),
    "STTC": (("NDT", ("INVT",)), ("ISC_", ("STD_",)), ("NST_", ("STE_",))),
    "CD": (("CLBBB", ()), ("CRBBB", ()), ("1AVB", ())),
    "HYP": (("LVH", ("VCLVH",)),),
}
_NORM_PROBABILITY = 0.4
_SECOND_DIAGNOSIS_PROBABILITY = 0.15
_RHYTHMS = (("SR", 0.8), ("AFIB", 0.08), ("SBRAD", 0.06), ("STACH", 0.06))
_ECTOPY_PROBABILITY = 0.05  # each of PAC and PVC
_DIAGNOSTIC_LIKELIHOODS = (50.0, 80.0, 100.0)
# Records per patient in PTB-XL: 21837 ECGs of 18885 patients.
_PATIENTS_PER_RECORD = 18885 / 21837
_DEVICES = ("CS-12   E", "AT-6     6", "AT-60    3", "CS100    3")
_DIGITAL_MAX = 32767  # WFDB format 16 keeps -32768 for "no sample"


def _record_codes(rng: np.random.Generator) -> dict[str, float]:
    """Draws one record's `scp_codes`: likelihoods for diagnoses, 0.0 for form and rhythm."""
    rhythm = str(rng.choice([r for r, _ in _RHYTHMS], p=[p for _, p in _RHYTHMS]))
    codes: dict[str, float] = {}
    if rng.random() < _NORM_PROBABILITY:
        codes["NORM"] = float(rng.choice((80.0, 100.0)))
    else:
        classes = list(_DIAGNOSES)
        num_classes = 2 if rng.random() < _SECOND_DIAGNOSIS_PROBABILITY else 1
        for superclass in rng.choice(classes, size=num_classes, replace=False):
            options = _DIAGNOSES[str(superclass)]
            # AV block is read from the PR interval, which atrial fibrillation does not have.
            if rhythm == "AFIB":
                options = tuple(o for o in options if o[0] != "1AVB")
            code, forms = options[rng.integers(len(options))]
            codes[code] = float(rng.choice(_DIAGNOSTIC_LIKELIHOODS))
            for form in forms:
                if rng.random() < 0.5:
                    codes[form] = 0.0
    for ectopy in ("PAC", "PVC"):
        if rng.random() < _ECTOPY_PROBABILITY and not (ectopy == "PAC" and rhythm == "AFIB"):
            codes[ectopy] = 0.0
    codes[rhythm] = 0.0
    return codes


def _digitise(signal_TC: np.ndarray) -> np.ndarray:
    """mV -> int16 ADC units at PTB-XL's gain of 1000/mV."""
    scaled = np.round(np.asarray(signal_TC, dtype=np.float64) * ptbxl.GAIN_PER_MV)
    return np.clip(scaled, -_DIGITAL_MAX, _DIGITAL_MAX).astype(np.int16)


def _write_record(path: pathlib.Path, signal_TC: np.ndarray, sampling_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    num_leads = len(ptbxl.PTBXL_LEAD_NAMES)
    wfdb.wrsamp(
        path.name,
        fs=sampling_rate,
        units=["mV"] * num_leads,
        sig_name=list(ptbxl.PTBXL_LEAD_NAMES),
        d_signal=_digitise(signal_TC),
        fmt=["16"] * num_leads,
        adc_gain=[ptbxl.GAIN_PER_MV] * num_leads,
        baseline=[0] * num_leads,
        write_dir=str(path.parent),
    )


def _record_path(ecg_id: int, sampling_rate: int) -> str:
    suffix = {100: "lr", 500: "hr"}[sampling_rate]
    folder = f"{ecg_id // 1000 * 1000:05d}"
    return f"{ptbxl.RECORDS_FOLDER[sampling_rate]}/{folder}/{ecg_id:05d}_{suffix}"


def write_ptbxl_dataset(
    out_dir: str | os.PathLike,
    *,
    num_records: int = 200,
    num_patients: int | None = None,
    seed: int = 0,
    sampling_rates: Sequence[int] = (100, 500),
) -> pathlib.Path:
    """Writes a synthetic PTB-XL of `num_records` 10 s ECGs into `out_dir` and returns it.

    ecg_ids run 1..num_records. Patients (default: PTB-XL's ratio of patients to ECGs) each get
    one fold, 1..10 round robin, so no patient spans two folds. Every row names both its
    `filename_lr` and `filename_hr`; only the `sampling_rates` asked for are written. A record's
    signal depends on `seed` and its ecg_id only.
    """
    if num_records < 1:
        raise ValueError(f"num_records must be positive, got {num_records}")
    if num_patients is None:
        num_patients = max(1, round(num_records * _PATIENTS_PER_RECORD))
    if not 1 <= num_patients <= num_records:
        raise ValueError(f"num_patients must be in 1..num_records, got {num_patients}")
    rates = tuple(sorted(set(sampling_rates)))
    if not rates or not set(rates) <= set(ptbxl.SAMPLING_RATES):
        raise ValueError(f"sampling_rates must be among {ptbxl.SAMPLING_RATES}, got {rates}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    statements = importlib.resources.files("ecgfm") / "resources" / ptbxl.SCP_STATEMENTS_FILE
    with importlib.resources.as_file(statements) as statements_path:
        shutil.copyfile(statements_path, out_dir / ptbxl.SCP_STATEMENTS_FILE)
    descriptions = ptbxl.load_scp_statements(out_dir / ptbxl.SCP_STATEMENTS_FILE)["description"]

    rng = np.random.default_rng(seed)
    # Every patient has a record; the remaining records go to patients drawn at random.
    patient_of_record = np.concatenate(
        [np.arange(num_patients), rng.integers(num_patients, size=num_records - num_patients)]
    )
    rng.shuffle(patient_of_record)
    patient_ids = rng.choice(np.arange(1, 100 * num_patients + 1), size=num_patients, replace=False)
    fold_of_patient = rng.permutation(num_patients) % ptbxl.NUM_FOLDS + 1
    ages = rng.integers(18, 96, size=num_patients).astype(float)
    ages[ages > 89] = ptbxl.MASKED_AGE
    sexes = rng.integers(0, 2, size=num_patients)
    heights = np.where(rng.random(num_patients) < 0.3, rng.integers(150, 195, num_patients), np.nan)
    weights = np.where(rng.random(num_patients) < 0.5, rng.integers(50, 110, num_patients), np.nan)
    start = datetime.datetime(1989, 10, 1)

    rows = []
    for index, patient in enumerate(patient_of_record):
        ecg_id = index + 1
        codes = _record_codes(rng)
        conditions = sorted({CODE_CONDITIONS[c] for c in codes if c in CODE_CONDITIONS})
        signal_rng = np.random.default_rng((seed, ecg_id))
        signal_500 = synthesize_ecg(signal_rng, conditions, sampling_rate=500.0, duration_s=10.0)
        signals = {500: signal_500, 100: scipy.signal.resample_poly(signal_500, 1, 5, axis=0)}
        for rate in rates:
            _write_record(out_dir / _record_path(ecg_id, rate), signals[rate], rate)
        recorded = start + datetime.timedelta(days=7 * index, seconds=int(rng.integers(86400)))
        rows.append(
            _database_row(
                ecg_id=ecg_id,
                patient_id=float(patient_ids[patient]),
                age=ages[patient],
                sex=int(sexes[patient]),
                height=heights[patient],
                weight=weights[patient],
                recorded=recorded,
                codes=codes,
                report=", ".join(descriptions[c] for c in codes),
                strat_fold=int(fold_of_patient[patient]),
                rng=rng,
            )
        )
    database = pd.DataFrame(rows, columns=list(ptbxl.DATABASE_COLUMNS))
    database.to_csv(out_dir / ptbxl.DATABASE_FILE, index=False)
    return out_dir


def _database_row(
    *,
    ecg_id: int,
    patient_id: float,
    age: float,
    sex: int,
    height: float,
    weight: float,
    recorded: datetime.datetime,
    codes: Mapping[str, float],
    report: str,
    strat_fold: int,
    rng: np.random.Generator,
) -> dict[str, object]:
    """One row of ptbxl_database.csv, cells in PTB-XL's formats (floats, dict strings, bools)."""
    is_mi = any(code in codes for code, _ in _DIAGNOSES["MI"])
    return {
        "ecg_id": ecg_id,
        "patient_id": patient_id,
        "age": age,
        "sex": sex,
        "height": height,
        "weight": weight,
        "nurse": float(rng.integers(0, 12)),
        "site": float(rng.integers(0, 51)),
        "device": str(rng.choice(_DEVICES)),
        "recording_date": recorded.strftime("%Y-%m-%d %H:%M:%S"),
        "report": report,
        # str() of a dict of str -> float is exactly PTB-XL's "{'NORM': 100.0, 'SR': 0.0}".
        "scp_codes": str(dict(codes)),
        "heart_axis": "LAD" if "LVH" in codes or "CLBBB" in codes else np.nan,
        "infarction_stadium1": "Stadium II" if is_mi else np.nan,
        "infarction_stadium2": np.nan,
        "validated_by": float(rng.integers(0, 12)),
        "second_opinion": False,
        "initial_autogenerated_report": False,
        "validated_by_human": True,
        "baseline_drift": np.nan,
        "static_noise": np.nan,
        "burst_noise": np.nan,
        "electrodes_problems": np.nan,
        "extra_beats": np.nan,
        "pacemaker": np.nan,
        "strat_fold": strat_fold,
        "filename_lr": _record_path(ecg_id, 100),
        "filename_hr": _record_path(ecg_id, 500),
    }
