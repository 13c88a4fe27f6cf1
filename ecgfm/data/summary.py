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
        return {"path": str(path), "format": "tfds", **_describe_built(p)}
    fmt = detect_format(path)
    return {"path": str(path), "format": fmt, **summarize_record(read_any(path))}


def _describe_built(folder: pathlib.Path) -> dict[str, Any]:
    """A dataset `ecgfm prepare` built, given as `DATA_DIR/NAME` or its version folder."""
    from ecgfm.data.tfds_builders import describe_built_dataset

    if (folder / "dataset_info.json").is_file():  # DATA_DIR/NAME/CONFIG/VERSION
        version = folder.resolve()
        return describe_built_dataset(
            version.parents[2], version.parents[1].name, config=version.parent.name
        )
    return describe_built_dataset(folder.parent, folder.name)
