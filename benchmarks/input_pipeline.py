"""Input-pipeline throughput: samples/s of batches of 64 × [4096, 12] float32, side by side.

    .venv/bin/python benchmarks/input_pipeline.py --num-exams 1024 --steps 24 --rounds 5

Writes a synthetic CODE-15% folder (exams.csv + HDF5 shards of 256 exams), builds it into
array_record with `prepare_dataset("code", ...)`, then times these variants in interleaved
rounds (round r runs every variant once, so drifting load on a shared machine hits all alike):
- naive h5py, sequential: one `tracings` row at a time in a Python loop, file order;
- naive h5py, shuffled: the same loop in a random order (what a training loop needs);
- grain over the built dataset (`TfdsSource`), 0 and 2 worker processes;
- grain over the raw folder (`CodeHdf5Source`), 0 workers.
The naive loops only stack the stored float32 rows (already 4096 samples); the pipelines also
decode, crop or pad, and batch labels, label masks and record ids. Each pipeline round builds a
fresh iterator, discards its first batch (worker start-up) and closes it after timing, so no
idle iterator reads ahead while another variant is timed. Reported: median samples/s over the
rounds and the median of each round's ratio to the naive shuffled loop. Not a test: numbers
depend on the machine (shared machines vary by ±15 % and more under load).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import absl.flags
import h5py
import numpy as np

from ecgfm.data.pipeline import make_train_iterator
from ecgfm.data.sources import CodeHdf5Source, TfdsSource
from ecgfm.data.synthetic.code import write_code_dataset
from ecgfm.data.tfds_builders import prepare_dataset

BATCH = 64
WINDOW = 4096
BASELINE = "naive h5py row loop, shuffled"


def time_naive(src: pathlib.Path, steps: int, *, shuffled: bool, seed: int) -> float:
    """Samples/s of row-by-row h5py reads stacked into float32 batches."""
    files = [h5py.File(p, "r") for p in sorted(src.glob("exams_part*.hdf5"))]
    try:
        rows = [(f["tracings"], i) for f in files for i in range(f["tracings"].shape[0] - 1)]
        order = np.random.default_rng(seed).permutation(len(rows)) if shuffled else range(len(rows))
        positions = [order[k % len(rows)] for k in range(steps * BATCH)]
        start = time.perf_counter()
        for step in range(steps):
            batch = [rows[p][0][rows[p][1]] for p in positions[step * BATCH : (step + 1) * BATCH]]
            signal_BTC = np.stack(batch).astype(np.float32)
        elapsed = time.perf_counter() - start
    finally:
        for f in files:
            f.close()
    assert signal_BTC.shape == (BATCH, WINDOW, 12)
    return steps * BATCH / elapsed


def time_pipeline(make_source: Callable[[], object], steps: int, worker_count: int, seed: int):
    """Samples/s of `make_train_iterator` after its first batch (worker start-up excluded)."""
    iterator = make_train_iterator(
        make_source(), global_batch_size=BATCH, seed=seed, window=WINDOW,
        worker_count=worker_count, process_index=0, process_count=1,
    )  # fmt: skip
    try:
        next(iterator)
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(iterator)
        elapsed = time.perf_counter() - start
    finally:
        iterator.close()
    assert batch["signal"].shape == (BATCH, WINDOW, 12)
    return steps * BATCH / elapsed


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-exams", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=24, help="timed batches per variant/round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    absl.flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="ecgfm_bench_"))
    src = workdir / "code_src"
    if not (src / "exams.csv").exists():
        print(f"writing {args.num_exams} synthetic exams to {src} ...", flush=True)
        write_code_dataset(src, num_exams=args.num_exams, seed=0, exams_per_shard=256)
    data_dir = workdir / "tfds"
    prepare_dataset("code", src, data_dir, fractions={"train": 1.0})

    def tfds_source() -> TfdsSource:
        return TfdsSource(data_dir, "code", "train")

    variants: dict[tuple[str, str], Callable[[int], float]] = {
        ("naive h5py row loop, sequential", "-"): lambda r: time_naive(
            src, args.steps, shuffled=False, seed=r
        ),
        (BASELINE, "-"): lambda r: time_naive(src, args.steps, shuffled=True, seed=r),
        ("grain + array_record (TfdsSource)", "0"): lambda r: time_pipeline(
            tfds_source, args.steps, 0, seed=r
        ),
        ("grain + array_record (TfdsSource)", "2"): lambda r: time_pipeline(
            tfds_source, args.steps, 2, seed=r
        ),
        ("grain + raw HDF5 (CodeHdf5Source)", "0"): lambda r: time_pipeline(
            lambda: CodeHdf5Source(src), args.steps, 0, seed=r
        ),
    }
    load_before = os.getloadavg()
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    for round_index in range(args.rounds):
        for key, run in variants.items():
            rates[key].append(run(round_index))
        line = ", ".join(f"{name} [{w}] {r[-1]:.0f}" for (name, w), r in rates.items())
        print(f"round {round_index}: {line}", flush=True)
    load_after = os.getloadavg()

    samples = args.steps * BATCH
    baseline = rates[(BASELINE, "-")]
    print(f"\nbatch {BATCH} x [{WINDOW}, 12] float32, {args.num_exams} exams, {samples} samples")
    print(f"per variant per round, {args.rounds} interleaved rounds")
    print(f"command: {sys.executable} benchmarks/input_pipeline.py {' '.join(argv)}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores")
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("grain", "array-record", "tensorflow-datasets", "h5py", "numpy")
    )
    print(f"python {platform.python_version()}, {versions}")
    loads = [" / ".join(f"{x:.1f}" for x in load) for load in (load_before, load_after)]
    print(f"load average (1 / 5 / 15 min): {loads[0]} before, {loads[1]} after")
    print("\n| pipeline | workers | median samples/s | range | × naive shuffled |")
    print("|---|---|---|---|---|")
    for (name, workers), values in rates.items():
        ratio = statistics.median(v / b for v, b in zip(values, baseline, strict=True))
        print(
            f"| {name} | {workers} | {statistics.median(values):.0f} | "
            f"{min(values):.0f}–{max(values):.0f} | {ratio:.2f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
