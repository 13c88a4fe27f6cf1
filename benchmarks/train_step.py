"""Train-step speed of the Ribeiro ResNet: ecgfm's jitted step beside a PyTorch twin.

    python benchmarks/train_step.py --batch-size 64 --steps 3 --rounds 3 --threads 2
    python benchmarks/train_step.py --frameworks jax,jax_s4 --batch-size 16 --input-length 1024

`jax_s4` is ecgfm's same step on an S4D encoder (`ecgfm.models.s4`) sized to the Ribeiro
ResNet's parameter count (`S4_EQUAL_PARAMS`: width 512, 12 bidirectional layers, state size 8,
6.53 M encoder parameters against the ResNet's 6.39 M), with its pooled linear head; it is not
in the default `--frameworks`.

Each framework runs in its own worker process (pinned to the same `--threads` CPUs, so peak
RSS is per framework); after start-up (compilation, first step, `--warmup-steps`) the parent
alternates the workers in rounds of `--steps` steps, so load from the rest of a shared machine
hits all of them alike. A round is timed from the first dispatch to `jax.block_until_ready`
(PyTorch: the last `optimizer.step()`, or `torch.cuda.synchronize()`); the table gives the
median round's time per step and, per framework, the median over rounds of its step time
divided by JAX's in the same round. JAX runs the trainer's own step
(`ecgfm.train_state.compile_training`: constant-LR AdamW, no clipping, weight decay on
kernels only, BCE over 6 classes); PyTorch runs the same model, loss and optimizer
(`torch_ribeiro.py`), eager and `torch.compile`d.
FLOPs per step come from XLA's cost analysis of the compiled step; on an accelerator whose
peak is in `PEAK_BF16_FLOPS` (or given by `--peak-tflops`) the table adds MFU.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import multiprocessing
import os
import platform
import resource
import shlex
import statistics
import sys
import time
import traceback
from typing import Any

FRAMEWORKS = ("jax", "jax_s4", "torch", "torch_compile")
DEFAULT_FRAMEWORKS = ("jax", "torch", "torch_compile")
# An S4D encoder with the Ribeiro ResNet's parameter count (6,531,584 vs 6,391,184 in the
# encoders): width 512 and 12 layers of the ECG benchmark's S4 (state size 8, bidirectional).
S4_EQUAL_PARAMS = {"width": 512, "depth": 12, "state_size": 8, "bidirectional": True}
NUM_CLASSES = 6
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-4

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets; matched against
# `jax.Device.device_kind` in this order (more specific names first).
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
)


def peak_flops(device_kind: str) -> float | None:
    """The dense bf16 peak FLOP/s of a device kind from `PEAK_BF16_FLOPS`, or None."""
    for name, flops in PEAK_BF16_FLOPS:
        if name.lower() in device_kind.lower():
            return flops
    return None


def _pin_threads(threads: int) -> None:
    """Run this process on `threads` CPUs: XLA sizes its thread pool by the CPUs it may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if threads > len(allowed):
        raise ValueError(f"--threads {threads} but this process may use {len(allowed)} CPUs")
    os.sched_setaffinity(0, allowed[:threads])


def _random_batch(args: argparse.Namespace) -> dict[str, Any]:
    """Signals `[B, T, 12]` ~ N(0, 1) and random 0/1 labels `[B, K]`, the same in every worker."""
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.input_length, 12)
    return {
        "signal": rng.standard_normal(shape, dtype=np.float32),
        "labels": rng.integers(0, 2, (args.batch_size, NUM_CLASSES)).astype(np.float32),
        "label_mask": np.ones((args.batch_size, NUM_CLASSES), np.float32),
        "mask": np.ones((args.batch_size,), np.float32),
    }


