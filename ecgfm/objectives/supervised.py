"""Supervised multilabel classification: masked binary cross-entropy and macro AUROC."""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecgfm.metrics import per_class_auroc
from ecgfm.models import ModelSpec
from ecgfm.objectives.base import NO_CONTEXT, RunContext

log = logging.getLogger(__name__)


def masked_bce(
    logits_BK: jax.Array | np.ndarray,
    labels_BK: jax.Array | np.ndarray,
    weight_BK: jax.Array | np.ndarray,
    pos_weight_K: jax.Array | np.ndarray | None = None,
) -> jax.Array | np.ndarray:
    """Mean binary cross-entropy over entries with weight > 0 (missing labels, padded exams).

    With `pos_weight_K`, the positive term of class k is multiplied by `pos_weight_K[k]`
    (as torch's BCEWithLogitsLoss), to counter rare classes. numpy inputs are scored in numpy
    (evaluation on the host, no device round trip), JAX inputs in JAX (the train step).
    """
    xp = np if isinstance(logits_BK, np.ndarray) else jnp
    logits_BK = logits_BK.astype(xp.float64 if xp is np else xp.float32)
    # log σ(x) = −log(1 + e^(−x)), written with logaddexp so neither tail overflows.
    log_p = -xp.logaddexp(0.0, -logits_BK)
    log_not_p = -xp.logaddexp(0.0, logits_BK)
    positive = labels_BK if pos_weight_K is None else pos_weight_K * labels_BK
    per_entry = -(positive * log_p + (1.0 - labels_BK) * log_not_p)
    return xp.sum(per_entry * weight_BK) / xp.maximum(xp.sum(weight_BK), 1.0)


def masked_macro_auroc(
    scores_BK: np.ndarray, labels_BK: np.ndarray, weight_BK: np.ndarray
) -> float:
    """Mean AUROC (`ecgfm.metrics.per_class_auroc`) over classes, weight-0 entries out.

    A class with only one label value among the kept entries has no AUROC and is skipped; NaN
    when no class qualifies.
    """
    aurocs = []
    for k in range(scores_BK.shape[1]):
        keep = weight_BK[:, k] > 0
        positive = labels_BK[keep, k] > 0.5
        if positive.all() or not positive.any():
            continue
        aurocs.append(per_class_auroc(positive, scores_BK[keep, k])[0])
    return float(np.mean(aurocs)) if aurocs else float("nan")


@dataclasses.dataclass(frozen=True)
class SupervisedSettings:
    """`pos_weight`: None, or one factor per class for the positive term (counters rare classes)."""

    pos_weight: tuple[float, ...] | None = None


@dataclasses.dataclass(frozen=True)
class SupervisedObjective:
    """Multilabel BCE on the dataset's labels."""

    settings: SupervisedSettings = SupervisedSettings()
    context: RunContext = NO_CONTEXT

    def build_model(self, model: ModelSpec, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
        """The encoder with its family's head of `num_classes` logits."""
        return model.build_classifier(num_classes, rngs)

    def _pos_weight(self) -> np.ndarray | None:
        pos_weight = self.settings.pos_weight
        return None if pos_weight is None else np.asarray(pos_weight, np.float32)

    def _weights(self, batch: dict[str, jax.Array]) -> jax.Array:
        return batch["label_mask"] * batch["mask"][:, None]

    def loss_fn(
        self, model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """BCE over the global batch; missing labels (`label_mask` 0) and padding are ignored."""
        logits_BK = model(batch["signal"], train=train, rngs=rngs)
        loss = masked_bce(logits_BK, batch["labels"], self._weights(batch), self._pos_weight())
        return loss, {"loss": loss}

    def eval_outputs(self, model: nnx.Module, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Logits with the labels and weights needed to score them."""
        logits_BK = model(batch["signal"], train=False).astype(jnp.float32)
        return {"logits": logits_BK, "labels": batch["labels"], "weight": self._weights(batch)}

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Validation loss and macro AUROC over the classes present with both label values."""
        logits, labels, weight = (np.asarray(outputs[k]) for k in ("logits", "labels", "weight"))
        metrics = {
            "loss": float(masked_bce(logits, labels, weight)),
            "macro_auroc": masked_macro_auroc(logits, labels, weight),
        }
        pos_weight = self._pos_weight()
        if pos_weight is not None:
            metrics["weighted_loss"] = float(masked_bce(logits, labels, weight, pos_weight))
        return metrics
