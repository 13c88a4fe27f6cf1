"""Synthetic 12-lead ECG datasets written in the exact layouts of the real ones."""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

LAYOUTS = ("code", "ptbxl", "cpsc2018")


def write_dataset(
    layout: str, out_dir: str | pathlib.Path, *, num_records: int, seed: int = 0, **options: Any
) -> pathlib.Path:
    """Writes `num_records` synthetic ECGs in `layout` ("code", "ptbxl" or "cpsc2018").

    `options` go to the layout's writer (e.g. PTB-XL's `sampling_rates`).

    The folder appears only when complete: the files are written into `<out_dir>.partial`
    (a leftover from an interrupted write is removed first) and renamed. `out_dir` must not
    exist, or be empty.
    """
    from ecgfm.data.synthetic.code import write_code_dataset
    from ecgfm.data.synthetic.cpsc2018 import write_cpsc2018_dataset
    from ecgfm.data.synthetic.ptbxl import write_ptbxl_dataset

    writers = {
        "code": lambda out: write_code_dataset(out, num_exams=num_records, seed=seed, **options),
        "ptbxl": lambda out: write_ptbxl_dataset(
            out, num_records=num_records, seed=seed, **options
        ),
        "cpsc2018": lambda out: write_cpsc2018_dataset(
            out, num_records=num_records, seed=seed, **options
        ),
    }
    if layout not in writers:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if num_records < 1:
        raise ValueError(f"num_records must be at least 1, got {num_records}")
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder; choose a new one")
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    writers[layout](partial)
    if out_dir.exists():
        out_dir.rmdir()
    partial.rename(out_dir)
    return out_dir
