"""Linear probe (and an optional MLP head) on frozen-encoder embeddings, and `run_probe`.

The linear probe is K independent L2-regularised logistic regressions on standardised
embeddings (mean and standard deviation of the training windows), minimising per class

    Σ_n w_n · BCE(x_n · w_k + b_k, y_nk) / Σ_n w_n  +  (λ / 2) ‖w_k‖²

(bias unpenalised): deterministic, and the same λ means the same thing whatever K is. Training
windows weigh 1 / (windows of their record), so a 60 s CPSC record counts as much as a 10 s
one. λ is chosen from a grid by macro AUROC on the validation fold (record-level scores,
aggregated as the protocol says; ties go to the larger λ). The MLP head (one hidden ReLU
layer, full-batch Adam for a fixed number of steps) chooses its weight decay the same way.

The solver (`fit_probe_path`; measured lever by lever in benchmarks/probe_speed.py):
- one L-BFGS per class, vectorised over the K classes: each class keeps its own curvature
  pairs, its own backtracking (Armijo) line search and its own stopping test, so an easy class
  stops early and a hard one does not steer the others' steps;
- the whole λ grid in one compiled call, from the largest λ down, each fit starting from the
  previous solution (warm starts along the regularisation path);
- loss and gradient in closed form from one `exp` per entry (softplus and sigmoid share it);
- stopping when a class's largest gradient entry is below `tol` (1e-4 by default, as
  scikit-learn's `LogisticRegression(solver="lbfgs")`), at most `max_iter` iterations per λ;
- rows not padded (the data has one shape per task; label fractions weigh rows 0 instead).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ecgfm import metrics
from ecgfm.data.pipeline import pad_rows
from ecgfm.data.record import OnError
from ecgfm.data.splits import TEST, TRAIN, VALIDATION
from ecgfm.encoder import Encoder
from ecgfm.transfer import report
from ecgfm.transfer.embed import Embeddings, embed_records
from ecgfm.transfer.label_fractions import DEFAULT_FRACTIONS
from ecgfm.transfer.study import (
    Method,
    MethodOutput,
    describe,
    run_study,
    study_results,
    validation_macro_auroc,
)
from ecgfm.transfer.tasks import TaskData, TaskSpec, load_task
from ecgfm.transfer.windows import aggregate_window_logits, aggregate_windows

DEFAULT_L2_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
Head = Literal["linear", "mlp"]
_STD_FLOOR = 1e-6
_MEMORY = 10  # L-BFGS curvature pairs kept per class
_MAX_BACKTRACKS = 30


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """A fitted multilabel logistic probe: standardisation, then `[D, K]` weights and bias."""

    mean_D: np.ndarray
    scale_D: np.ndarray
    weight_DK: np.ndarray
    bias_K: np.ndarray
    l2: float
    iterations: int

    def logits(self, x_ND: np.ndarray) -> np.ndarray:
        """`[N, K]` logits of raw (unstandardised) embeddings."""
        return ((x_ND - self.mean_D) / self.scale_D) @ self.weight_DK + self.bias_K


def _standardizer(x_ND: np.ndarray, weights_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = weights_N[:, None] / weights_N.sum()
    mean = (w * x_ND).sum(axis=0)
    std = np.sqrt((w * (x_ND - mean) ** 2).sum(axis=0))
    # A constant feature (dead unit) stays constant: dividing by the floor keeps it zero.
    return mean, np.maximum(std, _STD_FLOOR)


def _prior_logits(y_NK: np.ndarray, weights_N: np.ndarray) -> np.ndarray:
    prior = np.clip((weights_N[:, None] * y_NK).sum(axis=0) / weights_N.sum(), 1e-4, 1 - 1e-4)
    return np.log(prior / (1 - prior))


def _padded(
    x_ND: np.ndarray, y_NK: np.ndarray, weights_N: np.ndarray
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Rows padded with zero weight to a power of two (the MLP head's Adam loop)."""
    rows = max(64, 1 << (len(x_ND) - 1).bit_length())
    return tuple(jnp.asarray(pad_rows(a, rows), jnp.float32) for a in (x_ND, y_NK, weights_N))


