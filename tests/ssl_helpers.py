"""Shared pieces of the self-supervised objectives' tests: toy data, a short fit, a probe."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from sklearn.linear_model import LogisticRegression

from ecgfm import sharding, train_state
from ecgfm.metrics import macro_auroc
from ecgfm.models import ModelSpec
from ecgfm.objectives import RunContext, make_objective

T = 64  # samples: 4 patches of 16 per lead


def synthetic_exams(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`[n, T, 12]` signals whose label (0/1) sets the frequency of a wave with random phase,
    per-lead gain and noise: learnable, and invariant to the augmentations."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    cycles = np.where(label == 1, 2.0, 5.0)[:, None]
    t = np.arange(T) / T
    wave = np.sin(2 * np.pi * cycles * t + rng.uniform(0, 2 * np.pi, (n, 1)))
    gain = rng.uniform(0.5, 1.5, (n, 1, 12)) * rng.choice([-1, 1], (n, 1, 12))
    signal = wave[:, :, None] * gain + rng.normal(size=(n, T, 12))
    return signal.astype(np.float32), label


def objective_and_model(config, accum_steps: int = 1):
    """(objective, model spec) of a test config's `objective` and `model` sections; the
    objective's `sampling_rate`, if any, is the run's (what `Experiment` takes from the data)."""
    settings = config.objective.to_dict()
    name = settings.pop("name")
    context = RunContext(sampling_rate=settings.pop("sampling_rate", None), accum_steps=accum_steps)
    model = ModelSpec.create(config.model.name, config.model.hparams.to_dict())
    return make_objective(name, settings, context), model


def fresh_state(objective, model, tx):
    """A state from key 0 and the model's graph definition (no labels: 0 classes)."""
    state = train_state.init_state(
        lambda rngs: objective.build_model(model, 0, rngs), tx, jax.random.key(0)
    )
    return state, nnx.graphdef(objective.build_model(model, 0, nnx.Rngs(params=0)))


def loss_on_mesh(config, devices):
    """The jitted loss of a fixed model and batch, the batch sharded over `devices`."""
    objective, spec = objective_and_model(config)
    model = objective.build_model(spec, 0, nnx.Rngs(params=0))
    graphdef, state = nnx.split(model)
    signal, _ = synthetic_exams(16, seed=2)
    mesh = sharding.make_mesh(devices=devices)
    batch = jax.device_put(
        {"signal": signal, "mask": np.ones(16, np.float32)}, sharding.batch_sharding(mesh)
    )

    @jax.jit
    def loss(state, batch):
        rngs = nnx.Rngs(dropout=0, augment=1)
        return objective.loss_fn(nnx.merge(graphdef, state), batch, rngs, train=True)

    with jax.set_mesh(mesh):
        state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
        value, metrics = loss(state, batch)
    return float(value), {k: float(v) for k, v in metrics.items()}


def fit(config, signal, steps):
    """`steps` steps of the trainer's `train_step` (Adam) on one batch; (losses, state)."""
    objective, model = objective_and_model(config)
    tx = optax.adam(3e-3)
    state, graphdef = fresh_state(objective, model, tx)
    step = jax.jit(
        functools.partial(
            train_state.train_step, graphdef, objective=objective, tx=tx,
            schedule=optax.constant_schedule(3e-3), accum_steps=1,
        )
    )  # fmt: skip
    batch = {"signal": jnp.asarray(signal), "mask": jnp.ones(len(signal))}
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, state, graphdef


def probe_auroc(graphdef, state, seed):
    """Logistic-regression probe on the pooled embedding: fit on 48 exams, AUROC on 48 others."""
    model = nnx.merge(graphdef, state["params"], state["model_state"])
    signal, label = synthetic_exams(96, seed=seed)
    embedding = np.asarray(jax.jit(lambda x: model.encoder(x, train=False).embedding_BD)(signal))
    probe = LogisticRegression(max_iter=2000).fit(embedding[:48], label[:48])
    scores = probe.decision_function(embedding[48:])
    return macro_auroc(label[48:, None], scores[:, None])