class JaxStep:
    """ecgfm's compiled train step on one device, with the state it carries between steps."""

    def __init__(self, args: argparse.Namespace, *, model: str = "ribeiro_resnet"):
        import jax

        from ecgfm import sharding, train_state
        from ecgfm.models import ModelSpec
        from ecgfm.objectives.supervised import SupervisedObjective
        from ecgfm.optim import OptimConfig, make_optimizer

        self.jax = jax
        hparams = dict(S4_EQUAL_PARAMS) if model == "s4" else {"input_length": args.input_length}
        spec = ModelSpec.create(model, hparams)
        optim = OptimConfig(
            learning_rate=LEARNING_RATE, schedule="constant", weight_decay=WEIGHT_DECAY,
            clip_norm=0.0,
        )  # fmt: skip
        device = jax.devices()[0]
        self.mesh = sharding.make_mesh(1, devices=[device])
        tx, schedule = make_optimizer(optim, total_steps=1_000)
        training = train_state.compile_training(
            lambda rngs: spec.build_classifier(NUM_CLASSES, rngs), SupervisedObjective(), tx,
            schedule, self.mesh,
        )  # fmt: skip
        with jax.set_mesh(self.mesh):
            self.state = training.init(jax.random.key(0))
            self.batch = training.global_batch(_random_batch(args))
            self.compiled = training.step.lower(self.state, self.batch).compile()
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost  # a list of one dict in older JAX
        self.flops = float(cost["flops"]) if cost and "flops" in cost else None
        on_cpu = device.platform == "cpu"
        # JAX calls NVIDIA GPUs "gpu", PyTorch "cuda": one name, so the table can compare.
        platform_name = {"gpu": "cuda"}.get(device.platform, device.platform)
        self.device = "cpu" if on_cpu else f"{platform_name}: {device.device_kind}"
        self.peak = None if on_cpu else peak_flops(device.device_kind)
        self.metrics = None

    def run(self, steps: int) -> None:
        """`steps` steps dispatched back to back, then wait for the last."""
        with self.jax.set_mesh(self.mesh):
            for _ in range(steps):
                self.state, self.metrics = self.compiled(self.state, self.batch)
        self.jax.block_until_ready((self.state, self.metrics))


class TorchStep:
    """The PyTorch twin's train step (eager or `torch.compile`d model) on CUDA if present."""

    def __init__(self, args: argparse.Namespace, *, compile_model: bool):
        import torch
        from torch_ribeiro import RibeiroResNetTorch, make_adamw

        self.torch = torch
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        self.cuda = torch.cuda.is_available()
        device = torch.device("cuda" if self.cuda else "cpu")
        model = RibeiroResNetTorch(NUM_CLASSES, input_length=args.input_length).to(device)
        model.train()
        self.optimizer = make_adamw(model, LEARNING_RATE, WEIGHT_DECAY)
        self.model = torch.compile(model) if compile_model else model
        batch = _random_batch(args)
        # Channels-first is PyTorch's convolution layout; a data pipeline would deliver it.
        self.signal = torch.from_numpy(batch["signal"].transpose(0, 2, 1).copy()).to(device)
        self.labels = torch.from_numpy(batch["labels"]).to(device)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.device = f"cuda: {torch.cuda.get_device_name()}" if self.cuda else "cpu"
        self.flops = self.peak = None
        self.parameters = None

    def run(self, steps: int) -> None:
        """`steps` train steps, then wait for the device."""
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(self.signal), self.labels)
            loss.backward()
            self.optimizer.step()
        if self.cuda:
            self.torch.cuda.synchronize()


def _worker(framework: str, args: argparse.Namespace, conn: Any) -> None:
    """Build, warm up, then run rounds on request; reply with round times and peak RSS."""
    try:
        _pin_threads(args.threads)
        start = time.perf_counter()
        if framework in ("jax", "jax_s4"):
            bench = JaxStep(args, model="s4" if framework == "jax_s4" else "ribeiro_resnet")
        else:
            bench = TorchStep(args, compile_model=framework == "torch_compile")
        bench.run(1)  # torch.compile compiles here; JAX's first execution allocates
        startup = time.perf_counter() - start
        bench.run(args.warmup_steps)
        conn.send(
            {
                "device": bench.device,
                "startup_s": startup,
                "flops": bench.flops,
                "peak": bench.peak,
                "parameters": bench.parameters,
            }
        )
        while (steps := conn.recv()) is not None:
            start = time.perf_counter()
            bench.run(steps)
            conn.send(time.perf_counter() - start)
        conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    except Exception:
        conn.send({"error": traceback.format_exc()})


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-length", type=int, default=4096, help="T, samples per lead")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed, after the first")
    parser.add_argument("--threads", type=int, default=2, help="CPUs each framework may use")
    parser.add_argument(
        "--frameworks",
        default=",".join(DEFAULT_FRAMEWORKS),
        help=f"comma-separated, of {FRAMEWORKS}",
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="device peak for MFU (default: table)"
    )
    args = parser.parse_args(argv)
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if unknown := sorted(set(args.frameworks) - set(FRAMEWORKS)):
        parser.error(f"unknown frameworks {unknown}; known: {FRAMEWORKS}")
    return args


