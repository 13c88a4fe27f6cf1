"""The train state and what acts on it: init, shardings, the jitted step, evaluation, resume.

Used alike by pretraining (`ecgfm.train`) and fine-tuning (`ecgfm.transfer.finetune`): each
passes a model builder, an objective and an optimizer to `compile_training` and gets a
`Training` whose `init`, `step` and `eval` are compiled for one device mesh.

The state is a plain dict pytree `{"step", "params", "model_state", "opt_state", "rng"}`;
the model lives as an NNX graph definition outside it, merged inside each jitted function.
Parameters and model state (e.g. batch statistics, JEPA's EMA target) are laid out per their
variables' logical axes (`ecgfm.sharding`); the optimizer's moments follow their parameters;
step and RNG are replicated.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ecgfm import checkpoint, distributed, sharding
from ecgfm.data.pipeline import SIGNAL_KEYS, device_fields
from ecgfm.objectives import Objective

log = logging.getLogger(__name__)

State = dict[str, Any]
Batch = dict[str, jax.Array]


def decode_signals(batch: Batch) -> Batch:
    """Stored counts → float32 values (`signal · signal_scale`), on the device.

    Built datasets hand int16 counts to the device (half the bytes of float32, and no float
    batch assembled on the host); every other source sends float32 with scale 1.
    """
    decoded = dict(batch)
    for key in SIGNAL_KEYS:
        if key in batch:
            signal = batch[key].astype(jnp.float32)
            scale_B = batch.get(f"{key}_scale")
            decoded[key] = signal if scale_B is None else signal * scale_B[:, None, None]
    return decoded


def train_step(
    graphdef: nnx.GraphDef,
    state: State,
    batch: Batch,
    *,
    objective: Objective,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    accum_steps: int,
) -> tuple[State, dict[str, jax.Array]]:
    """One optimizer step on a global batch; pure, so it jits once with donated state."""
    step = state["step"]
    batch = decode_signals(batch)
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


def eval_step(
    graphdef: nnx.GraphDef, state: State, batch: Batch, *, objective: Objective
) -> dict[str, jax.Array]:
    """The objective's per-example evaluation outputs for one (padded) global batch."""
    model = nnx.merge(graphdef, state["params"], state["model_state"])
    return objective.eval_outputs(model, decode_signals(batch))


def _fresh_state(
    build_model: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation, rng: jax.Array
) -> tuple[nnx.Module, State]:
    params_key, step_key = jax.random.split(rng)
    model = build_model(nnx.Rngs(params=params_key))
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
    build_model: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation, rng: jax.Array
) -> State:
    """A fresh state from `rng` (traced inside `jax.jit` with out_shardings, born sharded)."""
    return _fresh_state(build_model, tx, rng)[1]


@dataclasses.dataclass(frozen=True)
class Training:
    """A model, objective and optimizer compiled for one mesh.

    Attributes:
      mesh: the device mesh.
      graphdef: the model's NNX graph definition (merged with the state inside each step).
      shardings: the state's `NamedSharding`s.
      target: the state's abstract leaves carrying those shardings (what restores read onto).
      init: `key → state`, born sharded.
      step: `(state, global batch) → (state, metrics)`, state donated.
      eval: `(state, global batch) → per-example outputs` (replicated).
    """

    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    shardings: State
    target: State
    init: Callable[[jax.Array], State]
    step: Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]
    eval: Callable[[State, Batch], dict[str, jax.Array]]

    def global_batch(self, local_batch: dict[str, np.ndarray]) -> Batch:
        """This process's rows (string fields dropped) as one array per field over the mesh."""
        return distributed.global_batch(
            device_fields(local_batch), sharding.batch_sharding(self.mesh)
        )


def compile_training(
    build_model: Callable[[nnx.Rngs], nnx.Module],
    objective: Objective,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: jax.sharding.Mesh,
    *,
    accum_steps: int = 1,
) -> Training:
    """`init`, `step` and `eval` for the model `build_model(rngs)` trained by `objective`."""
    abstract_model, abstract = nnx.eval_shape(
        functools.partial(_fresh_state, build_model, tx), jax.random.key(0)
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
    batch_sharding = sharding.batch_sharding(mesh)
    init = jax.jit(lambda rng: _fresh_state(build_model, tx, rng)[1], out_shardings=shardings)
    step = jax.jit(
        functools.partial(
            train_step, graphdef, objective=objective, tx=tx, schedule=schedule,
            accum_steps=accum_steps,
        ),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )  # fmt: skip
    evaluate = jax.jit(
        functools.partial(eval_step, graphdef, objective=objective),
        in_shardings=(shardings, batch_sharding),
        out_shardings=replicated,
    )
    target = checkpoint.abstract_like(abstract, shardings)
    return Training(mesh, graphdef, shardings, target, init, step, evaluate)


def to_host(tree: Any) -> Any:
    """Arrays to numpy: whole when this process holds every shard, else its replica.

    Across processes an array must be replicated (or each process must want its own copy).
    """
    return jax.tree.map(
        lambda x: np.asarray(x if x.is_fully_addressable else x.addressable_data(0)), tree
    )


def evaluate(
    training: Training, state: State, batches: Iterable[dict], objective: Objective
) -> dict[str, float]:
    """The objective's metrics over a whole split (padding rows carry weight 0)."""
    outputs = [to_host(training.eval(state, training.global_batch(b))) for b in batches]
    merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    return objective.eval_metrics(merged)


def encoder_init(state: State, path: pathlib.Path) -> State:
    """`state` with the encoder's parameters and statistics replaced by an exported encoder's."""
    from ecgfm.export import read_encoder_state  # export builds on this module

    params, model_state = read_encoder_state(path, state["params"], state["model_state"])
    return state | {"params": params, "model_state": model_state}


def _continue_data_at(data_iterator: Any, step: int) -> None:
    """Position a fresh training iterator at global batch `step` (batch s is grain index s)."""
    position = data_iterator.get_state()
    if "next_index" not in position:
        raise RuntimeError(f"cannot reposition a data iterator whose state is {position!r}")
    data_iterator.set_state(position | {"next_index": step})


def restore_or_init(
    training: Training,
    checkpointer: checkpoint.Checkpointer,
    data_iterator: Any,
    *,
    seed: int,
    resume: str = "",
    init_from: str = "",
) -> tuple[State, int]:
    """(state, step) to start from, in this order: the checkpointer's latest step (with the
    iterator's position) → `resume`, another run's checkpoints (the data continues at its
    step) → a fresh state from `seed`, its encoder read from the export `init_from` if given.
    """
    restored = checkpointer.restore_latest(training.target, data_iterator)
    if restored is not None:
        state, step = restored
        log.info("resumed from %s at step %d", checkpointer.directory, step)
        return state, step
    if resume:
        path = pathlib.Path(resume)
        if (path / checkpoint.CHECKPOINT_DIR).is_dir():  # a workdir rather than its checkpoints/
            path = path / checkpoint.CHECKPOINT_DIR
        state = checkpoint.restore_state(path, training.target)
        step = int(to_host(state["step"]))
        # The data stream continues where the resumed run's would have (same seed and batch
        # size: the batches it would have read next), instead of replaying its first batches.
        _continue_data_at(data_iterator, step)
        log.info("resumed from %s at step %d", path, step)
        return state, step
    with jax.set_mesh(training.mesh):
        state = training.init(jax.random.key(seed))
    if init_from:
        state = encoder_init(state, pathlib.Path(init_from))
        log.info("encoder initialised from %s", init_from)
    return state, 0
