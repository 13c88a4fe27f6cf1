"""Can the host feed the device? Exams/s of ecgfm's input pipeline per host core, side by side.

    .venv/bin/python benchmarks/input_pipeline.py --num-exams 2048 --steps 16 --rounds 5

Writes synthetic CODE-15%-layout exams (HDF5 shards of 256) and builds them with
`ecgfm prepare`'s `prepare_dataset` three times, with array_record shards compressed "none",
"snappy" and "zstd" (TFDS's own choice). Then, pinned to `--cores` host cores (1: figures are
per core), it times in interleaved rounds (round r runs every variant once, so drifting load on
a shared machine hits all alike):
- `make_train_iterator(window=4096)` over each build (the Ribeiro ResNet's input), and over
  the "none" build at 4050 samples (the ViT-1D's 54 patches of 75);
- the whole host path: the same plus `jax.make_array_from_process_local_data` onto the device
  (the trainer's `Training.global_batch`; a copy into device memory on this CPU);
- a naive shuffled h5py row loop over the raw HDF5 (what many training scripts do).
Each pipeline round builds a fresh iterator, discards its first batch and closes it after
timing. Reported: median exams/s over rounds and the median ratio to the "none" pipeline.

Then, once: a profile of where the host time of the "none" pipeline goes (cProfile, grouped),
and what the train step consumes on this machine (all cores, `--step-batch` exams, XLA's FLOP
count per exam), from which it derives the pipeline-to-step ratio and the host cores one
accelerator at `--mfu` of `--peak-tflops` would need. Finally the cost of a batched band-pass
on the device beside the one-off cost of filtering each record at prepare time.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import importlib.metadata
import os
import pathlib
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import absl.flags
import h5py
import numpy as np

from ecgfm.data.pipeline import make_train_iterator
from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.sources import TfdsSource
from ecgfm.data.synthetic import write_dataset
from ecgfm.data.tfds_builders import prepare_dataset

BATCH = 64
RESNET_WINDOW, VIT_WINDOW = 4096, 4050
COMPRESSIONS = ("none", "snappy", "zstd")
REFERENCE = "grain + array_record, compression none, 4096"


def time_naive(src: pathlib.Path, steps: int, seed: int) -> float:
    """Exams/s of shuffled row-by-row h5py reads stacked into float32 batches."""
    files = [h5py.File(p, "r") for p in sorted(src.glob("exams_part*.hdf5"))]
    try:
        rows = [(f["tracings"], i) for f in files for i in range(f["tracings"].shape[0] - 1)]
        order = np.random.default_rng(seed).permutation(len(rows))
        start = time.perf_counter()
        for step in range(steps):
            picks = order[(np.arange(BATCH) + step * BATCH) % len(rows)]
            signal_BTC = np.stack([rows[p][0][rows[p][1]] for p in picks]).astype(np.float32)
        elapsed = time.perf_counter() - start
    finally:
        for f in files:
            f.close()
    assert signal_BTC.shape == (BATCH, RESNET_WINDOW, 12)
    return steps * BATCH / elapsed


def time_pipeline(
    source: Callable[[], TfdsSource], window: int, steps: int, seed: int, to_device: bool = False
) -> float:
    """Exams/s of `make_train_iterator` (and the device transfer) after its first batch."""
    import jax

    from ecgfm import sharding
    from ecgfm.data.pipeline import device_fields

    batch_sharding = sharding.batch_sharding(sharding.make_mesh(devices=jax.devices()[:1]))
    iterator = make_train_iterator(
        source(), global_batch_size=BATCH, seed=seed, window=window, process_index=0,
        process_count=1,
    )  # fmt: skip
    try:
        next(iterator)
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(iterator)
            if to_device:
                arrays = [jax.make_array_from_process_local_data(batch_sharding, v)
                          for v in device_fields(batch).values()]  # fmt: skip
                jax.block_until_ready(arrays)
        elapsed = time.perf_counter() - start
    finally:
        iterator.close()
    assert batch["signal"].shape == (BATCH, window, 12) and batch["signal"].dtype == np.int16
    return steps * BATCH / elapsed


# First match wins. array_record's `__getitems__` reads on its own threads: the calling thread's
# time there is spent waiting on a lock, so the lock's time is the read's.
PROFILE_GROUPS = {
    "array_record read (waiting on its threads)": ("array_record", "__getitems__", "acquire"),
    "proto parse": ("FromString",),
    "element decode (fields to arrays, labels)": ("_element", "numpy.array", "frombuffer"),
    "batch assembly (copy into the batch)": ("_place_signals", "assemble_batch", "numpy.zeros"),
}


def profile_pipeline(source: TfdsSource, steps: int) -> dict[str, float]:
    """Share of the pipeline's own time per group of functions (single thread, no prefetch)."""
    from ecgfm.data.pipeline import _TrainBatch

    transform = _TrainBatch(source, 0, 0, 1, BATCH, RESNET_WINDOW, None, False)
    profiler = cProfile.Profile()
    profiler.enable()
    for step in range(steps):
        transform(step)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(own for (_, _, own, _, _) in stats.values())  # (calls, calls, own, cumulative, _)
    shares: dict[str, float] = collections.defaultdict(float)
    for (filename, _, function), (_, _, own, _, _) in stats.items():
        group = next((g for g, keys in PROFILE_GROUPS.items()
                      if any(k in function or k in filename for k in keys)), "other")  # fmt: skip
        shares[group] += own / total
    return dict(shares) | {"seconds_per_exam": total / (steps * BATCH)}


