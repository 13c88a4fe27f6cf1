"""Training objectives: what the one trainer optimizes, as a small protocol.

The trainer (`ecgfm.train`) knows nothing about labels or views: it asks the objective to build
the model, to compute the loss of a batch inside the jitted step, and (for evaluation) to give
per-example outputs on device and summary metrics on the host. Self-supervised objectives plug
into the same loop by implementing the same four methods.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from ecgfm.objectives.contrastive import ContrastiveObjective
from ecgfm.objectives.cpc import CpcObjective
from ecgfm.objectives.jepa import JepaObjective
from ecgfm.objectives.masked import MaskedObjective
from ecgfm.objectives.supervised import SupervisedObjective

Batch = dict[str, jax.Array]


class Objective(Protocol):
    """What `train_and_evaluate` calls; `loss_fn` and `eval_outputs` run under `jax.jit`."""

    def build_model(self, config: ConfigDict, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
        """The trainable module (it exposes `.encoder` for export and `init_from`)."""

    def loss_fn(
        self, model: nnx.Module, batch: Batch, rngs: nnx.Rngs, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar loss over the global batch and scalar metrics to log."""

    def eval_outputs(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
        """Per-example arrays (leading axis B) that `eval_metrics` summarises."""

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Host-side summary of the concatenated `eval_outputs` of a whole split."""


OBJECTIVES: dict[str, Any] = {
    "supervised": SupervisedObjective,
    "contrastive": ContrastiveObjective,
    "masked": MaskedObjective,
    "jepa": JepaObjective,
    "cpc": CpcObjective,
}


def make_objective(config: ConfigDict) -> Objective:
    """The objective named by `config.objective.name`, built from `config.objective`.

    JEPA also gets `config.optim.grad_accum_steps` (1 when absent): its EMA target moves once
    per micro-batch, so it needs their number per optimizer step.
    """
    name = config.objective.name
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    if name == "jepa":
        optim = config.get("optim") or ConfigDict()
        accum_steps = max(int(optim.get("grad_accum_steps", 1)), 1)
        return JepaObjective(config.objective, accum_steps=accum_steps)
    return OBJECTIVES[name](config.objective)
