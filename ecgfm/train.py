"""The trainer: `train_and_evaluate(config, workdir)`, read top to bottom.

distributed start-up → mesh → data → model and optimizer → shardings → restore or initialise →
jitted step → loop (metrics one step late, periodic evaluation and checkpoints, preemption).
What the loop optimises comes from the objective (`ecgfm.objectives`); the state is a plain
dict pytree `{"step", "params", "model_state", "opt_state", "rng"}`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import pathlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorboardX
import tqdm
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from ecgfm import checkpoint, distributed, sharding
from ecgfm.data import pipeline, splits
from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.sources import CodeHdf5Source, PatientPairSource, Source, TfdsSource
from ecgfm.objectives import Objective, make_objective
from ecgfm.optim import make_optimizer

log = logging.getLogger(__name__)

State = dict[str, Any]
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


def train_step(
    graphdef: nnx.GraphDef,
    state: State,
    batch: dict[str, jax.Array],
    *,
    objective: Objective,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    accum_steps: int,
) -> tuple[State, dict[str, jax.Array]]:
    """One optimizer step on a global batch; pure, so it jits once with donated state."""
    step = state["step"]
    # One key per step, one stream per use: dropout masks depend on the step, not the devices.
    step_key = jax.random.fold_in(state["rng"], step)

    def loss_of(params: Any) -> tuple[jax.Array, tuple[dict, Any]]:
        # Built inside the differentiated function: NNX Rngs are stateful and trace-bound.
        rngs = nnx.Rngs(
            dropout=jax.random.fold_in(step_key, 0), augment=jax.random.fold_in(step_key, 1)
        )
        model = nnx.merge(graphdef, params, state["model_state"])
        loss, metrics = objective.loss_fn(model, batch, rngs, train=True)
        return loss, (metrics, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))))

    (_, (metrics, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics)
    metrics["learning_rate"] = schedule(step // accum_steps)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(params)
    metrics["update_norm"] = optax.tree.norm(updates)
    new_state = {
        "step": step + 1,
        "params": params,
        "model_state": model_state,
        "opt_state": opt_state,
        "rng": state["rng"],
    }
    return new_state, metrics


def jit_train_step(
    graphdef: nnx.GraphDef,
    shardings: State,
    mesh: jax.sharding.Mesh,
    objective: Objective,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    accum_steps: int,
) -> Any:
    """`train_step` compiled for `mesh`: `(state, batch) -> (state, metrics)`, state donated."""
    step = functools.partial(
        train_step, graphdef, objective=objective, tx=tx, schedule=schedule, accum_steps=accum_steps
    )
    return jax.jit(
        step,
        in_shardings=(shardings, sharding.batch_sharding(mesh)),
        out_shardings=(shardings, NamedSharding(mesh, PartitionSpec())),
        donate_argnums=0,
    )


def eval_step(
    graphdef: nnx.GraphDef, state: State, batch: dict[str, jax.Array], *, objective: Objective
) -> dict[str, jax.Array]:
    """The objective's per-example evaluation outputs for one (padded) global batch."""
    model = nnx.merge(graphdef, state["params"], state["model_state"])
    return objective.eval_outputs(model, batch)


def init_state(
    config: ConfigDict,
    objective: Objective,
    tx: optax.GradientTransformation,
    num_classes: int,
    rng: jax.Array,
) -> State:
    """A fresh state from `rng` (traced inside `jax.jit` so it is born sharded)."""
    params_key, step_key = jax.random.split(rng)
    model = objective.build_model(config, num_classes, nnx.Rngs(params=params_key))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "model_state": nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))),
        "opt_state": tx.init(params),
        "rng": step_key,
    }


def state_shardings(
    config: ConfigDict,
    objective: Objective,
    tx: optax.GradientTransformation,
    num_classes: int,
    mesh: jax.sharding.Mesh,
) -> tuple[nnx.GraphDef, State, State]:
    """(graphdef, abstract state, shardings): parameters per their logical axes, the
    optimizer's moments like their parameters, everything else replicated."""
    abstract_model = nnx.eval_shape(
        lambda: objective.build_model(config, num_classes, nnx.Rngs(params=0))
    )
    graphdef, abstract_params, _ = nnx.split(abstract_model, nnx.Param, ...)
    param_shardings = nnx.to_pure_dict(sharding.state_shardings(abstract_params, mesh))
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = jax.eval_shape(
        functools.partial(init_state, config, objective, tx, num_classes), jax.random.key(0)
    )
    opt_shardings = optax.tree_map_params(
        tx,
        lambda _, s: s,
        abstract["opt_state"],
        param_shardings,
        transform_non_params=lambda _: replicated,
    )
    shardings = {
        "step": replicated,
        "params": param_shardings,
        "model_state": jax.tree.map(lambda _: replicated, abstract["model_state"]),
        "opt_state": opt_shardings,
        "rng": replicated,
    }
    return graphdef, abstract, shardings


