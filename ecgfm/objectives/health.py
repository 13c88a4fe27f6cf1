"""Collapse and health metrics of a representation, so a failing pretraining run shows early.

All take embeddings `[B, D]` (any scale: they are L2-normalised first) and a per-example
`weight_B` (1 = real example, 0 = padding), and work under `jax.jit` or on host arrays.

- `embedding_std`: mean over dimensions of the standard deviation across the batch of the
  normalised embeddings, times √D. About 1 for embeddings spread over the sphere, 0 when every
  exam maps to the same point (complete collapse; SimSiam, Chen & He 2021, §4.1).
- `alignment` and `uniformity` (Wang & Isola, ICML 2020): the mean squared distance between
  the two views of an exam (lower = more invariant) and `log E exp(-t‖z_i − z_j‖²)` over pairs
  of different exams (lower = more uniform; 0 when collapsed, about -4 for t = 2 on a
  high-dimensional sphere).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def l2_normalize(z_BD: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Rows scaled to unit L2 norm (float32)."""
    z_BD = z_BD.astype(jnp.float32)
    return z_BD / jnp.maximum(jnp.linalg.norm(z_BD, axis=-1, keepdims=True), eps)


def exam_mean(values_B: jax.Array, weight_B: jax.Array) -> jax.Array:
    """Mean of per-exam `values_B` over the real exams (padding weighs 0; 0 when none is real)."""
    return jnp.sum(values_B * weight_B) / jnp.maximum(jnp.sum(weight_B), 1.0)


def embedding_std(z_BD: jax.Array, weight_B: jax.Array) -> jax.Array:
    """√D × mean over dimensions of the across-batch std of the normalised embeddings."""
    z_BD = l2_normalize(z_BD)
    count = jnp.maximum(jnp.sum(weight_B), 1.0)
    mean_D = jnp.sum(z_BD * weight_B[:, None], axis=0) / count
    var_D = jnp.sum(jnp.square(z_BD - mean_D) * weight_B[:, None], axis=0) / count
    return jnp.mean(jnp.sqrt(var_D + 1e-12)) * jnp.sqrt(z_BD.shape[-1])


def alignment(z1_BD: jax.Array, z2_BD: jax.Array, weight_B: jax.Array) -> jax.Array:
    """Mean ‖z1 − z2‖² between the normalised views of each exam (Wang & Isola, α = 2)."""
    distance_B = jnp.sum(jnp.square(l2_normalize(z1_BD) - l2_normalize(z2_BD)), axis=-1)
    return exam_mean(distance_B, weight_B)


def uniformity(z_BD: jax.Array, weight_B: jax.Array, t: float = 2.0) -> jax.Array:
    """`log` of the mean of `exp(-t‖z_i − z_j‖²)` over pairs i ≠ j of real exams."""
    z_BD = l2_normalize(z_BD)
    # ‖a − b‖² = 2 − 2 a·b on the unit sphere.
    sq_distance_BB = jnp.maximum(2.0 - 2.0 * z_BD @ z_BD.T, 0.0)
    pair_BB = weight_B[:, None] * weight_B[None, :] * (1.0 - jnp.eye(z_BD.shape[0]))
    log_kernel = jnp.where(pair_BB > 0, -t * sq_distance_BB, -jnp.inf)
    return jax.nn.logsumexp(log_kernel) - jnp.log(jnp.maximum(jnp.sum(pair_BB), 1.0))


def representation_metrics(
    z_BD: jax.Array, weight_B: jax.Array, z2_BD: jax.Array | None = None
) -> dict[str, jax.Array]:
    """`embedding_std` and `uniformity` of `z_BD`, plus `alignment` with a second view if given."""
    metrics = {
        "embedding_std": embedding_std(z_BD, weight_B),
        "uniformity": uniformity(z_BD, weight_B),
    }
    if z2_BD is not None:
        metrics["alignment"] = alignment(z_BD, z2_BD, weight_B)
    return metrics


def held_out_metrics(outputs: dict[str, np.ndarray], max_exams: int = 2048) -> dict[str, float]:
    """Health metrics of a validation split from concatenated per-exam `eval_outputs`.

    Reads `embedding` `[N, D]` and `weight` `[N]`, and where present `embedding_b` (a second
    view: alignment) and any `*loss` `[N]` (per exam, averaged over real exams; `batch_loss`,
    the loss of the exam's batch, is reported as `loss`). Uniformity is quadratic in N, so the
    embedding metrics use the first `max_exams` real exams.
    """
    weight = outputs["weight"]
    keep = weight > 0
    embedding = outputs["embedding"][keep][:max_exams]
    second = outputs["embedding_b"][keep][:max_exams] if "embedding_b" in outputs else None
    ones = np.ones(len(embedding), np.float32)
    metrics = {k: float(v) for k, v in representation_metrics(embedding, ones, second).items()}
    for name, values in outputs.items():
        if name.endswith("loss"):
            metrics[name.removeprefix("batch_")] = float(np.average(values, weights=weight))
    return metrics
