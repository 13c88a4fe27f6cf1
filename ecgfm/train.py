"""The trainer: `train_and_evaluate(config, workdir)`, read top to bottom.

config → distributed start-up → mesh → data (`ecgfm.data.inputs`) → model, objective and
optimizer compiled for the mesh (`ecgfm.train_state`) → restore or initialise → loop: one
jitted step per global batch; metrics fetched one step late so the device never waits; at log,
evaluation and checkpoint steps the metrics are checked and written *before* the state is
saved, so no non-finite state is ever checkpointed and metrics.jsonl never lacks a line for a
committed step; SIGTERM checkpoints and stops (`ecgfm.preemption`). With `probe.every`, a
linear probe of the encoder on a small downstream set is scored every so many steps
(`ecgfm.transfer.online_probe`, imported only then: transfer sits above training).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import pathlib
from typing import Any

import jax
import tqdm
from ml_collections import ConfigDict

from ecgfm import checkpoint, distributed, train_state
from ecgfm.atomic import write_text_atomically
from ecgfm.config import ConfigError
from ecgfm.data.inputs import make_inputs
from ecgfm.experiment import Experiment
from ecgfm.optim import make_optimizer
from ecgfm.preemption import Preempted, Preemption
from ecgfm.run_log import MetricsLog, Throughput

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """A step's loss, gradients or new parameters are not finite; nothing of it was saved."""


def _check_finite(
    step: int, metrics: dict[str, float], record_ids: list[str], checkpointer: Any
) -> None:
    """Raises `NonFiniteError` naming the step, its records and the newest saved step."""
    bad = {k: metrics[k] for k in ("loss", "grad_norm", "param_norm") if k in metrics
           and not math.isfinite(metrics[k])}  # fmt: skip
    if not bad:
        return
    last = max(checkpointer.all_steps(), default=None)
    shown = checkpoint.listing(record_ids, limit=8)
    saved = "No checkpoint was written yet: a rerun starts afresh"
    if last is not None:
        saved = f"The newest checkpoint (step {last}) holds finite weights: rerun to resume from it"
    raise NonFiniteError(
        f"{', '.join(f'{k} is {v}' for k, v in bad.items())} at step {step}; stopping without "
        f"saving it. The batch held records {shown or '(unknown)'}. {saved}; check those "
        "records, or lower optim.learning_rate."
    )


