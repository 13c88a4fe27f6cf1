"""kill -9 at random moments, rerun, and check that nothing committed was lost.

    python benchmarks/kill_resume.py --workdir /tmp/kill_resume --kills 40 --seed 0

A short smoke pretraining run (`experiments/configs/smoke.py`: 24 steps of batch 16, an
asynchronous checkpoint every 4 steps, validation every 12, 48 synthetic CODE-layout exams it
writes and packs itself) is run once uninterrupted as the reference. Then, in a fresh workdir,
the same command is started and killed with SIGKILL at a moment drawn with `--seed`, again and
again, until the run completes; then another fresh workdir, until `--kills` kills were made.
The moments, drawn per start:

- `any`: a uniform delay after the process starts (so also while the synthetic exams are
  written and packed, while JAX compiles, and while a checkpoint is restored);
- `checkpoint_write`: as soon as Orbax's temporary directory of a checkpoint appears (the
  asynchronous save is being written) or a new step directory does (it was just renamed);
- `metrics_line`: once metrics.jsonl holds a drawn number of lines more than at the start.

Each completed workdir must then hold what the reference holds: every step's training loss in
metrics.jsonl exactly once and bit-identical to the reference's, every validation line once,
the final checkpoint, and no checkpoint moved aside as damaged. The phase each kill hit is
recorded (data, start-up, training, checkpoint write). Prints a summary and writes
`summary.json` in `--workdir`.

The test suite runs the same function with a handful of kills
(`tests/test_checkpoint.py::test_kill_9_at_random_moments_loses_nothing`).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "experiments/configs/smoke.py"
OVERRIDES = (
    "train.steps=24", "train.checkpoint_every=4", "train.eval_every=12",
    "data.synthetic_exams=48", "train.async_checkpoint=true",
)  # fmt: skip
# As the CLI does: a preempted run exits with its documented code.
TRAIN = """
import sys
from ecgfm.config import load_config
from ecgfm.train import Preempted, train_and_evaluate
try:
    train_and_evaluate(load_config(sys.argv[1], sys.argv[3:]), sys.argv[2])
except Preempted as preempted:
    sys.exit(preempted.exit_code)