def train_step_rate(model: str, window: int, batch: int, steps: int) -> tuple[float, float]:
    """(exams/s, FLOPs per exam) of the trainer's jitted step for the paper-scale `model`."""
    import jax

    from ecgfm import sharding, train_state
    from ecgfm.models import ModelSpec
    from ecgfm.objectives.supervised import SupervisedObjective
    from ecgfm.optim import OptimConfig, make_optimizer

    hparams = {"input_length": window} if model == "ribeiro_resnet" else {
        "patch_size": 75, "width": 384, "depth": 12, "num_heads": 6, "max_patches": 54}  # fmt: skip
    spec = ModelSpec.create(model, hparams)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    tx, schedule = make_optimizer(OptimConfig(), 1000)
    training = train_state.compile_training(
        lambda rngs: spec.build_classifier(6, rngs), SupervisedObjective(), tx, schedule, mesh
    )
    rng = np.random.default_rng(0)
    host = {
        "signal": rng.integers(-2000, 2000, (batch, window, 12)).astype(np.int16),
        "signal_scale": np.full(batch, 1e-3, np.float32),
        "labels": rng.integers(0, 2, (batch, 6)).astype(np.float32),
        "label_mask": np.ones((batch, 6), np.float32),
        "mask": np.ones(batch, np.float32),
    }
    with jax.set_mesh(mesh):
        state = training.init(jax.random.key(0))
        device_batch = training.global_batch(host)
        compiled = training.step.lower(state, device_batch).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        state, metrics = compiled(state, device_batch)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, device_batch)
        jax.block_until_ready(metrics)
    return steps * batch / (time.perf_counter() - start), float(cost["flops"]) / batch


