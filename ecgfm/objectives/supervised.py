"""Supervised multilabel classification: masked binary cross-entropy and macro AUROC."""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats
from flax import nnx
from ml_collections import ConfigDict

from ecgfm import models

log = logging.getLogger(__name__)


def masked_bce(
    logits_BK: jax.Array,
    labels_BK: jax.Array,
    weight_BK: jax.Array,
    pos_weight_K: jax.Array | None = None,
) -> jax.Array:
    """Mean binary cross-entropy over entries with weight > 0 (missing labels, padded exams).

    With `pos_weight_K`, the positive term of class k is multiplied by `pos_weight_K[k]`
    (as torch's BCEWithLogitsLoss), to counter rare classes.
    """
    logits_BK = logits_BK.astype(jnp.float32)
    if pos_weight_K is None:
        per_entry = optax.sigmoid_binary_cross_entropy(logits_BK, labels_BK)
    else:
        log_p = jax.nn.log_sigmoid(logits_BK)
        log_not_p = jax.nn.log_sigmoid(-logits_BK)
        per_entry = -(pos_weight_K * labels_BK * log_p + (1.0 - labels_BK) * log_not_p)
    return jnp.sum(per_entry * weight_BK) / jnp.maximum(jnp.sum(weight_BK), 1.0)


def macro_auroc(scores_BK: np.ndarray, labels_BK: np.ndarray, weight_BK: np.ndarray) -> float:
    """Mean over classes of the AUROC (Mann–Whitney U / (n_pos · n_neg)), ties counted as ½.

    Entries with weight 0 are left out; a class with only one label value among the rest has no
    AUROC and is skipped. NaN when no class qualifies.
    """
    aurocs = []
    for k in range(scores_BK.shape[1]):
        keep = weight_BK[:, k] > 0
        scores, labels = scores_BK[keep, k], labels_BK[keep, k] > 0.5
        n_pos, n_neg = int(labels.sum()), int((~labels).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = scipy.stats.rankdata(scores)  # average ranks: ties contribute ½
        u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
        aurocs.append(u / (n_pos * n_neg))
    return float(np.mean(aurocs)) if aurocs else float("nan")


@dataclasses.dataclass(frozen=True)
class SupervisedObjective:
    """Multilabel BCE on the dataset's labels; `config.pos_weight`: None or a float per class."""

    config: ConfigDict

    def build_model(self, config: ConfigDict, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
        """The configured encoder with a linear head of `num_classes` logits."""
        hparams = config.model.get("hparams")
        hparams = hparams.to_dict() if hparams is not None else None
        return models.build_model(config.model.name, hparams, num_classes, rngs)

    def _pos_weight(self) -> jax.Array | None:
        pos_weight = self.config.get("pos_weight")
        return None if pos_weight is None else jnp.asarray(pos_weight, jnp.float32)

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
        logits, labels, weight = outputs["logits"], outputs["labels"], outputs["weight"]
        loss = masked_bce(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weight))
        pos_weight = self._pos_weight()
        metrics = {"loss": float(loss), "macro_auroc": macro_auroc(logits, labels, weight)}
        if pos_weight is not None:
            weighted = masked_bce(
                jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weight), pos_weight
            )
            metrics["weighted_loss"] = float(weighted)
        return metrics
