"""How long would `ecgfm prepare` take for CODE-II? Single process beside Beam, side by side.

    .venv/bin/python benchmarks/prepare_scale.py --num-exams 2000 --small 200 --workers 2 \\
        --rounds 2 --workdir /tmp/prepare_scale

Writes synthetic CODE-layout exams once (HDF5 shards of `--exams-per-shard`, 7 s and 10 s
exams at 400 Hz in 4096-sample rows, as CODE ships), then builds them with
`prepare_dataset("code", ...)` in interleaved rounds (round r runs every variant once, so
drifting load on a shared machine hits all alike):
- single process (the default build);
- Apache Beam's DirectRunner with `--workers` local processes (`beam_workers`).
Each build runs in a fresh Python process (`--one`), so no variant inherits another's warm
imports or memory; it reports its wall time, its own peak RSS and its child processes' peak
(the Beam workers).

Every variant is timed at two sizes, `--small` and `--num-exams` exams (the first
`--small` exams of the same folder, so both read the same kind of files): the difference
gives the marginal rate (exams/s once running) and, from it, the fixed start-up
(imports, pipeline set-up, Beam's stages). Extrapolation to CODE-II (`--target-exams`,
2.74 M) on one `--target-cores`-core machine assumes that the Beam rate scales linearly with
workers (per-worker rate = measured rate / `--workers`) and that I/O is not the bottleneck;
both are stated beside the numbers. The launcher's peak memory per exam is extrapolated too:
Beam's DirectRunner (its FnApiRunner) holds every stage's output in the launching process,
so its memory grows with the dataset.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time


def build_once(args: argparse.Namespace) -> None:
    """One build in this process; prints a JSON line with its numbers."""
    from ecgfm.data.tfds_builders import prepare_dataset

    out = pathlib.Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    beam = {} if args.one == "single" else {"beam_runner": "direct", "beam_workers": args.workers}
    start = time.perf_counter()
    summary = prepare_dataset("code", args.src, out, **beam)
    wall = time.perf_counter() - start
    exams = sum(s["num_records"] for s in summary["splits"].values())
    shutil.rmtree(out, ignore_errors=True)
    me, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    print(
        json.dumps(
            {
                "wall_s": wall,
                "exams": exams,
                # CPU seconds of this process (the launcher) and of its children (Beam workers).
                "cpu_s": me.ru_utime + me.ru_stime,
                "children_cpu_s": children.ru_utime + children.ru_stime,
                "rss_mib": me.ru_maxrss / 1024,  # Linux reports kilobytes
                "children_rss_mib": children.ru_maxrss / 1024,
            }
        )
    )


def subset(src: pathlib.Path, out: pathlib.Path, num_exams: int) -> pathlib.Path:
    """The first `num_exams` exams of `src`: its exams.csv cut to them, the shards linked."""
    if out.exists():
        return out
    out.mkdir(parents=True)
    lines = (src / "exams.csv").read_text().splitlines(keepends=True)
    (out / "exams.csv").write_text("".join(lines[: num_exams + 1]))
    for shard in src.glob("exams_part*.hdf5"):
        (out / shard.name).symlink_to(shard)
    return out


def run_variant(variant: str, src: pathlib.Path, args: argparse.Namespace) -> dict:
    out = args.workdir / f"built_{variant}"
    command = [sys.executable, __file__, "--one", variant, "--src", str(src), "--out", str(out),
               "--workers", str(args.workers)]  # fmt: skip
    log = args.workdir / f"{variant}.log"
    with log.open("a") as stderr:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> dict:
    """Runs every variant at both sizes in interleaved rounds; the runs and the conditions."""
    from ecgfm.data.synthetic.code import write_code_dataset

    args.workdir.mkdir(parents=True, exist_ok=True)
    full = args.workdir / f"src_{args.num_exams}"
    if not full.exists():
        write_code_dataset(
            full, num_exams=args.num_exams, exams_per_shard=args.exams_per_shard, seed=0
        )
    sizes = {"small": subset(full, args.workdir / f"src_{args.small}", args.small), "full": full}
    versions = ", ".join(
        f"{p} {importlib.metadata.version(p)}"
        for p in ("apache-beam", "tensorflow-datasets", "array-record", "h5py", "numpy")
    )
    run = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "versions": f"python {platform.python_version()}, {versions}",
        "load_before": os.getloadavg(),
        "workers": args.workers,
        "runs": [],
    }
    for r in range(args.rounds):
        for size, src in sizes.items():
            for variant in ("single", "beam"):
                result = {"variant": variant, "size": size, **run_variant(variant, src, args)}
                run["runs"].append(result)
                print(f"round {r} {json.dumps(result)}", flush=True)
    run["load_after"] = os.getloadavg()
    return run


def fit(runs: list[dict], variant: str) -> dict[str, float]:
    """Medians over rounds at both sizes, and what their difference says per exam."""
    fields = ("wall_s", "cpu_s", "children_cpu_s", "rss_mib", "children_rss_mib")
    x: dict[str, float] = {}
    for size in ("small", "full"):
        mine = [r for r in runs if r["variant"] == variant and r["size"] == size]
        x |= {f"{f}_{size}": statistics.median(r[f] for r in mine) for f in fields}
        x[f"exams_{size}"] = mine[0]["exams"]
    added = x["exams_full"] - x["exams_small"]
    x["marginal"] = added / max(x["wall_s_full"] - x["wall_s_small"], 1e-9)
    x["fixed"] = x["wall_s_small"] - x["exams_small"] / x["marginal"]
    # CPU ms per exam of the launching process and of its children (Beam's workers).
    x["launcher_ms"] = 1e3 * (x["cpu_s_full"] - x["cpu_s_small"]) / added
    x["workers_ms"] = 1e3 * (x["children_cpu_s_full"] - x["children_cpu_s_small"]) / added
    x["rss_per_exam"] = (x["rss_mib_full"] - x["rss_mib_small"]) / added
    return x


def report(run: dict, args: argparse.Namespace) -> None:
    """The conditions, a table side by side, and the extrapolation to CODE-II."""
    load = [" / ".join(f"{v:.1f}" for v in run[k]) for k in ("load_before", "load_after")]
    print(f"    command: {run['command']}")
    print(f"    date: {run['date']}")
    print(f"    cpu: {run['cpu']}")
    print(f"    {run['versions']}")
    print(f"    load average (1 / 5 / 15 min): {load[0]} before, {load[1]} after")
    print()
    single, beam = fit(run["runs"], "single"), fit(run["runs"], "beam")
    small, full = int(single["exams_small"]), int(single["exams_full"])
    print(
        f"| build | wall, {small} exams | wall, {full} exams | exams/s ({full}) | marginal "
        "exams/s | fixed start-up | CPU ms per exam: launcher + workers | peak RSS "
        f"({full}): launcher, workers |"
    )
    print("|---|---|---|---|---|---|---|---|")
    workers = run["workers"]
    for x, label in ((single, "single process"), (beam, f"Beam DirectRunner, {workers} workers")):
        print(
            f"| {label} | {x['wall_s_small']:.1f} s | {x['wall_s_full']:.1f} s | "
            f"{x['exams_full'] / x['wall_s_full']:.0f} | {x['marginal']:.0f} | "
            f"{max(x['fixed'], 0):.1f} s | {x['launcher_ms']:.1f} + {x['workers_ms']:.1f} | "
            f"{x['rss_mib_full']:.0f} MiB, {x['children_rss_mib_full']:.0f} MiB |"
        )
    print()
    work = {x is beam: x["launcher_ms"] + x["workers_ms"] for x in (single, beam)}
    overall = single["wall_s_full"] / beam["wall_s_full"]  # same exams: ratio of exams/s
    print(
        f"Beam / single process: {beam['marginal'] / single['marginal']:.2f}x the exams/s once "
        f"running, {overall:.2f}x at {full} exams (start-up included), "
        f"{work[True] / work[False]:.1f}x the CPU per exam"
    )
    print()
    target, cores = args.target_exams, args.target_cores
    per_worker = beam["marginal"] / workers
    print(f"Extrapolated to {target:,} exams (CODE-II); assumptions: linear scaling with workers,")
    print("I/O not the bottleneck, exams like these (7 s and 10 s at 400 Hz, raw storage):")
    hours = (single["fixed"] + target / single["marginal"]) / 3600
    print(f"- single process: {hours:.1f} h at {single['marginal']:.0f} exams/s")
    hours = (beam["fixed"] + target / (per_worker * cores)) / 3600
    print(
        f"- Beam, {cores} workers, from the wall time here ({per_worker:.0f} exams/s per "
        f"worker × {cores}): {hours:.2f} h"
    )
    work_ms = beam["launcher_ms"] + beam["workers_ms"]
    hours = (beam["fixed"] + target * work_ms / 1e3 / cores) / 3600
    print(
        f"- Beam, {cores} workers, from CPU time ({work_ms:.1f} ms per exam spread over "
        f"{cores} cores, which needs a runner whose shuffle is spread too: Flink, Spark"
        f"): {hours:.2f} h"
    )
    hours = (beam["fixed"] + target * beam["launcher_ms"] / 1e3) / 3600
    gib = beam["rss_per_exam"] * target / 1024
    print(
        f"- Beam's DirectRunner routes every stage's output through its one launching process "
        f"and keeps it there: {beam['launcher_ms']:.1f} ms per exam in that process alone "
        f"bounds it at {hours:.1f} h on any number of cores, and "
        f"{beam['rss_per_exam'] * 1024:.0f} KiB per exam there is ≈ {gib:,.0f} GiB of memory"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-exams", type=int, default=2000)
    parser.add_argument("--small", type=int, default=200, help="the second, smaller size")
    parser.add_argument("--workers", type=int, default=2, help="Beam DirectRunner processes")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--exams-per-shard", type=int, default=500)
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("/tmp/prepare_scale"))
    parser.add_argument("--target-exams", type=int, default=2_740_000, help="CODE-II's exams")
    parser.add_argument("--target-cores", type=int, default=64)
    parser.add_argument(
        "--report", action="store_true", help="print the report of WORKDIR/results.json again"
    )
    # One build in a fresh process (used by the benchmark itself).
    parser.add_argument("--one", choices=("single", "beam"), help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        build_once(args)
        return
    results = args.workdir / "results.json"
    if args.report:
        run = json.loads(results.read_text())
    else:
        run = measure(args)
        results.write_text(json.dumps(run, indent=1))
    print()
    report(run, args)


if __name__ == "__main__":
    main()