def bandpass_costs(src: pathlib.Path, repeats: int) -> tuple[float, float]:
    """(s per exam filtering at prepare time with scipy, s per exam of a batched FFT band-pass
    on the device inside jit), for a 0.5–40 Hz zero-phase band-pass of 10 s at 400 Hz."""
    import jax
    import jax.numpy as jnp

    from ecgfm.data.code import CodeDataset

    reader = CodeDataset(src)
    records = [reader.read(e) for e in list(reader.record_ids)[:32]]
    spec = Preprocessing(sampling_rate=400.0, bandpass=(0.5, 40.0))
    start = time.perf_counter()
    for _ in range(repeats):
        for record in records:
            spec.apply(record)
    host = (time.perf_counter() - start) / (repeats * len(records))

    freqs = np.fft.rfftfreq(RESNET_WINDOW, 1 / 400.0)
    gain = jnp.asarray(((freqs >= 0.5) & (freqs <= 40.0)).astype(np.float32))

    @jax.jit
    def fft_bandpass(signal_BTC):
        spectrum = jnp.fft.rfft(signal_BTC, axis=1) * gain[None, :, None]
        return jnp.fft.irfft(spectrum, n=signal_BTC.shape[1], axis=1)

    batch = jnp.asarray(np.random.default_rng(0).normal(size=(BATCH, RESNET_WINDOW, 12)),
                        jnp.float32)  # fmt: skip
    fft_bandpass(batch).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fft_bandpass(batch)
    out.block_until_ready()
    return host, (time.perf_counter() - start) / (repeats * BATCH)


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
    parser.add_argument("--num-exams", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=16, help="timed batches per variant/round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cores", type=int, default=1, help="host cores the pipeline may use")
    parser.add_argument("--step-batch", type=int, default=16, help="exams per timed train step")
    parser.add_argument("--step-steps", type=int, default=2, help="timed train steps per model")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument("--workdir", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    absl.flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="ecgfm_bench_"))
    src = workdir / "code_src"
    if not src.is_dir():
        print(f"writing {args.num_exams} synthetic exams to {src} ...", flush=True)
        write_dataset("code", src, num_records=args.num_exams, seed=0, exams_per_shard=256)
    spec = Preprocessing(sampling_rate=400.0)
    prepare_seconds = {}
    for compression in COMPRESSIONS:
        start = time.perf_counter()
        prepare_dataset("code", src, workdir / "tfds", preprocessing=spec,
                        fractions={"train": 1.0}, config_name=compression,
                        compression=compression)  # fmt: skip
        prepare_seconds[compression] = time.perf_counter() - start
    shard_bytes = {
        c: sum(p.stat().st_size for p in (workdir / "tfds" / "code" / c).rglob("*array_record*"))
        for c in COMPRESSIONS
    }

    def source(compression: str) -> Callable[[], TfdsSource]:
        return lambda: TfdsSource(workdir / "tfds", "code", "train", config=compression)

    load_before = os.getloadavg()
    # The train step and the device-side filter first, on every core (XLA sizes its thread
    # pool when it starts); then the pipeline pinned to --cores.
    step_rates = {
        name: train_step_rate(name, window, args.step_batch, args.step_steps)
        for name, window in (("ribeiro_resnet", RESNET_WINDOW), ("vit1d", VIT_WINDOW))
    }
    host_filter, device_filter = bandpass_costs(src, repeats=3)
    all_cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, all_cores[: args.cores])
    variants: dict[str, Callable[[int], float]] = {
        f"grain + array_record, compression {c}, {RESNET_WINDOW}": (
            lambda r, c=c: time_pipeline(source(c), RESNET_WINDOW, args.steps, r)
        )
        for c in COMPRESSIONS
    }
    variants[f"grain + array_record, compression none, {VIT_WINDOW}"] = lambda r: time_pipeline(
        source("none"), VIT_WINDOW, args.steps, r
    )
    variants["whole host path (pipeline + transfer to the device), none, 4096"] = lambda r: (
        time_pipeline(source("none"), RESNET_WINDOW, args.steps, r, to_device=True)
    )
    variants["naive h5py row loop, shuffled, float32"] = lambda r: time_naive(src, args.steps, r)
    rates: dict[str, list[float]] = {key: [] for key in variants}
    for round_index in range(args.rounds):
        for key, run in variants.items():
            rates[key].append(run(round_index))
        print(f"round {round_index}: " + ", ".join(f"{r[-1]:.0f}" for r in rates.values()),
              flush=True)  # fmt: skip
    shares = profile_pipeline(source("none")(), args.steps)
    load_after = os.getloadavg()

    print(f"\ncommand: {sys.executable} benchmarks/input_pipeline.py {' '.join(argv)}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"cpu: {cpu_model()}, {len(all_cores)} logical cores; pipeline pinned to {args.cores}")
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("jax", "grain", "array-record", "tensorflow-datasets", "h5py", "numpy")
    )
    print(f"python {platform.python_version()}, {versions}")
    loads = [" / ".join(f"{x:.1f}" for x in load) for load in (load_before, load_after)]
    print(f"load average (1 / 5 / 15 min): {loads[0]} before, {loads[1]} after")
    print(f"batch {BATCH}, {args.num_exams} exams, {args.steps} batches per variant and round, "
          f"{args.rounds} interleaved rounds\n")  # fmt: skip
    print("| shards | bytes per exam | prepare s (whole set) |\n|---|---|---|")
    for c in COMPRESSIONS:
        print(f"| {c} | {shard_bytes[c] / args.num_exams / 1024:.1f} KiB | "
              f"{prepare_seconds[c]:.1f} |")  # fmt: skip
    print(f"\n| variant ({args.cores} core) | median exams/s | range | × {REFERENCE} |")
    print("|---|---|---|---|")
    reference = rates[REFERENCE]
    for name, values in rates.items():
        ratio = statistics.median(v / b for v, b in zip(values, reference, strict=True))
        print(f"| {name} | {statistics.median(values):.0f} | {min(values):.0f}–"
              f"{max(values):.0f} | {ratio:.2f} |")  # fmt: skip
    host_path = statistics.median(rates[
        "whole host path (pipeline + transfer to the device), none, 4096"])  # fmt: skip
    print("\nwhere the pipeline's own time goes (compression none, 4096, one thread):")
    for group, share in sorted(shares.items(), key=lambda kv: -kv[1]):
        if group != "seconds_per_exam":
            print(f"- {group}: {share:.0%}")
    print(f"- total {shares['seconds_per_exam'] * 1e6:.0f} µs per exam (profiled, one thread)")
    print(
        f"\n| train step here (all cores, batch {args.step_batch}) | exams/s | GFLOP per "
        "exam | pipeline (1 core) / step | exams/s one accelerator needs at "
        f"{args.mfu:.0%} of {args.peak_tflops:g} TFLOP/s | host cores it needs |"
    )
    print("|---|---|---|---|---|---|")
    window_of = {"ribeiro_resnet": RESNET_WINDOW, "vit1d": VIT_WINDOW}
    for name, (rate, flops) in step_rates.items():
        pipeline = statistics.median(rates[
            f"grain + array_record, compression none, {window_of[name]}"])  # fmt: skip
        needed = args.mfu * args.peak_tflops * 1e12 / flops
        print(f"| {name} | {rate:.1f} | {flops / 1e9:.1f} | {pipeline / rate:.0f}× | "
              f"{needed:,.0f} | {needed / host_path:.1f} |")  # fmt: skip
    print(f"\nband-pass 0.5–40 Hz: {host_filter * 1e3:.2f} ms per exam once at prepare time "
          f"(scipy, zero-phase Butterworth) vs {device_filter * 1e3:.3f} ms per exam per epoch "
          "as a batched FFT inside the jitted step on this CPU")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
