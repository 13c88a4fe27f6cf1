"""Linear probe (and an optional MLP head) on frozen-encoder embeddings, and `run_probe`.

The linear probe is K independent L2-regularised logistic regressions on standardised
embeddings (mean and standard deviation of the training windows), minimising per class

    Σ_n w_n · BCE(x_n · w_k + b_k, y_nk) / Σ_n w_n  +  (λ / 2) ‖w_k‖²

(bias unpenalised) with full-batch L-BFGS (`optax.lbfgs`, zoom line search) from zero weights
and prior-logit biases: deterministic, and the same λ means the same thing whatever K is.
Training windows weigh 1 / (windows of their record), so a 60 s CPSC record counts as much as
a 10 s one. λ is chosen from a grid by macro AUROC on the validation fold (record-level
scores, aggregated as the protocol says; ties go to the larger λ). The MLP head (one hidden
ReLU layer, full-batch Adam for a fixed number of steps) chooses its weight decay the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
import pathlib
import platform
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ecgfm
from ecgfm import metrics
from ecgfm.data.pipeline import pad_rows
from ecgfm.data.record import OnError
from ecgfm.data.splits import TEST, TRAIN, VALIDATION
from ecgfm.transfer import report
from ecgfm.transfer.embed import Embeddings, FrozenEncoder, embed_records, from_export, random_twin
from ecgfm.transfer.label_fractions import DEFAULT_FRACTIONS
from ecgfm.transfer.protocol import (
    THRESHOLD_RULES,
    WINDOW_AGGREGATION,
    Method,
    MethodOutput,
    TaskData,
    TaskSpec,
    aggregate_window_logits,
    aggregate_windows,
    describe,
    load_task,
    run_study,
    validation_macro_auroc,
)

DEFAULT_L2_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
Head = Literal["linear", "mlp"]
_STD_FLOOR = 1e-6


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
    """Rows padded with zero weight to a power of two: one compilation serves many sizes."""
    rows = max(64, 1 << (len(x_ND) - 1).bit_length())
    return tuple(jnp.asarray(pad_rows(a, rows), jnp.float32) for a in (x_ND, y_NK, weights_N))


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _lbfgs_logistic(
    x_ND: jax.Array,
    y_NK: jax.Array,
    w_N: jax.Array,
    l2: jax.Array,
    bias_K: jax.Array,
    tol: jax.Array,
    max_iter: int,
) -> tuple[dict[str, jax.Array], jax.Array]:
    """L-BFGS on the penalised logistic loss; returns (params, iterations)."""
    w_N = w_N / w_N.sum()

    def loss(params: dict[str, jax.Array]) -> jax.Array:
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


def fit_linear_probe(
    x_ND: np.ndarray,
    y_NK: np.ndarray,
    l2: float,
    *,
    weights_N: np.ndarray | None = None,
    max_iter: int = 500,
    tol: float = 1e-6,
) -> LinearProbe:
    """Fits the probe on embeddings `x_ND` and multi-hot labels `y_NK` with penalty `l2`."""
    x_ND = np.asarray(x_ND, np.float64)
    y_NK = np.asarray(y_NK, np.float64)
    weights_N = np.ones(len(x_ND)) if weights_N is None else np.asarray(weights_N, np.float64)
    mean, scale = _standardizer(x_ND, weights_N)
    params, iterations = _lbfgs_logistic(
        *_padded((x_ND - mean) / scale, y_NK, weights_N),
        jnp.float32(l2),
        jnp.asarray(_prior_logits(y_NK, weights_N), jnp.float32),
        jnp.float32(tol),
        max_iter,
    )
    return LinearProbe(
        mean_D=mean,
        scale_D=scale,
        weight_DK=np.asarray(params["w"], np.float64),
        bias_K=np.asarray(params["b"], np.float64),
        l2=float(l2),
        iterations=int(iterations),
    )


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
        rows, owners = [], []
        for n, record_id in enumerate(record_ids):
            rows.append(np.flatnonzero(embeddings.record_of_window_W == position[record_id]))
            owners.append(np.full(rows[-1].size, n))
        return cls(
            embeddings.embeddings_WD[np.concatenate(rows)],
            np.concatenate(owners),
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
        best, best_score, val_scores = None, -np.inf, {}
        for l2 in sorted(self.l2_grid, reverse=True):
            if self.head == "linear":
                probe = fit_linear_probe(x, y, l2, weights_N=weights)
            else:
                probe = fit_mlp_probe(x, y, l2, weights_N=weights, seed=seed)
            score = validation_macro_auroc(
                self.validation_labels_NK, self._scores(probe, self.validation), "choose λ"
            )
            val_scores[f"{l2:g}"] = score
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
        return MethodOutput(
            validation_scores_NK=self._scores(best, self.validation),
            test_scores_NK=self._scores(best, self.test),
            info=info,
        )


def versions() -> dict[str, str]:
    """Versions of ecgfm and the stack, for results files."""
    out = {"ecgfm": ecgfm.__version__, "python": platform.python_version()}
    for package in ("jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def _embed_task(
    encoders: Mapping[str, FrozenEncoder],
    task: TaskData,
    *,
    cache_dir: pathlib.Path,
    batch_size: int,
    on_error: OnError,
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


def run_probe(
    encoder: FrozenEncoder | str | os.PathLike,
    task: TaskSpec,
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    label_fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = (0, 1, 2),
    head: Head = "linear",
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    baseline: FrozenEncoder | Literal["random"] | None = "random",
    baseline_seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    num_bootstrap: int = metrics.DEFAULT_BOOTSTRAP,
    threshold_rule: str = "gbeta",
    on_error: OnError = "raise",
) -> dict[str, Any]:
    """Frozen-encoder probe of `encoder` on `task`, with baselines; writes the report files.

    `encoder` is a `FrozenEncoder` or the path of an exported encoder. `baseline="random"`
    probes a randomly initialised twin (same architecture and preprocessing) so the results say
    what pretraining added (`comparisons`: pretrained minus random on the same test resamples).
    Embeddings are cached in
    `cache_dir` (default `out_dir/embedding_cache`). Fβ/Gβ thresholds follow `threshold_rule`
    (`protocol.THRESHOLD_RULES`, fitted on validation). Returns the results dict.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else out_dir / "embedding_cache"
    if not isinstance(encoder, FrozenEncoder):
        encoder = from_export(encoder)
    encoders = {"pretrained": encoder}
    if baseline == "random":
        encoders["random_init"] = random_twin(encoder, seed=baseline_seed)
    elif baseline is not None:
        encoders["baseline"] = baseline
    data = load_task(task, data_root)
    embedded = _embed_task(
        encoders, data, cache_dir=cache_dir, batch_size=batch_size, on_error=on_error
    )
    skipped = {
        where: why for e in embedded.values() for s in e.values() for where, why in s.skipped
    }
    for split in (TRAIN, VALIDATION, TEST):
        readable = set.intersection(*(set(e[split].record_ids) for e in embedded.values()))
        data.subset(split, readable)
    methods: dict[str, Method] = {
        name: ProbeMethod(
            train=WindowSet.align(e[TRAIN], data.record_ids[TRAIN]),
            validation=WindowSet.align(e[VALIDATION], data.record_ids[VALIDATION]),
            test=WindowSet.align(e[TEST], data.record_ids[TEST]),
            train_labels_NK=data.labels[TRAIN],
            validation_labels_NK=data.labels[VALIDATION],
            aggregation=task.windowing.aggregation,
            head=head,
            l2_grid=l2_grid,
        )
        for name, e in embedded.items()
    }
    results, predictions = run_study(
        data,
        methods,
        fractions=label_fractions,
        seeds=seeds,
        reference="pretrained" if len(methods) > 1 else None,
        num_bootstrap=num_bootstrap,
        threshold_rule=threshold_rule,
    )
    task_record = results.pop("task")
    results = {
        "checkpoint": encoder.describe(),
        "baselines": {n: e.describe() for n, e in encoders.items() if n != "pretrained"},
        "protocol": {
            **task_record,
            "label_fractions": results["fractions"],
            "seeds": list(seeds),
            "probe": {
                "method": describe(ProbeMethod),
                "head": head,
                "l2_grid": list(l2_grid),
                "window_aggregation": WINDOW_AGGREGATION[task.windowing.aggregation],
            },
            "evaluation": {
                "num_bootstrap": num_bootstrap,
                "scores": "sigmoid of the record logits (probabilities)",
                "threshold_rule": threshold_rule,
                "thresholds": THRESHOLD_RULES[threshold_rule],
            },
        },
        "preprocessing": encoder.preprocessing.to_dict(),
        "preprocessing_description": encoder.preprocessing.describe(),
        "versions": versions(),
        "skipped_records": [{"where": w, "reason": r} for w, r in sorted(skipped.items())],
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
        **results,
    }
    results["files"] = {
        k: str(v) for k, v in report.write_report(results, predictions, out_dir).items()
    }
    return results
