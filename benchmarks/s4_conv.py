"""S4D convolution: the FFT of `ecgfm.models.s4` against the parallel (associative) scan.

    python benchmarks/s4_conv.py --lengths 1000,2048,4096 --width 128 --state-size 64 \
        --batch-size 4 --rounds 5 --threads 2

One S4D layer's linear SSM (`S4D.convolve`: kernel from the parameters, K ∗ u + D u) with
`conv="fft"` and `conv="scan"`, forward and backward (the gradient of a scalar of the output
with respect to the layer's parameters and its input, as in training), jitted, on
`[B, T, H]` float32 input. After compilation and one warm-up call, the two are timed
alternately in rounds (so a shared machine's load hits both alike); the table gives the median
time per call and the median of the per-round ratios scan / FFT. Both compute the same values
(tests/test_s4.py checks them against a step-by-step recurrence); this script also checks that
their outputs agree before timing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="1000,2048,4096", help="T values, comma-separated")
    parser.add_argument("--width", type=int, default=128, help="H, channels")
    parser.add_argument("--state-size", type=int, default=64, help="N (N/2 complex modes)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2, help="timed calls per round")
    parser.add_argument("--threads", type=int, default=2, help="CPUs this process may use")
    args = parser.parse_args(argv)
    args.lengths = [int(t) for t in args.lengths.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    """Time both convolutions at every length and print the table."""
    args = parse_args(argv)
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[: args.threads])  # before JAX sizes its thread pool

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from ecgfm.models.s4 import S4D, S4Config

    print(f"command: {shlex.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])}")
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; threads: {args.threads}")
    print("load average (1/5/15 min) at start: " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    rows = []
    for length in args.lengths:
        steps = {}
        u = jax.random.normal(jax.random.key(0), (args.batch_size, length, args.width))
        for conv in ("fft", "scan"):
            config = S4Config(
                width=args.width, state_size=args.state_size, conv=conv,
                bidirectional=args.bidirectional,
            )  # fmt: skip
            graphdef, state = nnx.split(S4D(config, rngs=nnx.Rngs(0)))

            def loss(state, u, graphdef=graphdef):
                y = nnx.merge(graphdef, state).convolve(u)
                return jnp.mean(jnp.square(y)), y

            step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
            start = time.perf_counter()
            (_, y), _ = jax.block_until_ready(step(state, u))
            compile_s = time.perf_counter() - start
            jax.block_until_ready(step(state, u))  # warm-up
            steps[conv] = (step, state, np.asarray(y), compile_s)
        difference = np.abs(steps["fft"][2] - steps["scan"][2]).max()
        scale = np.abs(steps["fft"][2]).max()
        if difference > 1e-3 * scale:
            sys.exit(f"T={length}: FFT and scan disagree (max |Δ| {difference:.2e})")
        times = {"fft": [], "scan": []}
        for _ in range(args.rounds):
            for conv, (step, state, _, _) in steps.items():
                start = time.perf_counter()
                for _ in range(args.calls):
                    jax.block_until_ready(step(state, u))
                times[conv].append((time.perf_counter() - start) / args.calls)
        ratio = statistics.median(s / f for s, f in zip(times["scan"], times["fft"], strict=True))
        fft_ms, scan_ms = (1e3 * statistics.median(times[c]) for c in ("fft", "scan"))
        rows.append((length, fft_ms, scan_ms, ratio, steps["fft"][3], steps["scan"][3]))
        print(f"T={length}: fft {fft_ms:.1f} ms, scan {scan_ms:.1f} ms", flush=True)
    print("load average (1/5/15 min) at end: " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(
        f"\nbatch {args.batch_size}, H={args.width}, N={args.state_size}, "
        f"{'bidirectional' if args.bidirectional else 'causal'}, forward + backward\n"
    )
    print(
        "| T | FFT ms/call | scan ms/call | scan / FFT (median of rounds) | compile s FFT / scan |"
    )
    print("|---|---|---|---|---|")
    for length, fft_ms, scan_ms, ratio, c_fft, c_scan in rows:
        print(
            f"| {length} | {fft_ms:.1f} | {scan_ms:.1f} | {ratio:.1f}× | "
            f"{c_fft:.1f} / {c_scan:.1f} |"
        )


if __name__ == "__main__":
    main()