def encoder_init(state: State, path: pathlib.Path) -> State:
    """`state` with the encoder's parameters and statistics replaced by an exported encoder's."""
    from ecgfm.export import read_encoder_state

    params, model_state = read_encoder_state(path, state["params"], state["model_state"])
    return state | {"params": params, "model_state": model_state}


def make_sources(data: ConfigDict, workdir: pathlib.Path) -> tuple[Source, Source | None]:
    """(train, validation) sources per `config.data`.

    `source="code_hdf5"` reads a raw CODE folder (`data.path`, default `workdir/data`; with
    `data.synthetic_exams` set and the folder absent, a synthetic CODE dataset is written
    there first) and splits it by patient (`ecgfm.data.splits.patient_split`, deterministic
    from `data.split_seed`, so every process and run agrees): no patient on both sides.
    `source="tfds"` reads a built dataset's `train_split` and `val_split`.
    """
    preprocessing = Preprocessing.from_dict(dict(data.preprocessing))
    if data.source == "tfds":
        # A built dataset was prepared once; its stored preprocessing is what the encoder sees.
        train = TfdsSource(data.path, data.name, data.train_split, task=data.get("task"))
        val = TfdsSource(data.path, data.name, data.val_split, task=data.get("task"))
        return train, val
    if data.source != "code_hdf5":
        raise ValueError(f"unknown data.source {data.source!r}; expected code_hdf5 or tfds")
    root = pathlib.Path(data.path) if data.get("path") else workdir / "data"
    if data.get("synthetic_exams") and not root.exists():
        from ecgfm.data.synthetic.code import write_code_dataset

        if distributed.is_main_process():
            write_code_dataset(root, num_exams=data.synthetic_exams, seed=data.synthetic_seed)
        multihost_utils.sync_global_devices("synthetic data written")
    everything = CodeHdf5Source(root, preprocessing=preprocessing)
    fractions = {"train": 1.0 - data.val_fraction, "validation": data.val_fraction}
    split = splits.patient_split(
        everything.record_ids, everything.patient_ids, fractions=fractions, seed=data.split_seed
    )
    train = CodeHdf5Source(root, preprocessing=preprocessing, record_ids=split["train"])
    val = None
    if split["validation"]:
        val = CodeHdf5Source(root, preprocessing=preprocessing, record_ids=split["validation"])
    return train, val


