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


def _build(
    config: ConfigDict,
    objective: Objective,
    tx: optax.GradientTransformation,
    num_classes: int,
    rng: jax.Array,
) -> tuple[nnx.Module, State]:
    """The model and a fresh state from `rng`: one definition for `init_state` and shardings."""
    params_key, step_key = jax.random.split(rng)
    model = objective.build_model(config, num_classes, nnx.Rngs(params=params_key))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "model_state": nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))),
        "opt_state": tx.init(params),
        "rng": step_key,
    }
    return model, state


def init_state(
    config: ConfigDict,
    objective: Objective,
    tx: optax.GradientTransformation,
    num_classes: int,
    rng: jax.Array,
) -> State:
    """A fresh state from `rng` (traced inside `jax.jit` so it is born sharded)."""
    return _build(config, objective, tx, num_classes, rng)[1]


def state_shardings(
    config: ConfigDict,
    objective: Objective,
    tx: optax.GradientTransformation,
    num_classes: int,
    mesh: jax.sharding.Mesh,
) -> tuple[nnx.GraphDef, State, State]:
    """(graphdef, abstract state, shardings), from one abstract trace of the model.

    Parameters and model state (e.g. JEPA's EMA target weights) are laid out per their
    variables' logical axes (`ecgfm.sharding`), so what carries no axes (batch statistics) is
    replicated; the optimizer's moments follow their parameters; step and RNG are replicated.
    """
    abstract_model, abstract = nnx.eval_shape(
        functools.partial(_build, config, objective, tx, num_classes), jax.random.key(0)
    )
    graphdef, params, model_state = nnx.split(abstract_model, nnx.Param, ...)
    param_shardings = nnx.to_pure_dict(sharding.state_shardings(params, mesh))
    replicated = NamedSharding(mesh, PartitionSpec())
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
        "model_state": nnx.to_pure_dict(sharding.state_shardings(model_state, mesh)),
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


# What a preempted run exits with (128 + SIGTERM, as a shell reports a process SIGTERM ended):
# its last step is checkpointed and rerunning the same command continues it.
PREEMPTED_EXIT_CODE = 143


class Preempted(Exception):
    """The run stopped early on SIGTERM (preemption) after checkpointing `step`."""

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, step: int, workdir: pathlib.Path):
        super().__init__(
            f"preempted at step {step}: checkpointed in {workdir}; rerun the same command to "
            "continue"
        )
        self.step = step
        self.workdir = workdir


class _Preemption:
    """While entered, SIGTERM is a request to checkpoint and stop at the next step boundary.

    The previous handler comes back on exit, so a notebook or test process that trained is
    still terminated by SIGTERM afterwards.
    """

    def __init__(self):
        self.requested = False
        self._multiprocess = jax.process_count() > 1
        self._previous: Any = None

    def __enter__(self) -> _Preemption:
        if not self._multiprocess:  # with several processes JAX's preemption service listens
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

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
        if self.path.exists():
            lines = [line for line in self.path.read_text().splitlines() if line.strip()]
            kept = [line for line in lines if json.loads(line)["step"] <= resume_step]
            if len(kept) < len(lines):  # logged after the checkpoint resumed from: redone now
                log.warning(
                    "dropping %d metrics.jsonl entries past step %d, which is redone",
                    len(lines) - len(kept), resume_step,
                )  # fmt: skip
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

    def latest(self) -> dict[str, float]:
        """Each metric's last logged value: what a finished run reports when it is rerun."""
        latest: dict[str, float] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    latest |= {k: v for k, v in json.loads(line).items() if k != "step"}
        return latest


class _Throughput:
    """Samples per second between log points, from when each point's metrics reached the host.

    Fetching step s's metrics blocks until the device finished step s, so the time between two
    fetches is the time the device took for the steps in between. The first step after start
    (mostly compilation) only starts the first interval; an evaluation restarts it.
    """

    def __init__(self, global_batch_size: int):
        self.global_batch_size = global_batch_size
        self._start: tuple[int, float] | None = None

    def restart(self, step: int) -> None:
        self._start = (step, time.perf_counter())

    def measure(self, step: int) -> float | None:
        """Samples per second since the previous point (None for the first); starts a new one."""
        now = time.perf_counter()
        rate = None
        if self._start is not None and step > self._start[0]:
            steps, seconds = step - self._start[0], now - self._start[1]
            rate = steps * self.global_batch_size / max(seconds, 1e-9)
        self._start = (step, now)
        return rate


