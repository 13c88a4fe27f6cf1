"""Input-pipeline throughput: samples/s of batches of 64 × [4096, 12] float32, side by side.

    .venv/bin/python benchmarks/input_pipeline.py --num-exams 1024 --steps 48

Writes a synthetic CODE-15% folder (exams.csv + HDF5 shards), builds it into array_record with
`prepare_dataset("code", ...)`, then times, in one run:
- naive: h5py reads of one `tracings` row at a time in a Python loop, shuffled order;
- grain over the built dataset (`TfdsSource`), 0 and 2 worker processes;
- grain over the raw folder (`CodeHdf5Source`), 0 workers.
Not a test: numbers depend on the machine (shared machines vary by ±15 %).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import absl.flags
import h5py
import numpy as np

from ecgfm.data.pipeline import make_train_iterator
from ecgfm.data.sources import CodeHdf5Source, TfdsSource
from ecgfm.data.synthetic.code import write_code_dataset
from ecgfm.data.tfds_builders import prepare_dataset

BATCH = 64
WINDOW = 4096


def time_naive(src: pathlib.Path, num_samples: int, seed: int) -> float:
    """Samples/s of row-by-row h5py reads in a shuffled order, stacked into batches."""
    shards = sorted(src.glob("exams_part*.hdf5"))
    files = [h5py.File(p, "r") for p in shards]
    rows = [(f, i) for f in files for i in range(f["tracings"].shape[0] - 1)]  # last is dummy
    order = np.random.default_rng(seed).permutation(len(rows))
    start = time.perf_counter()
    done = 0
    while done < num_samples:
        batch = [rows[i][0]["tracings"][rows[i][1]] for i in order[done % len(rows) :][:BATCH]]
        np.stack(batch).astype(np.float32)
        done += len(batch)
    elapsed = time.perf_counter() - start
    for f in files:
        f.close()
    return done / elapsed


def time_pipeline(source, steps: int, worker_count: int) -> float:
    """Samples/s of `make_train_iterator` after one warm-up batch (worker start-up excluded).

    grain prefetches batches on threads, so `steps` must well exceed that read-ahead.
    """
    iterator = make_train_iterator(
        source, global_batch_size=BATCH, seed=0, window=WINDOW, worker_count=worker_count,
        process_index=0, process_count=1,
    )  # fmt: skip
    next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(iterator)
    elapsed = time.perf_counter() - start
    assert batch["signal"].shape == (BATCH, WINDOW, 12)
    return steps * BATCH / elapsed


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-exams", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=48)
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
    samples = args.steps * BATCH
    results = [
        ("naive h5py row loop", "-", time_naive(src, samples, seed=0)),
        ("grain + array_record", "0", time_pipeline(TfdsSource(data_dir, "code", "train"),
                                                    args.steps, 0)),
        ("grain + array_record", "2", time_pipeline(TfdsSource(data_dir, "code", "train"),
                                                    args.steps, 2)),
        ("grain + raw HDF5 (CodeHdf5Source)", "0", time_pipeline(CodeHdf5Source(src),
                                                                 args.steps, 0)),
    ]  # fmt: skip
    print(f"\nbatch {BATCH} x [{WINDOW}, 12] float32, {args.num_exams} exams, {samples} samples")
    print(f"command: {sys.executable} benchmarks/input_pipeline.py {' '.join(argv)}")
    print(f"{'pipeline':<36}{'workers':>8}{'samples/s':>12}")
    for name, workers, rate in results:
        print(f"{name:<36}{workers:>8}{rate:>12.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
