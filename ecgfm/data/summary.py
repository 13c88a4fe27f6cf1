"""One-line-per-path summaries of ECG records and built datasets (`ecgfm inspect`)."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from ecgfm.data.formats import detect_format, read_any
from ecgfm.data.record import LEADS, EcgRecord


def summarize_record(record: EcgRecord) -> dict[str, Any]:
    """Plain-JSON summary of one record; lead statistics are over its real samples, in mV."""
    signal_TC = record.signal.astype(np.float64)
    return {
        "record_id": record.record_id,
        "source": record.source,
        "sampling_rate": float(record.sampling_rate),
        "num_samples": record.num_samples,
        "leads": list(LEADS),
        "lead_mean_mv": [float(v) for v in signal_TC.mean(axis=0)],
        "lead_std_mv": [float(v) for v in signal_TC.std(axis=0)],
        "labels": list(record.labels),
        "patient_id": record.patient_id,
        "age": record.age,
        "sex": record.sex,
        "derived_leads": list(record.derived_leads),
    }


def summarize_path(path: str | pathlib.Path) -> dict[str, Any]:
    """Summary of one PATH as `ecgfm inspect` prints it: a record, or a built TFDS dataset."""
    p = pathlib.Path(str(path))
    if p.is_dir():
        from ecgfm.data.tfds_builders import describe_built_dataset

        return {"path": str(path), "format": "tfds", **describe_built_dataset(p)}
    fmt = detect_format(path)
    return {"path": str(path), "format": fmt, **summarize_record(read_any(path))}
