"""What every objective is: the protocol the one trainer calls, and what it knows of the run.

The trainer (`ecgfm.train`, through `ecgfm.train_state`) knows nothing about labels or views:
it asks the objective to build the model around the configured encoder, to compute the loss
of a batch inside the jitted step, and, for evaluation, per-example outputs on device and
summary metrics on the host. Settings are a frozen dataclass per objective, built once from
`config.objective` (`ecgfm.objectives.make_objective`).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import numpy as np
from flax import nnx

from ecgfm.models import ModelSpec

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What an objective may need to know of the run beyond its own settings.

    Attributes:
      sampling_rate: Hz of the signals it sees (time-based augmentations work in seconds).
      accum_steps: micro-batches per optimizer update (JEPA's EMA moves once per micro-batch).
    """

    sampling_rate: float | None = None
    accum_steps: int = 1

    def __post_init__(self) -> None:
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be at least 1, got {self.accum_steps}")


# What an objective knows when nothing is said: no sampling rate, one micro-batch per update.
NO_CONTEXT = RunContext()


class Objective(Protocol):
    """What the trainer calls; `loss_fn` and `eval_outputs` run under `jax.jit`."""

    def build_model(self, model: ModelSpec, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
        """The trainable module around `model`'s encoder (exposed as `.encoder`)."""
        ...

    def loss_fn(
        self, model: nnx.Module, batch: Batch, rngs: nnx.Rngs, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar loss over the global batch and scalar metrics to log."""
        ...

    def eval_outputs(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
        """Per-example arrays (leading axis B) that `eval_metrics` summarises."""
        ...

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Host-side summary of the concatenated `eval_outputs` of a whole split."""
        ...