def _device_fields(local_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch without its string fields (record ids), which cannot go to devices."""
    return {k: v for k, v in local_batch.items() if k not in pipeline.STRING_KEYS}


class _Preemption:
    """Turns SIGTERM into a request to checkpoint and stop at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._multiprocess = jax.process_count() > 1
        if not self._multiprocess:  # with several processes JAX's preemption service listens
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        del signum, frame
        log.warning("SIGTERM: will checkpoint and stop at the next step boundary")
        self.requested = True

    def reached(self, step: int) -> bool:
        if self._multiprocess:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested


class _MetricsLog:
    """metrics.jsonl + TensorBoard, written by the main process only."""

    def __init__(self, workdir: pathlib.Path, resume_step: int):
        self.enabled = distributed.is_main_process()
        self.path = workdir / METRICS_FILE
        if not self.enabled:
            return
        if self.path.exists():  # entries past the restored checkpoint are about to be redone
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.writer = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()


def _to_host(tree: Any) -> Any:
    """Fetch replicated arrays (also across processes) to numpy."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def evaluate(
    eval_fn: Any, state: State, batches: Iterator, batch_sharding: NamedSharding, objective: Any
) -> dict[str, float]:
    """The objective's metrics over a whole split (padding rows carry weight 0)."""
    outputs = []
    for local_batch in batches:
        device_batch = distributed.global_batch(_device_fields(local_batch), batch_sharding)
        outputs.append(_to_host(eval_fn(state, device_batch)))
    merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    return objective.eval_metrics(merged)


def train_and_evaluate(config: ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
    """Train per `config` in `workdir` (resuming if it holds a checkpoint); final metrics."""
    workdir = pathlib.Path(workdir).absolute()
    distributed.initialize(config)
    main = distributed.is_main_process()
    workdir.mkdir(parents=True, exist_ok=True)
    train_cfg = config.train

    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.model)
    batch_sharding = sharding.batch_sharding(mesh)
    if train_cfg.global_batch_size % mesh.size:
        raise ValueError(
            f"global_batch_size {train_cfg.global_batch_size} is not divisible by "
            f"{mesh.size} devices"
        )

    # Data: each process reads its own rows of every global batch.
    train_source, val_source = make_sources(config.data, workdir)
    if config.data.get("patient_pairs"):
        # CLOCS's patient view: every example also carries another exam of its patient.
        train_source = PatientPairSource(train_source, seed=config.seed)
    train_iter = pipeline.make_train_iterator(
        train_source,
        global_batch_size=train_cfg.global_batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    num_classes = len(train_source.label_names)
    if main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
        data_spec = {
            "label_names": list(train_source.label_names),
            "preprocessing": (
                train_source.preprocessing.to_dict() if train_source.preprocessing else None
            ),
            "num_train_exams": len(train_source),
            "num_val_exams": len(val_source) if val_source is not None else 0,
        }
        (workdir / "data_spec.json").write_text(json.dumps(data_spec, indent=2) + "\n")

    # Model, optimizer and where every piece of the state lives.
    objective = make_objective(config)
    tx, schedule = make_optimizer(config.optim, train_cfg.steps)
    accum_steps = max(int(config.optim.get("grad_accum_steps", 1)), 1)
    graphdef, abstract, shardings = state_shardings(config, objective, tx, num_classes, mesh)

    # Restore order: this workdir's latest checkpoint → config.resume → config.init_from → scratch.
    checkpointer = checkpoint.Checkpointer(
        workdir / CHECKPOINT_DIR,
        save_every=train_cfg.checkpoint_every,
        keep=train_cfg.keep_checkpoints,
        async_save=train_cfg.get("async_checkpoint", True),
    )
    target = checkpoint.abstract_like(abstract, shardings)
    restored = checkpointer.restore_latest(target, train_iter)
    if restored is not None:
        state, start_step = restored
        log.info("resumed from %s at step %d", checkpointer.directory, start_step)
    elif config.get("resume"):
        state = checkpoint.restore_state(config.resume, target)
        start_step = int(_to_host(state["step"]))
        log.info("resumed from %s at step %d (fresh data order)", config.resume, start_step)
    else:
        init = functools.partial(init_state, config, objective, tx, num_classes)
        with jax.set_mesh(mesh):
            state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
        if config.get("init_from"):
            state = encoder_init(state, pathlib.Path(config.init_from))
            log.info("encoder initialised from %s", config.init_from)
        start_step = 0

    step_fn = jit_train_step(graphdef, shardings, mesh, objective, tx, schedule, accum_steps)
    eval_fn = jax.jit(
        functools.partial(eval_step, graphdef, objective=objective),
        in_shardings=(shardings, batch_sharding),
        out_shardings=NamedSharding(mesh, PartitionSpec()),
    )

    def run_eval(step: int) -> dict[str, float]:
        batches = pipeline.make_eval_iterator(
            val_source,
            global_batch_size=train_cfg.global_batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        with jax.set_mesh(mesh):
            metrics = evaluate(eval_fn, state, batches, batch_sharding, objective)
        return {f"val_{k}": v for k, v in metrics.items()}

    metrics_log = _MetricsLog(workdir, start_step)
    preemption = _Preemption()
    progress = tqdm.tqdm(
        total=train_cfg.steps, initial=start_step, disable=not main, desc="train", unit="step"
    )

    def fetch(step: int, device_metrics: dict, seconds: float) -> dict[str, float]:
        metrics = {k: float(v) for k, v in _to_host(device_metrics).items()}
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"loss is {metrics['loss']} at step {step}; stopping")
        metrics["samples_per_second"] = train_cfg.global_batch_size / max(seconds, 1e-9)
        if step % train_cfg.log_every == 0 or step == train_cfg.steps:
            metrics_log.write(step, metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.4f}")
        return metrics

    final: dict[str, float] = {}
    # Metrics of step s are fetched after step s+1 is dispatched, so the device never idles
    # waiting for the host; the dispatch interval measures step time in the steady state.
    pending, saved = None, True
    step, last_dispatch = start_step, time.perf_counter()
    with jax.set_mesh(mesh):
        while step < train_cfg.steps:
            batch = distributed.global_batch(_device_fields(next(train_iter)), batch_sharding)
            state, device_metrics = step_fn(state, batch)
            step += 1
            now = time.perf_counter()
            if pending is not None:
                final = fetch(*pending)
            pending, last_dispatch = (step, device_metrics, now - last_dispatch), now
            progress.update(1)
            saved = checkpointer.save(step, state, train_iter)
            if (
                val_source is not None
                and train_cfg.eval_every
                and (step % train_cfg.eval_every == 0 or step == train_cfg.steps)
            ):
                final = fetch(*pending)
                pending = None
                val_metrics = run_eval(step)
                metrics_log.write(step, val_metrics)
                final = final | val_metrics
                last_dispatch = time.perf_counter()
            if preemption.reached(step):
                log.warning("preempted: checkpointing step %d and exiting", step)
                break
        if pending is not None:
            final = fetch(*pending)
        if not saved:  # the last step (or the preempted one) is always on disk
            checkpointer.save(step, state, train_iter, force=True)
    progress.close()
    checkpointer.wait_until_finished()
    checkpointer.close()
    metrics_log.close()
    return final
