"""SimCLR and CLOCS: the InfoNCE loss, collapse metrics, training, and device-count invariance."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict
from sklearn.linear_model import LogisticRegression

from ecgfm import sharding, train
from ecgfm.metrics import macro_auroc
from ecgfm.objectives import health, make_objective
from ecgfm.objectives.contrastive import info_nce

T = 64  # samples: 4 patches of 16 per lead


def tiny_config(**objective) -> ConfigDict:
    """A width-32, depth-2 ViT-1D on 64-sample signals with the contrastive objective."""
    config = ConfigDict()
    config.model = ConfigDict(
        {"name": "vit1d", "hparams": ConfigDict(
            {"patch_size": 16, "width": 32, "depth": 2, "num_heads": 2, "max_patches": 4})}
    )  # fmt: skip
    config.objective = ConfigDict(
        {"name": "contrastive", "projection_hidden": 32, "projection_dim": 16, **objective}
    )
    return config


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


def numpy_info_nce(za, zb, temperature, intra_view_negatives):
    """Direct transcription of NT-Xent (SimCLR eq. 1) and of CLOCS' cross-view InfoNCE."""
    za = za / np.linalg.norm(za, axis=1, keepdims=True)
    zb = zb / np.linalg.norm(zb, axis=1, keepdims=True)
    b = len(za)
    terms = []
    if intra_view_negatives:
        z = np.concatenate([za, zb])
        for i in range(2 * b):
            positive = (i + b) % (2 * b)
            others = [k for k in range(2 * b) if k != i]
            denominator = sum(np.exp(z[i] @ z[k] / temperature) for k in others)
            terms.append(-np.log(np.exp(z[i] @ z[positive] / temperature) / denominator))
    else:
        for anchors, candidates in ((za, zb), (zb, za)):
            for i in range(b):
                denominator = sum(np.exp(anchors[i] @ c / temperature) for c in candidates)
                terms.append(
                    -np.log(np.exp(anchors[i] @ candidates[i] / temperature) / denominator)
                )
    return np.mean(terms)


@pytest.mark.parametrize("intra", [True, False], ids=["simclr", "clocs"])
def test_info_nce_equals_numpy_reference(intra):
    rng = np.random.default_rng(0)
    za, zb = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    got = info_nce(za, zb, jnp.ones(6), 0.5, intra_view_negatives=intra)
    np.testing.assert_allclose(got, numpy_info_nce(za, zb, 0.5, intra), rtol=1e-5)


@pytest.mark.parametrize("intra", [True, False], ids=["simclr", "clocs"])
def test_padded_exams_are_neither_anchors_nor_negatives(intra):
    rng = np.random.default_rng(1)
    za, zb = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    weight = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
    got = info_nce(za, zb, weight, 0.5, intra_view_negatives=intra)
    np.testing.assert_allclose(got, numpy_info_nce(za[:4], zb[:4], 0.5, intra), rtol=1e-5)


def test_health_metrics_flag_a_collapsed_representation():
    collapsed = np.tile(np.array([[1.0, 2.0, 3.0]]), (8, 1))
    ones = jnp.ones(8)
    assert float(health.embedding_std(collapsed, ones)) == pytest.approx(0.0, abs=1e-4)
    assert float(health.uniformity(collapsed, ones)) == pytest.approx(0.0, abs=1e-5)
    assert float(health.alignment(collapsed, 5 * collapsed, ones)) == pytest.approx(0.0, abs=1e-6)
    # ±e_k in 4-D: per-dimension std 1/2 over 8 points, √D × 1/2 = 1; pairwise ‖zi − zj‖² is
    # 2 (48 ordered pairs) or 4 (8 pairs, e_k and −e_k) → log((48 e^-4 + 8 e^-8) / 56).
    spread = np.concatenate([np.eye(4), -np.eye(4)])
    assert float(health.embedding_std(spread, ones)) == pytest.approx(1.0, rel=1e-4)
    expected = np.log((48 * np.exp(-4.0) + 8 * np.exp(-8.0)) / 56)
    assert float(health.uniformity(spread, ones)) == pytest.approx(expected, rel=1e-4)


def loss_on_mesh(config, devices):
    """The jitted loss of a fixed model and batch, the batch sharded over `devices`."""
    objective = make_objective(config)
    model = objective.build_model(config, 0, nnx.Rngs(params=0))
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


@pytest.mark.parametrize(
    "objective",
    [
        {"method": "simclr", "augmentations": ("amplitude_scale", "gaussian_noise", "three_kg")},
        {"method": "clocs", "view": "cmsc"},
        {"method": "clocs", "view": "cmlc"},
    ],
    ids=["simclr", "cmsc", "cmlc"],
)
def test_loss_is_the_same_on_one_and_eight_devices(objective):
    config = tiny_config(**objective)
    one, one_metrics = loss_on_mesh(config, jax.devices()[:1])
    eight, eight_metrics = loss_on_mesh(config, jax.devices()[:8])
    assert eight == pytest.approx(one, rel=1e-5)
    for name in ("alignment", "uniformity", "embedding_std"):
        assert eight_metrics[name] == pytest.approx(one_metrics[name], rel=1e-4, abs=1e-6)


def fit(config, signal, steps):
    """`steps` steps of the trainer's `train_step` (Adam) on one batch; (losses, state)."""
    objective = make_objective(config)
    tx = optax.adam(3e-3)
    state = train.init_state(config, objective, tx, 0, jax.random.key(0))
    graphdef = nnx.graphdef(objective.build_model(config, 0, nnx.Rngs(params=0)))
    step = jax.jit(
        functools.partial(
            train.train_step, graphdef, objective=objective, tx=tx,
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


@pytest.fixture(scope="module")
def simclr_run():
    config = tiny_config(method="simclr", augmentations=("amplitude_scale", "gaussian_noise"))
    signal, _ = synthetic_exams(32, seed=3)
    return config, fit(config, signal, steps=30)


def test_simclr_loss_decreases(simclr_run):
    _, (losses, _, _) = simclr_run
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


def test_simclr_probe_beats_a_random_encoder(simclr_run):
    config, (_, state, graphdef) = simclr_run
    random_state = train.init_state(
        config, make_objective(config), optax.adam(1e-3), 0, jax.random.key(0)
    )
    trained, random = probe_auroc(graphdef, state, 4), probe_auroc(graphdef, random_state, 4)
    assert trained > random + 0.02, (trained, random)


def test_simclr_without_augmentations_is_refused():
    # Its two views would be the same signal: the loss is trivially minimised.
    for objective in ({"method": "simclr", "augmentations": ()}, {"method": "simclr"}):
        with pytest.raises(ValueError, match="identical views"):
            make_objective(tiny_config(**objective))
    with pytest.raises(ValueError, match="identical views"):
        make_objective(
            tiny_config(method="simclr", augmentations=("amplitude_scale",), augment_probability=0)
        )
    make_objective(tiny_config(method="clocs", view="cmsc", augmentations=()))  # views differ


def test_time_based_augmentations_need_the_sampling_rate():
    names = ("amplitude_scale", "baseline_wander")
    with pytest.raises(ValueError, match="sampling_rate"):
        make_objective(tiny_config(method="simclr", augmentations=names))
    make_objective(tiny_config(method="simclr", augmentations=names, sampling_rate=500.0))