def _continue_data_at(train_iter: Any, step: int) -> None:
    """Position a fresh training iterator at global batch `step` (batch s is grain index s)."""
    position = train_iter.get_state()
    if "next_index" not in position:
        raise RuntimeError(f"cannot reposition a data iterator whose state is {position!r}")
    train_iter.set_state(position | {"next_index": step})


def to_host(tree: Any) -> Any:
    """Arrays to numpy: whole when this process holds every shard, else its replica.

    Across processes an array must be replicated (or each process must want its own copy).
    """
    return jax.tree.map(
        lambda x: np.asarray(x if x.is_fully_addressable else x.addressable_data(0)), tree
    )


def evaluate(
    eval_fn: Any, state: State, batches: Iterator, batch_sharding: NamedSharding, objective: Any
) -> dict[str, float]:
    """The objective's metrics over a whole split (padding rows carry weight 0)."""
    outputs = []
    for local_batch in batches:
        device_batch = distributed.global_batch(_device_fields(local_batch), batch_sharding)
        outputs.append(to_host(eval_fn(state, device_batch)))
    merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    return objective.eval_metrics(merged)


def train_and_evaluate(config: ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
    """Train per `config` in `workdir` (resuming if it holds a checkpoint); final metrics.

    Raises `Preempted` (exit code `PREEMPTED_EXIT_CODE`) when SIGTERM stopped the run early,
    after checkpointing it, and `checkpoint.CheckpointMismatchError` when the workdir holds
    checkpoints that do not fit this config.
    """
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

    # Model, optimizer and where every piece of the state lives.
    objective = make_objective(config)
    tx, schedule = make_optimizer(config.optim, train_cfg.steps)
    accum_steps = max(int(config.optim.get("grad_accum_steps", 1)), 1)
    graphdef, abstract, shardings = state_shardings(config, objective, tx, num_classes, mesh)

    # Restore order: this workdir's latest checkpoint → config.resume → config.init_from → scratch.
    checkpointer = checkpoint.Checkpointer(
        workdir / checkpoint.CHECKPOINT_DIR,
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
        resume = pathlib.Path(config.resume)
        if (resume / checkpoint.CHECKPOINT_DIR).is_dir():  # a workdir rather than its checkpoints/
            resume = resume / checkpoint.CHECKPOINT_DIR
        state = checkpoint.restore_state(resume, target)
        start_step = int(to_host(state["step"]))
        # The data stream continues where the resumed run's would have (same seed and batch
        # size: the batches it would have read next), instead of replaying its first batches.
        _continue_data_at(train_iter, start_step)
        log.info("resumed from %s at step %d", resume, start_step)
    else:
        init = functools.partial(init_state, config, objective, tx, num_classes)
        with jax.set_mesh(mesh):
            state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
        if config.get("init_from"):
            state = encoder_init(state, pathlib.Path(config.init_from))
            log.info("encoder initialised from %s", config.init_from)
        start_step = 0

    if main:  # after restoring: a run refused for a changed config leaves them as they were
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
    throughput = _Throughput(train_cfg.global_batch_size)
    progress = tqdm.tqdm(
        total=train_cfg.steps, initial=start_step, disable=not main, desc="train", unit="step"
    )

    def fetch(step: int, device_metrics: dict) -> dict[str, float]:
        metrics = {k: float(v) for k, v in to_host(device_metrics).items()}
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"loss is {metrics['loss']} at step {step}; stopping")
        if step == start_step + 1:
            throughput.restart(step)  # the first step's time is mostly compilation
        if step % train_cfg.log_every == 0 or step == train_cfg.steps:
            rate = throughput.measure(step)
            if rate is not None:
                metrics["samples_per_second"] = rate
            metrics_log.write(step, metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.4f}")
        return metrics

    final: dict[str, float] = {}
    # Metrics of step s are fetched after step s+1 is dispatched, so the device never idles
    # waiting for the host.
    pending, saved, step = None, True, start_step
    with jax.set_mesh(mesh), _Preemption() as preemption:
        while step < train_cfg.steps:
            batch = distributed.global_batch(_device_fields(next(train_iter)), batch_sharding)
            state, device_metrics = step_fn(state, batch)
            step += 1
            if pending is not None:
                final = fetch(*pending)
            pending = (step, device_metrics)
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
                throughput.restart(step)  # evaluation time is not training throughput
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
    if step < train_cfg.steps:
        raise Preempted(step, workdir)
    return final if step > start_step else metrics_log.latest()