"""
MOMENTS = ("any", "checkpoint_write", "metrics_line")
TIMEOUT_S = 600


def start(workdir: pathlib.Path, overrides: tuple[str, ...] = OVERRIDES) -> subprocess.Popen:
    """The training command in its own process (one CPU device)."""
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN, CONFIG, str(workdir), *overrides],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen) -> None:
    """Wait for a run to end; it must succeed."""
    _, err = proc.communicate(timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"the run failed with exit code {proc.returncode}:\n{err[-3000:]}")


def metrics(workdir: pathlib.Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _lines(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def _checkpoint_entries(workdir: pathlib.Path) -> set[str]:
    directory = workdir / "checkpoints"
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


def phase(workdir: pathlib.Path, entries_at_start: set[str], lines_at_start: int) -> str:
    """What the run was doing, as far as its files tell."""
    if any("tmp" in name for name in _checkpoint_entries(workdir) - entries_at_start):
        return "checkpoint write"
    if not list((workdir / "data").glob("tfds/*/*/*/dataset_info.json")):
        return "data"  # writing or packing the synthetic exams
    if _lines(workdir) == lines_at_start:
        return "start-up"  # imports, compilation, restoring the checkpoint, the first step
    return "training"


def kill_at(proc: subprocess.Popen, workdir: pathlib.Path, moment: str, rng: random.Random,
            any_window_s: float) -> str | None:  # fmt: skip
    """SIGKILL `proc` at `moment`; the phase it hit, or None if the run ended first."""
    started = time.monotonic()
    delay = rng.uniform(0, any_window_s)
    lines_at_start = _lines(workdir)
    target_lines = lines_at_start + rng.randint(1, 12)
    entries = _checkpoint_entries(workdir)
    while proc.poll() is None:
        if time.monotonic() - started > TIMEOUT_S:
            proc.kill()
            raise RuntimeError("the run neither ended nor reached the kill moment")
        if moment == "any":
            due = time.monotonic() - started >= delay
        elif moment == "checkpoint_write":
            new = _checkpoint_entries(workdir) - entries
            due = any("tmp" in n or n.isdigit() for n in new)
        else:
            due = _lines(workdir) >= target_lines
        if due:
            hit = phase(workdir, entries, lines_at_start)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return hit
        time.sleep(0.005)
    return None


def check_against(reference: pathlib.Path, workdir: pathlib.Path, steps: int = 24) -> None:
    """Raises AssertionError unless `workdir` finished exactly as `reference` did."""
    ref, got = metrics(reference), metrics(workdir)
    train = [e["step"] for e in got if "loss" in e]
    if train != list(range(1, steps + 1)):
        raise AssertionError(f"{workdir}: training steps logged {train}, expected 1..{steps} once")
    val = [e["step"] for e in got if any(k.startswith("val_") for k in e)]
    ref_val = [e["step"] for e in ref if any(k.startswith("val_") for k in e)]
    if val != ref_val:
        raise AssertionError(f"{workdir}: validation at steps {val}, the reference {ref_val}")
    losses = {e["step"]: e["loss"] for e in got if "loss" in e}
    expected = {e["step"]: e["loss"] for e in ref if "loss" in e}
    different = {s: (losses[s], expected[s]) for s in expected if losses[s] != expected[s]}
    if different:
        raise AssertionError(f"{workdir}: losses differ from the reference at {different}")
    for key in ("val_loss", "val_macro_auroc"):
        ours = [e[key] for e in got if key in e]
        theirs = [e[key] for e in ref if key in e]
        if ours != theirs:
            raise AssertionError(f"{workdir}: {key} {ours} differs from the reference {theirs}")
    saved = sorted(int(n) for n in _checkpoint_entries(workdir) if n.isdigit())
    if not saved or saved[-1] != steps:
        raise AssertionError(f"{workdir}: checkpoints {saved} lack the last step {steps}")
    if (workdir / "checkpoints" / "corrupt").exists():
        raise AssertionError(f"{workdir}: a kill left a damaged checkpoint (moved to corrupt/)")


def run_kills(workdir: pathlib.Path, reference: pathlib.Path, kills: int, seed: int,
              any_window_s: float) -> dict:  # fmt: skip
    """Kill fresh runs `kills` times in all, each completed run checked against `reference`."""
    rng = random.Random(seed)
    record: dict = {"kills": 0, "runs_completed": 0, "starts": 0, "by_moment": {},
                    "by_phase": {}, "kills_per_run": []}  # fmt: skip
    by_moment, by_phase = collections.Counter(), collections.Counter()
    run = 0
    while record["kills"] < kills:
        target = workdir / f"run{run}"
        shutil.rmtree(target, ignore_errors=True)
        killed_here = 0
        while True:
            proc = start(target)
            record["starts"] += 1
            if record["kills"] >= kills:
                finish(proc)
                break
            moment = rng.choice(MOMENTS)
            hit = kill_at(proc, target, moment, rng, any_window_s)
            if hit is None:  # the run ended before the moment came
                if proc.returncode != 0:
                    raise RuntimeError(f"{target}: exit code {proc.returncode}: "
                                       f"{proc.stderr.read()[-3000:]}")  # fmt: skip
                break
            record["kills"] += 1
            killed_here += 1
            by_moment[moment] += 1
            by_phase[hit] += 1
            # A line per kill: a long run by hand shows where it is, and what it survived so far.
            print(f"kill {record['kills']}: {moment} hit {hit} ({target.name})", flush=True)
        check_against(reference, target)
        print(f"{target.name} completed after {killed_here} kill(s), identical to the reference",
              flush=True)  # fmt: skip
        record["runs_completed"] += 1
        record["kills_per_run"].append(killed_here)
        run += 1
    record["by_moment"], record["by_phase"] = dict(by_moment), dict(by_phase)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, type=pathlib.Path)
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    reference = args.workdir / "reference"
    began = time.monotonic()
    if not (reference / "checkpoints" / "24").is_dir():
        shutil.rmtree(reference, ignore_errors=True)
        started = time.monotonic()
        finish(start(reference))
        (args.workdir / "reference_seconds.txt").write_text(f"{time.monotonic() - started:.1f}\n")
    reference_s = float((args.workdir / "reference_seconds.txt").read_text())
    record = run_kills(args.workdir / "killed", reference, args.kills, args.seed, reference_s)
    record |= {
        "command": " ".join([sys.executable, *sys.argv]),
        "seed": args.seed,
        "reference_run_seconds": reference_s,
        "wall_seconds": round(time.monotonic() - began, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (args.workdir / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"{record['kills']} kills survived: {record['runs_completed']} runs completed after "
          "them, each bit-identical to the uninterrupted reference")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