def _loss_and_sigmoid(z_NK: jax.Array, y_NK: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Element-wise BCE of logits and their sigmoid, from one exp: softplus(z) − y·z."""
    e = jnp.exp(-jnp.abs(z_NK))
    loss = jnp.maximum(z_NK, 0.0) - y_NK * z_NK + jnp.log1p(e)
    inv = 1.0 / (1.0 + e)
    return loss, jnp.where(z_NK >= 0, inv, e * inv)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _lbfgs_path(
    x_NE: jax.Array,
    y_NK: jax.Array,
    w_N: jax.Array,
    l2_L: jax.Array,
    bias_K: jax.Array,
    tol: jax.Array,
    max_iter: int,
) -> tuple[jax.Array, jax.Array]:
    """Per-class L-BFGS along the λ path (descending), warm-started; `x_NE` = [x, 1].

    Returns (`[L, E, K]` parameters, the last row the bias; `[L]` iterations of each λ).
    """
    e = x_NE.shape[1]
    k = y_NK.shape[1]
    w_N = w_N / w_N.sum()
    penalised_E1 = jnp.ones((e, 1), x_NE.dtype).at[-1].set(0.0)

    def evaluate(theta_EK):
        """Logits `[N, K]`, element-wise losses `[N, K]` and penalised ‖w‖² `[K]` at theta."""
        z_NK = x_NE @ theta_EK
        loss_NK, _ = _loss_and_sigmoid(z_NK, y_NK)
        return z_NK, loss_NK, jnp.sum(penalised_E1 * theta_EK**2, axis=0)

    def gradient(theta_EK, l2, z_NK):
        _, p_NK = _loss_and_sigmoid(z_NK, y_NK)
        return x_NE.T @ (w_N[:, None] * (p_NK - y_NK)) + l2 * penalised_E1 * theta_EK

    def change(l2, loss_NK, sq_K, c):
        """Change of the penalised loss from the current point, summed from the element-wise
        differences: exact where the float32 loss itself could not tell the two apart."""
        return w_N @ (loss_NK - c["loss"]) + 0.5 * l2 * (sq_K - c["sq"])

    def direction(grad_EK, s_MEK, y_MEK, rho_MK, gamma_K, newest):
        """Two-loop recursion per class; pair i is (s_i, y_i), oldest to newest by slot."""
        order = (newest - jnp.arange(_MEMORY)) % _MEMORY  # newest first

        def first(q, i):
            alpha = rho_MK[i] * jnp.sum(s_MEK[i] * q, axis=0)
            return q - alpha * y_MEK[i], alpha

        q, alphas = jax.lax.scan(first, grad_EK, order)
        r = gamma_K * q

        def second(r, args):
            i, alpha = args
            beta = rho_MK[i] * jnp.sum(y_MEK[i] * r, axis=0)
            return r + s_MEK[i] * (alpha - beta), None

        r, _ = jax.lax.scan(second, r, (order[::-1], alphas[::-1]))
        return -r

    def fit(theta_EK, l2):
        z_NK, loss_NK, sq_K = evaluate(theta_EK)
        zeros = jnp.zeros((_MEMORY, e, k), x_NE.dtype)
        carry = dict(
            theta=theta_EK, z=z_NK, loss=loss_NK, sq=sq_K, grad=gradient(theta_EK, l2, z_NK),
            s=zeros, y=zeros,
            rho=jnp.zeros((_MEMORY, k), x_NE.dtype), gamma=jnp.ones(k, x_NE.dtype),
            newest=jnp.int32(_MEMORY - 1), it=jnp.int32(0), stalled=jnp.zeros(k, bool),
        )  # fmt: skip

        def active(c):
            # A class stops at a small gradient, or where no step decreases its loss any more
            # (float32 rounding of the losses is then larger than what is left to gain).
            return (jnp.max(jnp.abs(c["grad"]), axis=0) > tol) & ~c["stalled"]

        def keep_going(c):
            return (c["it"] < max_iter) & jnp.any(active(c))

        def step(c):
            moving_K = active(c)
            d_EK = direction(c["grad"], c["s"], c["y"], c["rho"], c["gamma"], c["newest"])
            slope_K = jnp.sum(d_EK * c["grad"], axis=0)
            # Not a descent direction (stale curvature): fall back to steepest descent.
            d_EK = jnp.where(slope_K < 0, d_EK, -c["grad"])
            slope_K = jnp.sum(d_EK * c["grad"], axis=0)
            d_EK = jnp.where(moving_K, d_EK, 0.0)
            # First iteration: a step of unit length, as scaled steepest descent would take.
            first_step = jnp.minimum(1.0, 1.0 / jnp.sqrt(jnp.sum(d_EK**2, axis=0) + 1e-30))
            t0_K = jnp.where(c["it"] == 0, first_step, 1.0)

            def armijo(ls):
                return (ls["n"] < _MAX_BACKTRACKS) & jnp.any(ls["bad"])

            def trial(t_K, n):
                z_NK, loss_NK, sq_K = evaluate(c["theta"] + t_K * d_EK)
                decrease_K = change(l2, loss_NK, sq_K, c)
                # Armijo, and a strict decrease (0 would move without measurable progress).
                bad = moving_K & ((decrease_K > 1e-4 * t_K * slope_K) | (decrease_K >= 0))
                return dict(t=t_K, z=z_NK, loss=loss_NK, sq=sq_K, bad=bad, n=n)

            def backtrack(ls):
                return trial(jnp.where(ls["bad"], 0.5 * ls["t"], ls["t"]), ls["n"] + 1)

            ls = jax.lax.while_loop(armijo, backtrack, trial(t0_K, jnp.int32(0)))
            t_K = jnp.where(ls["bad"], 0.0, ls["t"])  # no decrease found: stay (and stop)
            theta = c["theta"] + t_K * d_EK
            # The line search's last evaluation is the new point's (the old one where it stayed).
            stay = ls["bad"][None, :]
            z_NK = jnp.where(stay, c["z"], ls["z"])
            loss_NK = jnp.where(stay, c["loss"], ls["loss"])
            sq_K = jnp.where(ls["bad"], c["sq"], ls["sq"])
            grad_EK = gradient(theta, l2, z_NK)
            s_EK, y_EK = theta - c["theta"], grad_EK - c["grad"]
            sy_K = jnp.sum(s_EK * y_EK, axis=0)
            good = sy_K > 1e-10
            slot = (c["newest"] + 1) % _MEMORY
            return dict(
                theta=theta, z=z_NK, loss=loss_NK, sq=sq_K, grad=grad_EK,
                s=c["s"].at[slot].set(jnp.where(good, s_EK, 0.0)),
                y=c["y"].at[slot].set(jnp.where(good, y_EK, 0.0)),
                rho=c["rho"].at[slot].set(jnp.where(good, 1.0 / jnp.where(good, sy_K, 1.0), 0.0)),
                gamma=jnp.where(good, sy_K / jnp.maximum(jnp.sum(y_EK**2, axis=0), 1e-30),
                                c["gamma"]),
                newest=slot, it=c["it"] + 1, stalled=c["stalled"] | (moving_K & ls["bad"]),
            )  # fmt: skip

        out = jax.lax.while_loop(keep_going, step, carry)
        return out["theta"], out["it"]

    def along_path(theta_EK, l2):
        theta_EK, iterations = fit(theta_EK, l2)
        return theta_EK, (theta_EK, iterations)

    theta0 = jnp.zeros((e, k), x_NE.dtype).at[-1].set(bias_K)
    _, (thetas, iterations) = jax.lax.scan(along_path, theta0, l2_L)
    return thetas, iterations


def fit_probe_path(
    x_ND: np.ndarray,
    y_NK: np.ndarray,
    l2_grid: Sequence[float],
    *,
    weights_N: np.ndarray | None = None,
    max_iter: int = 500,
    tol: float = 1e-4,
) -> list[LinearProbe]:
    """One probe per λ of `l2_grid` (in the grid's order), fitted along the path from the
    largest λ down, each warm-started from the previous (see the module docstring)."""
    x_ND = np.asarray(x_ND, np.float64)
    y_NK = np.asarray(y_NK, np.float32)
    weights_N = np.ones(len(x_ND)) if weights_N is None else np.asarray(weights_N, np.float64)
    mean, scale = _standardizer(x_ND, weights_N)
    x_NE = np.concatenate([(x_ND - mean) / scale, np.ones((len(x_ND), 1))], axis=1)
    descending = sorted({float(v) for v in l2_grid}, reverse=True)
    thetas, iterations = _lbfgs_path(
        jnp.asarray(x_NE, jnp.float32),
        jnp.asarray(y_NK),
        jnp.asarray(weights_N, jnp.float32),
        jnp.asarray(descending, jnp.float32),
        jnp.asarray(_prior_logits(y_NK, weights_N), jnp.float32),
        jnp.float32(tol),
        max_iter,
    )
    thetas, iterations = np.asarray(thetas, np.float64), np.asarray(iterations)
    fitted = {
        l2: LinearProbe(mean, scale, thetas[i, :-1], thetas[i, -1], l2, int(iterations[i]))
        for i, l2 in enumerate(descending)
    }
    return [fitted[float(v)] for v in l2_grid]


def fit_linear_probe(
    x_ND: np.ndarray,
    y_NK: np.ndarray,
    l2: float,
    *,
    weights_N: np.ndarray | None = None,
    max_iter: int = 500,
    tol: float = 1e-4,
) -> LinearProbe:
    """Fits the probe on embeddings `x_ND` and multi-hot labels `y_NK` with penalty `l2`."""
    return fit_probe_path(x_ND, y_NK, [l2], weights_N=weights_N, max_iter=max_iter, tol=tol)[0]


@dataclasses.dataclass(frozen=True)
class MlpProbe:
    """A fitted one-hidden-layer head on standardised embeddings."""

    mean_D: np.ndarray
    scale_D: np.ndarray
    params: dict[str, np.ndarray]
    l2: float

    def logits(self, x_ND: np.ndarray) -> np.ndarray:
        """`[N, K]` logits of raw embeddings."""
        h = np.maximum(
            ((x_ND - self.mean_D) / self.scale_D) @ self.params["w1"] + self.params["b1"], 0
        )
        return h @ self.params["w2"] + self.params["b2"]


@functools.partial(jax.jit, static_argnames=("steps",))
def _adam_mlp(
    x_ND: jax.Array,
    y_NK: jax.Array,
    w_N: jax.Array,
    params: dict[str, jax.Array],
    l2: jax.Array,
    learning_rate: jax.Array,
    steps: int,
) -> dict[str, jax.Array]:
    w_N = w_N / w_N.sum()
    tx = optax.adam(learning_rate)

    def loss(p: dict[str, jax.Array]) -> jax.Array:
        h = jax.nn.relu(x_ND @ p["w1"] + p["b1"])
        bce = optax.sigmoid_binary_cross_entropy(h @ p["w2"] + p["b2"], y_NK)
        return jnp.sum(w_N[:, None] * bce) + 0.5 * l2 * (
            jnp.sum(p["w1"] ** 2) + jnp.sum(p["w2"] ** 2)
        )

    def step(_, carry):
        p, state = carry
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        return optax.apply_updates(p, updates), state

    params, _ = jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))
    return params


def fit_mlp_probe(
    x_ND: np.ndarray,
    y_NK: np.ndarray,
    l2: float,
    *,
    weights_N: np.ndarray | None = None,
    hidden: int = 256,
    steps: int = 500,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> MlpProbe:
    """Fits a ReLU MLP head (He-initialised from `seed`) with full-batch Adam for `steps`."""
    x_ND = np.asarray(x_ND, np.float64)
    y_NK = np.asarray(y_NK, np.float64)
    weights_N = np.ones(len(x_ND)) if weights_N is None else np.asarray(weights_N, np.float64)
    mean, scale = _standardizer(x_ND, weights_N)
    d, k = x_ND.shape[1], y_NK.shape[1]
    key1, key2 = jax.random.split(jax.random.key(seed))
    params = {
        "w1": jax.random.normal(key1, (d, hidden)) * jnp.sqrt(2.0 / d),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(key2, (hidden, k)) * jnp.sqrt(1.0 / hidden),
        "b2": jnp.asarray(_prior_logits(y_NK, weights_N), jnp.float32),
    }
    fitted = _adam_mlp(
        *_padded((x_ND - mean) / scale, y_NK, weights_N),
        params,
        jnp.float32(l2),
        jnp.float32(learning_rate),
        steps,
    )
    return MlpProbe(mean, scale, {n: np.asarray(v, np.float64) for n, v in fitted.items()}, l2)


@dataclasses.dataclass(frozen=True)
class WindowSet:
    """Window embeddings of one split's records, aligned with the task's record order."""

    embeddings_WD: np.ndarray
    record_of_window_W: np.ndarray
    num_records: int

    @classmethod
    def align(cls, embeddings: Embeddings, record_ids: Sequence[str]) -> WindowSet:
        """The windows of `record_ids`, in that order (each must be in `embeddings`)."""
        position = {r: n for n, r in enumerate(embeddings.record_ids)}
        wanted = np.array([position[r] for r in record_ids], dtype=np.int64)
        # Windows grouped by owner (stable: each record's windows keep their order).
        by_owner = np.argsort(embeddings.record_of_window_W, kind="stable")
        counts = np.bincount(embeddings.record_of_window_W, minlength=len(embeddings.record_ids))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sizes = counts[wanted]
        offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        rows = by_owner[np.repeat(starts[wanted], sizes) + offsets]
        return cls(
            embeddings.embeddings_WD[rows],
            np.repeat(np.arange(len(record_ids)), sizes),
            len(record_ids),
        )

    def features(self, aggregation: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, owner record of each row): windows, or per-record means for "mean_embedding"."""
        if aggregation == "mean_embedding":
            means = aggregate_windows(
                self.embeddings_WD, self.record_of_window_W, self.num_records, "mean"
            )
            return means, np.arange(self.num_records)
        return self.embeddings_WD, self.record_of_window_W


@dataclasses.dataclass
class ProbeMethod:
    """The frozen-encoder probe as a `protocol.Method`: a logistic (or MLP) head on the
    training windows' embeddings, standardised by their mean and std, each window weighted
    1 / windows of its record, fitted full batch (L-BFGS; Adam for the MLP) for every λ of the
    L2 grid; λ is chosen by record-level macro AUROC on the validation fold (ties: larger λ).
    """

    train: WindowSet
    validation: WindowSet
    test: WindowSet
    train_labels_NK: np.ndarray
    validation_labels_NK: np.ndarray
    aggregation: str
    head: Head = "linear"
    l2_grid: Sequence[float] = DEFAULT_L2_GRID

    def _scores(self, probe: LinearProbe | MlpProbe, windows: WindowSet) -> np.ndarray:
        """`[N, K]` record logits (window probabilities averaged for "mean")."""
        rows, owners = windows.features(self.aggregation)
        return aggregate_window_logits(
            probe.logits(rows), owners, windows.num_records, self.aggregation
        )

    def fit_predict(self, train_index: np.ndarray, seed: int) -> MethodOutput:
        """Fits one probe per λ on `train_index`'s records, keeps the best on validation."""
        # Records outside the subset stay in the matrix with weight 0, so every label
        # fraction has the same shape and the solver compiles once.
        x, owner = self.train.features(self.aggregation)
        y = self.train_labels_NK[owner]
        weights = np.isin(owner, train_index) / np.bincount(owner)[owner]
        descending = sorted(self.l2_grid, reverse=True)
        if self.head == "linear":
            probes = fit_probe_path(x, y, descending, weights_N=weights)
        else:
            probes = [fit_mlp_probe(x, y, l2, weights_N=weights, seed=seed) for l2 in descending]
        best, best_score, val_scores = None, -np.inf, {}
        for probe in probes:
            score = validation_macro_auroc(
                self.validation_labels_NK, self._scores(probe, self.validation), "choose λ"
            )
            val_scores[f"{probe.l2:g}"] = score
            if score > best_score:
                best, best_score = probe, score
        info: dict[str, Any] = {
            "head": self.head,
            "l2": best.l2,
            "validation_macro_auroc": best_score,
            "validation_macro_auroc_per_l2": val_scores,
        }
        if isinstance(best, LinearProbe):
            info["lbfgs_iterations"] = best.iterations
            info["lbfgs_iterations_per_l2"] = {f"{p.l2:g}": p.iterations for p in probes}
        return MethodOutput(
            validation_scores_NK=self._scores(best, self.validation),
            test_scores_NK=self._scores(best, self.test),
            info=info,
            model=best,
        )


def probe_method(
    embedded: Mapping[str, Embeddings],
    data: TaskData,
    *,
    head: Head = "linear",
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
) -> ProbeMethod:
    """The probe of one encoder's embeddings (split → `Embeddings`) on `data`'s records."""
    return ProbeMethod(
        train=WindowSet.align(embedded[TRAIN], data.record_ids[TRAIN]),
        validation=WindowSet.align(embedded[VALIDATION], data.record_ids[VALIDATION]),
        test=WindowSet.align(embedded[TEST], data.record_ids[TEST]),
        train_labels_NK=data.labels[TRAIN],
        validation_labels_NK=data.labels[VALIDATION],
        aggregation=data.spec.windowing.aggregation,
        head=head,
        l2_grid=l2_grid,
    )


def probe_settings(head: Head, l2_grid: Sequence[float]) -> dict[str, Any]:
    """How the probe was fitted, as the protocol records it."""
    return {"method": describe(ProbeMethod), "head": head, "l2_grid": list(l2_grid)}


def embed_task(
    encoders: Mapping[str, Encoder],
    task: TaskData,
    *,
    cache_dir: pathlib.Path | None,
    batch_size: int = 256,
    on_error: OnError = "raise",
) -> dict[str, dict[str, Embeddings]]:
    """Encoder name → split → embeddings (training windows for the training fold)."""
    per_split = {
        split: embed_records(
            encoders,
            task.read,
            task.record_ids[split],
            dataset_id=task.dataset_id,
            windowing=task.spec.windowing,
            train=split == TRAIN,
            cache_dir=cache_dir,
            batch_size=batch_size,
            on_error=on_error,
        )
        for split in (TRAIN, VALIDATION, TEST)
    }
    return {name: {split: per_split[split][name] for split in per_split} for name in encoders}


def keep_embedded(task: TaskData, embedded: Mapping[str, Mapping[str, Embeddings]]) -> list:
    """Drops from `task` the records some encoder could not embed; (where, why) of each."""
    skipped = {
        where: why for e in embedded.values() for s in e.values() for where, why in s.skipped
    }
    for split in (TRAIN, VALIDATION, TEST):
        readable = set.intersection(*(set(e[split].record_ids) for e in embedded.values()))
        task.subset(split, readable)
    return [{"where": w, "reason": r} for w, r in sorted(skipped.items())]


def run_probe(
    encoder: Encoder | str | os.PathLike,
    task: TaskSpec,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    label_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = (0, 1, 2),
    head: Head = "linear",
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    baseline: Encoder | Literal["random"] | None = "random",
    baseline_seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    num_bootstrap: int = metrics.DEFAULT_BOOTSTRAP,
    threshold_rule: str = "gbeta",
    on_error: OnError = "raise",
) -> dict[str, Any]:
    """Frozen-encoder probe of `encoder` on `task`, with baselines; writes the report files.

    `encoder` is an `Encoder` or the path of an exported encoder. `baseline="random"` probes
    a randomly initialised twin (same architecture and preprocessing) so the results say what
    pretraining added (`comparisons`: pretrained minus random on the same test resamples).
    Embeddings are cached in `cache_dir` (default `out_dir/embedding_cache`). Thresholds
    follow `threshold_rule` (`study.THRESHOLD_RULES`, fitted on validation). Returns the
    results dict.
    """
    from ecgfm.export import load_encoder

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else out_dir / "embedding_cache"
    if not isinstance(encoder, Encoder):
        encoder = load_encoder(encoder)
    encoders = {"pretrained": encoder}
    if baseline == "random":
        encoders["random_init"] = encoder.random_twin(seed=baseline_seed)
    elif baseline is not None:
        encoders["baseline"] = baseline
    data = load_task(task, data_root)
    embedded = embed_task(
        encoders, data, cache_dir=cache_dir, batch_size=batch_size, on_error=on_error
    )
    skipped = keep_embedded(data, embedded)
    methods: dict[str, Method] = {
        name: probe_method(e, data, head=head, l2_grid=l2_grid) for name, e in embedded.items()
    }
    study, predictions = run_study(
        data,
        methods,
        fractions=label_fractions,
        seeds=seeds,
        reference="pretrained" if len(methods) > 1 else None,
        num_bootstrap=num_bootstrap,
        threshold_rule=threshold_rule,
    )
    results = study_results(
        study,
        checkpoint=encoder.describe(),
        baselines={n: e.describe() for n, e in encoders.items() if n != "pretrained"},
        method_name="probe",
        method_settings=probe_settings(head, l2_grid),
        preprocessing=encoder.preprocessing,
        extra={
            "skipped_records": skipped,
            "embedding_cache": {
                name: {
                    split: {
                        "file": emb.cache_file,
                        "cached": emb.num_cached,
                        "computed": emb.num_computed,
                    }
                    for split, emb in e.items()
                }
                for name, e in embedded.items()
            },
        },
    )
    results["files"] = {
        k: str(v) for k, v in report.write_report(results, predictions, out_dir).items()
    }
    return results
