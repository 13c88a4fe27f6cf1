"""The linear probe of PTB-XL's six tasks from cached embeddings, at the real size.

    python benchmarks/probe_speed.py                 # the six tasks, as `ecgfm benchmark` runs them
    python benchmarks/probe_speed.py --levers        # + each lever against the previous solver

What it times: `study.run_study` with one `probe.ProbeMethod` (the λ grid of 7 values chosen
on validation, 1,000 bootstrap resamples on the test fold, Gβ thresholds) on each of PTB-XL's
six tasks, at PTB-XL's size: 21,837 records, folds 1–8 / 9 / 10 (17,441 / 2,193 / 2,203), 10 s
at 100 Hz in 2.5 s windows (4 training windows per record, 69,764 in all; 7 evaluation windows
every 1.25 s), with each task's class count (all 71, diagnostic 44, subdiagnostic 23,
superdiagnostic 5, form 19, rhythm 12; every record kept, a slight over-count). The embeddings
are synthetic, `--dim` wide: long-tailed multi-hot labels (prevalences 0.2 %–45 %) projected
into the embedding space plus record and window noise, so the probe has something to find
and the solver a realistic conditioning; they stand for what `embed_task` reads from its
cache (the embedding itself is the encoder's cost, not the probe's).

`--levers` also times, on one task (`--levers-task`, 'all' by default), the previous solver (one
`optax.lbfgs` over all classes jointly, zoom line search, rows padded to the next power of two,
each λ from zero, tol 1e-6 on the joint gradient norm, 500 iterations at most; kept below only
to measure against), the same with the current tolerance, and the current per-class solver along
the λ path; and the bootstrap of AUROC/AUPRC (the previous per-class reduction over tie groups)
against `metrics.bootstrap_auroc_auprc`. Results are in README.md and benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ecgfm import metrics
from ecgfm.data.pipeline import pad_rows
from ecgfm.data.splits import TEST, TRAIN, VALIDATION
from ecgfm.transfer import probe
from ecgfm.transfer.embed import Embeddings
from ecgfm.transfer.study import run_study
from ecgfm.transfer.tasks import TaskData, ptbxl_task

SPLIT_RECORDS = {TRAIN: 17_441, VALIDATION: 2_193, TEST: 2_203}
WINDOWS = {TRAIN: 4, VALIDATION: 7, TEST: 7}  # 10 s: 2.5 s every 2.5 s / every 1.25 s
TASK_CLASSES = {"all": 71, "diagnostic": 44, "subdiagnostic": 23, "superdiagnostic": 5,
                "form": 19, "rhythm": 12}  # fmt: skip


def synthetic_task(task: str, dim: int, seed: int = 0) -> tuple[TaskData, dict[str, Embeddings]]:
    """A PTB-XL-sized task and its window embeddings (see the module docstring)."""
    rng = np.random.default_rng(seed)
    k = TASK_CLASSES[task]
    prevalence = np.geomspace(0.45, 0.002, k)
    projection = rng.normal(size=(k, dim)) / np.sqrt(k)
    labels, embedded, record_ids = {}, {}, {}
    for split, n in SPLIT_RECORDS.items():
        y = rng.random((n, k)) < prevalence
        record = y @ projection + rng.normal(size=(n, dim))
        w = WINDOWS[split]
        windows = np.repeat(record, w, axis=0) + 0.5 * rng.normal(size=(n * w, dim))
        ids = [f"{split}{i}" for i in range(n)]
        labels[split], record_ids[split] = y, ids
        embedded[split] = Embeddings(
            ids, windows.astype(np.float32), np.repeat(np.arange(n), w), n, 0, [], None
        )
    data = TaskData(
        spec=ptbxl_task(task), dataset_id="synthetic", class_names=tuple(map(str, range(k))),
        record_ids=record_ids, labels=labels, dropped=dict.fromkeys(labels, 0),
        read=lambda r: None,
    )  # fmt: skip
    return data, embedded


def six_tasks(dim: int, num_bootstrap: int) -> tuple[float, float]:
    """Wall and CPU seconds of the six tasks' studies (CPU time: all threads of this process,
    what a shared machine's load does not inflate the way it inflates wall time)."""
    wall = cpu = 0.0
    header = ("task", "K", "wall s", "CPU s", "test AUROC")
    print("{:<16} {:>3} {:>7} {:>7} {:>10}  iterations per λ".format(*header))
    for task in TASK_CLASSES:
        data, embedded = synthetic_task(task, dim)
        start, start_cpu = time.perf_counter(), time.process_time()
        study, _ = run_study(
            data, {"pretrained": probe.probe_method(embedded, data)}, fractions=(1.0,),
            seeds=(0,), num_bootstrap=num_bootstrap,
        )  # fmt: skip
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        wall, cpu = wall + seconds, cpu + cpu_seconds
        run = study["runs"][0]
        auroc, iterations = run["test"]["macro_auroc"], run["fit"]["lbfgs_iterations_per_l2"]
        print(f"{task:<16} {TASK_CLASSES[task]:>3} {seconds:>7.1f} {cpu_seconds:>7.1f} "
              f"{auroc:>10.3f}  {iterations}")  # fmt: skip
    print(f"six tasks (each: embeddings aligned, 7 λ fitted and chosen on validation, test "
          f"scored with {num_bootstrap} bootstrap resamples): {wall:.1f} s wall, "
          f"{cpu:.1f} s CPU")  # fmt: skip
    return wall, cpu