def _row(name: str, info: dict, rounds: list[float], args: argparse.Namespace, ref) -> str:
    steps = [t / args.steps for t in rounds]
    step = statistics.median(steps)
    # Paired by round: the load of a shared machine drifts, a round's frameworks share it.
    ratio = statistics.median(t / r for t, r in zip(rounds, ref, strict=True)) if ref else None
    cells = [
        name,
        info["device"],
        f"{info['startup_s']:.1f}",
        f"{step:.3f} ({min(steps):.3f}–{max(steps):.3f})",
        f"{args.batch_size / step:.1f}",
        f"{ratio:.2f}×" if ratio else "–",
        f"{info['rss'] / 2**30:.2f}",
    ]
    flops, peak = info["flops"], info["peak"]
    cells.append(f"{flops / step / 1e12:.3f}" if flops else "–")
    cells.append(f"{100 * flops / step / peak:.1f} %" if flops and peak else "–")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    """Start one worker per framework, alternate them in rounds, print the results table."""
    args = parse_args(argv)
    command = shlex.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    print(f"command: {command}")
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"cpu: {_cpu_model()} ({os.cpu_count()} CPUs); threads per framework: {args.threads}")
    print(f"python {platform.python_version()}; " + ", ".join(
        f"{p} {_version(p)}" for p in ("jax", "jaxlib", "flax", "optax", "torch")
    ))  # fmt: skip
    print(f"load average (1/5/15 min) at start: {_load()}")
    print(
        f"batch {args.batch_size} × {args.input_length} × 12 float32, {NUM_CLASSES} classes; "
        f"{args.rounds} rounds × {args.steps} steps after {args.warmup_steps} warm-up step(s)",
        flush=True,
    )

    context = multiprocessing.get_context("spawn")
    workers, info = {}, {}
    for framework in args.frameworks:  # one at a time: compilations would compete for CPUs
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(framework, args, child))
        process.start()
        reply = parent.recv()
        if "error" in reply:
            print(f"{framework} failed to start, left out:\n{reply['error']}", flush=True)
            process.join()
            continue
        workers[framework], info[framework] = (parent, process), reply
        size = reply["parameters"]
        size = f" ({size['encoder']:,} encoder + {size['head']:,} head parameters)" if size else ""
        print(
            f"{framework}: ready on {reply['device']} in {reply['startup_s']:.1f} s{size}",
            flush=True,
        )

    # The PyTorch twins run the JAX ResNet's model: its FLOPs (jax_s4 has its own).
    flops = info.get("jax", {}).get("flops")
    times: dict[str, list[float]] = {f: [] for f in workers}
    for r in range(args.rounds):
        for framework, (conn, _) in workers.items():
            conn.send(args.steps)
            times[framework].append(conn.recv())
        summary = ", ".join(f"{f} {t[-1] / args.steps:.3f}" for f, t in times.items())
        print(f"round {r + 1}: s/step {summary}", flush=True)
    for framework, (conn, process) in workers.items():
        conn.send(None)
        info[framework]["rss"] = conn.recv()
        process.join()
        # Model FLOPs are framework-independent; a GPU/TPU peak comes from JAX's device kind.
        if framework != "jax_s4":
            info[framework]["flops"] = flops
        info[framework]["peak"] = (
            args.peak_tflops * 1e12 if args.peak_tflops else info.get("jax", {}).get("peak")
        )
    if not workers:
        sys.exit("no framework ran")

    print(f"load average (1/5/15 min) at end: {_load()}")
    for framework in ("jax", "jax_s4"):
        if info.get(framework, {}).get("flops"):
            tflop = info[framework]["flops"] / 1e12
            print(f"FLOPs per train step, {framework} (XLA cost analysis): {tflop:.3f} TFLOP")
    ref = times.get("jax")
    print()
    print(
        "| framework | device | start-up s | s/step median (min–max) | samples/s "
        "| step time / JAX's (median of rounds) | peak RSS GiB | TFLOP/s | MFU (bf16 peak) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for framework in workers:
        print(_row(framework, info[framework], times[framework], args, ref))
    devices = {info[f]["device"].split(":")[0] for f in workers}
    if len(devices) > 1:
        print(f"\nwarning: frameworks ran on different devices {sorted(devices)}; no fair ratio")


if __name__ == "__main__":
    main()