def train_and_evaluate(config: ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
    """Train per `config` in `workdir` (resuming if it holds a checkpoint); final metrics.

    Raises `ConfigError` for an unusable config (before anything runs), `Preempted` (exit code
    `PREEMPTED_EXIT_CODE`) when SIGTERM stopped the run after checkpointing it,
    `NonFiniteError` when a step diverged, and `checkpoint.CheckpointMismatchError` when the
    workdir holds checkpoints that do not fit this config.
    """
    exp = Experiment.from_config(config)
    workdir = pathlib.Path(workdir).absolute()
    distributed.initialize(exp.distributed)
    main = distributed.is_main_process()
    workdir.mkdir(parents=True, exist_ok=True)
    loop = exp.train

    mesh = exp.mesh.make()
    if loop.global_batch_size % mesh.size:
        raise ConfigError(
            f"train.global_batch_size {loop.global_batch_size} is not divisible by the "
            f"{mesh.size} devices of the mesh"
        )

    # Data: each process reads its own rows of every global batch.
    inputs = make_inputs(
        exp.data, workdir=workdir, global_batch_size=loop.global_batch_size, seed=exp.seed
    )
    num_classes = len(inputs.label_names)

    # Model, optimizer and where every piece of the state lives.
    tx, schedule = make_optimizer(exp.optim, loop.steps)
    training = train_state.compile_training(
        lambda rngs: exp.objective.build_model(exp.model, num_classes, rngs),
        exp.objective, tx, schedule, mesh, accum_steps=exp.optim.grad_accum_steps,
    )  # fmt: skip

    # Restore order: this workdir's latest checkpoint → exp.resume → exp.init_from → scratch.
    checkpointer = checkpoint.Checkpointer(
        workdir / checkpoint.CHECKPOINT_DIR,
        keep=loop.keep_checkpoints,
        async_save=loop.async_checkpoint,
    )
    state, start_step = train_state.restore_or_init(
        training, checkpointer, inputs.train,
        seed=exp.seed, resume=exp.resume, init_from=exp.init_from,
    )  # fmt: skip

    if main:  # after restoring: a run refused for a changed config leaves them as they were
        write_text_atomically(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
        data_spec = {
            "label_names": list(inputs.label_names),
            "preprocessing": inputs.preprocessing.to_dict(),
            "num_train_exams": inputs.num_train,
            "num_val_exams": inputs.num_validation,
            "data": inputs.description,
        }
        write_text_atomically(workdir / "data_spec.json", json.dumps(data_spec, indent=2) + "\n")

    probe = None
    if exp.probe.every:  # the downstream set is read once, before the first step
        from ecgfm.transfer.online_probe import ProbeEvaluator

        probe = ProbeEvaluator(exp.probe, exp.model, inputs.preprocessing)

    metrics_log = MetricsLog(workdir, start_step)
    throughput = Throughput(loop.global_batch_size)
    progress = tqdm.tqdm(
        total=loop.steps, initial=start_step, disable=not main, desc="train", unit="step"
    )
    record_ids: collections.deque = collections.deque(maxlen=2)  # (step, ids) in flight

    def fetch(step: int, device_metrics: dict, *, write: bool) -> dict[str, float]:
        metrics = {k: float(v) for k, v in train_state.to_host(device_metrics).items()}
        ids = next((r for s, r in record_ids if s == step), [])
        _check_finite(step, metrics, ids, checkpointer)
        if step == start_step + 1:
            throughput.restart(step)  # the first step's time is mostly compilation
        if write:
            rate = throughput.measure(step)
            if rate is not None:
                metrics["samples_per_second"] = rate
            metrics_log.write(step, metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.4f}")
        return metrics

    final: dict[str, float] = {}
    # Metrics of step s are fetched after step s+1 is dispatched (the device never idles
    # waiting for the host), except where step s is logged, evaluated or saved.
    pending, step = None, start_step
    try:
        with jax.set_mesh(mesh), Preemption() as preemption:
            while step < loop.steps:
                local_batch = next(inputs.train)
                state, device_metrics = training.step(state, training.global_batch(local_batch))
                step += 1
                record_ids.append((step, local_batch["record_id"].tolist()))
                if pending is not None:
                    final = fetch(*pending, write=False)
                pending = (step, device_metrics)
                progress.update(1)
                last = step == loop.steps
                stopping = preemption.reached(step)
                evaluating = loop.eval_every and (step % loop.eval_every == 0 or last)
                saving = step % loop.checkpoint_every == 0 or last or stopping
                if step % loop.log_every == 0 or last or evaluating or saving:
                    final = fetch(*pending, write=step % loop.log_every == 0 or last)
                    pending = None
                if evaluating and (batches := inputs.validation_batches()) is not None:
                    val_metrics = train_state.evaluate(training, state, batches, exp.objective)
                    val_metrics = {f"val_{k}": v for k, v in val_metrics.items()}
                    metrics_log.write(step, val_metrics)
                    final = final | val_metrics
                    throughput.restart(step)  # evaluation time is not training throughput
                if probe is not None and (step % exp.probe.every == 0 or last):
                    probe_metrics = probe(
                        state["params"]["encoder"], state["model_state"].get("encoder", {})
                    )
                    metrics_log.write(step, probe_metrics)
                    final = final | probe_metrics
                    throughput.restart(step)
                if saving:
                    checkpointer.save(step, state, inputs.train)
                if stopping:
                    log.warning("preempted: checkpointed step %d, exiting", step)
                    break
    finally:  # also on an error: what was saved is complete on disk
        inputs.close()
        progress.close()
        checkpointer.wait_until_finished()
        checkpointer.close()
        metrics_log.close()
    if step < loop.steps:
        raise Preempted(step, workdir)
    return final if step > start_step else metrics_log.latest()
