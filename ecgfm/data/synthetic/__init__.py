"""Synthetic 12-lead ECG datasets written in the exact layouts of the real ones."""

from __future__ import annotations

import pathlib


def write_dataset(
    layout: str, out_dir: str | pathlib.Path, *, num_records: int, seed: int = 0
) -> pathlib.Path:
    """Writes `num_records` synthetic ECGs in `layout` ("code", "ptbxl" or "cpsc2018")."""
    from ecgfm.data.synthetic.code import write_code_dataset
    from ecgfm.data.synthetic.cpsc2018 import write_cpsc2018_dataset
    from ecgfm.data.synthetic.ptbxl import write_ptbxl_dataset

    if layout == "code":
        return write_code_dataset(out_dir, num_exams=num_records, seed=seed)
    if layout == "ptbxl":
        return write_ptbxl_dataset(out_dir, num_records=num_records, seed=seed)
    if layout == "cpsc2018":
        return write_cpsc2018_dataset(out_dir, num_records=num_records, seed=seed)
    raise ValueError(f"unknown layout {layout!r}; expected code, ptbxl or cpsc2018")