# --- The previous solver, kept only to measure against (ecgfm before the per-class path). ---
@functools.partial(jax.jit, static_argnames=("max_iter",))
def _previous_lbfgs(x_ND, y_NK, w_N, l2, bias_K, tol, max_iter):
    w_N = w_N / w_N.sum()

    def loss(params):
        logits = x_ND @ params["w"] + params["b"]
        bce = optax.sigmoid_binary_cross_entropy(logits, y_NK)
        return jnp.sum(w_N[:, None] * bce) + 0.5 * l2 * jnp.sum(params["w"] ** 2)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)
    params = {"w": jnp.zeros((x_ND.shape[1], y_NK.shape[1]), x_ND.dtype), "b": bias_K}

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    def keep_going(carry):
        _, state = carry
        count = optax.tree.get(state, "count")
        grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
        return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

    params, state = jax.lax.while_loop(keep_going, step, (params, solver.init(params)))
    return params, optax.tree.get(state, "count")


def previous_fit(x, y, l2_grid, tol, pad=True):
    mean, scale = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / scale
    weights = np.ones(len(x))
    rows = max(64, 1 << (len(x) - 1).bit_length()) if pad else len(x)
    args = [jnp.asarray(pad_rows(a, rows), jnp.float32) for a in (x, y, weights)]
    bias = jnp.asarray(probe._prior_logits(y, weights), jnp.float32)
    iterations = []
    for l2 in l2_grid:
        _, count = _previous_lbfgs(*args, jnp.float32(l2), bias, jnp.float32(tol), 500)
        iterations.append(int(count))
    return iterations


def levers(dim: int, task: str) -> None:
    data, embedded = synthetic_task(task, dim)
    method = probe.probe_method(embedded, data)
    x, owner = method.train.features("max")
    y = data.labels[TRAIN][owner].astype(np.float32)
    grid = probe.DEFAULT_L2_GRID
    k = TASK_CLASSES[task]
    print(f"{task!r}: {x.shape[0]} training windows × {dim} dims, {k} classes, λ grid {grid}")

    def timed(label, fn):  # one run each, compilation included (a few seconds)
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        print(f"  {label:<74} {seconds:6.1f} s wall {cpu_seconds:6.1f} s CPU  {result}")

    timed("previous: joint L-BFGS, padded rows, tol 1e-6 (grad norm), λ from zero",
          lambda: previous_fit(x, y, grid, 1e-6))  # fmt: skip
    timed("previous, rows not padded", lambda: previous_fit(x, y, grid, 1e-6, pad=False))
    timed("previous, not padded, tol 1e-4", lambda: previous_fit(x, y, grid, 1e-4, pad=False))
    timed("current: per-class L-BFGS, warm-started λ path, closed-form loss, tol 1e-4",
          lambda: [p.iterations for p in probe.fit_probe_path(x, y, grid)])  # fmt: skip

    test_y = data.labels[TEST]
    scores = np.asarray(np.random.default_rng(0).normal(size=test_y.shape) + 2 * test_y, np.float64)
    weights = metrics.bootstrap_weights(test_y, 1000, 0)

    def previous():  # per class: sort once, reduce the [B, N] weights per tie group
        for c in range(test_y.shape[1]):
            ranked = metrics._RankedClass.build(test_y[:, c], scores[:, c])
            ranked.auroc(weights), ranked.average_precision(weights)
        return "per class"

    timed(f"bootstrap AUROC+AUPRC, 1000 resamples × {k} classes: previous (per class)", previous)
    timed("bootstrap AUROC+AUPRC, vectorised (bootstrap_auroc_auprc)",
          lambda: metrics.bootstrap_auroc_auprc(test_y, scores, weights)[0].shape)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=256, help="embedding width (default 256)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--levers", action="store_true", help="time each lever (minutes)")
    parser.add_argument("--levers-task", default="all", choices=sorted(TASK_CLASSES))
    parser.add_argument("--skip-six", action="store_true", help="only the levers")
    args = parser.parse_args(argv)
    machine = platform.processor() or platform.machine()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine}, "
          f"{os.cpu_count()} logical cores; load average {os.getloadavg()}; "
          f"jax {jax.__version__}; python {sys.version.split()[0]}")  # fmt: skip
    if not args.skip_six:
        six_tasks(args.dim, args.bootstrap)
    if args.levers:
        levers(args.dim, args.levers_task)
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
