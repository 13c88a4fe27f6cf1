"""The standard 12-lead ECG printout: 3 × 4 leads of 2.5 s each and a lead II rhythm strip.

Paper conventions a cardiologist reads: 25 mm/s, 10 mm/mV, minor grid 1 mm (0.04 s, 0.1 mV),
major grid 5 mm (0.2 s, 0.5 mV).
"""

from __future__ import annotations

import pathlib

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MultipleLocator

from ecgfm.data.record import LEADS, EcgRecord

_LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
_COLUMN_S = 2.5
_ROW_MV = 3.0  # vertical space per row, as on paper (30 mm)
_MM_PER_S = 25.0
_MM_PER_MV = 10.0


def plot_12lead(record: EcgRecord, out_path: str | pathlib.Path, *, rhythm_lead: str = "II"):
    """Draws `record` as the standard 12-lead grid and writes it to `out_path` (PNG, PDF, SVG)."""
    rate = record.sampling_rate
    total_s = 4 * _COLUMN_S
    signal_TC = record.signal
    if record.duration_s < total_s:  # short exams: pad with nothing drawn
        pad = np.full((round(total_s * rate) - record.num_samples, len(LEADS)), np.nan)
        signal_TC = np.concatenate([signal_TC, pad])
    rows = len(_LAYOUT) + 1
    height_mv = rows * _ROW_MV
    width_mm, height_mm = total_s * _MM_PER_S, height_mv * _MM_PER_MV
    fig = Figure(figsize=(width_mm / 25.4 + 0.4, height_mm / 25.4 + 0.8), dpi=150)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.9))
    _draw_grid(ax, total_s, height_mv)

    per_column = round(_COLUMN_S * rate)
    t_column = np.arange(per_column) / rate
    for row, names in enumerate(_LAYOUT):
        baseline = height_mv - (row + 0.5) * _ROW_MV
        for column, name in enumerate(names):
            samples = signal_TC[column * per_column : (column + 1) * per_column, LEADS.index(name)]
            t0 = column * _COLUMN_S
            ax.plot(t0 + t_column[: samples.size], baseline + samples, color="k", lw=0.6)
            ax.text(t0 + 0.05, baseline + 0.6, name, fontsize=7, fontweight="bold")
            if column:
                ax.plot([t0, t0], [baseline - 0.3, baseline + 0.3], color="k", lw=0.8)
    rhythm = signal_TC[: round(total_s * rate), LEADS.index(rhythm_lead)]
    ax.plot(np.arange(rhythm.size) / rate, 0.5 * _ROW_MV + rhythm, color="k", lw=0.6)
    ax.text(0.05, 0.5 * _ROW_MV + 0.6, rhythm_lead, fontsize=7, fontweight="bold")

    labels = ", ".join(record.labels) or "no labels"
    who = " ".join(
        part
        for part in (
            f"age {record.age:g}" if record.age is not None else "",
            {"M": "male", "F": "female"}.get(record.sex or "", ""),
        )
        if part
    )
    fig.suptitle(
        f"{record.source} {record.record_id}  {who}  ·  {record.sampling_rate:g} Hz, "
        f"{record.duration_s:.1f} s  ·  25 mm/s, 10 mm/mV  ·  {labels}",
        fontsize=8,
        x=0.02,
        ha="left",
    )
    out_path = pathlib.Path(out_path)
    fig.savefig(out_path)
    return out_path


def _draw_grid(ax, total_s: float, height_mv: float) -> None:
    """ECG paper: minor lines every 0.04 s / 0.1 mV, major every 0.2 s / 0.5 mV."""
    ax.set_xlim(0, total_s)
    ax.set_ylim(0, height_mv)
    ax.set_aspect(_MM_PER_MV / _MM_PER_S)  # 1 mV tall == 0.4 s wide == 10 mm
    ax.xaxis.set_major_locator(MultipleLocator(0.2))
    ax.xaxis.set_minor_locator(MultipleLocator(0.04))
    ax.yaxis.set_major_locator(MultipleLocator(0.5))
    ax.yaxis.set_minor_locator(MultipleLocator(0.1))
    ax.grid(which="major", color="#f08080", lw=0.5)
    ax.grid(which="minor", color="#f8c8c8", lw=0.2)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    ax.set_axisbelow(True)
