"""AdamW with warm-up + cosine or one-cycle schedules, clipping, decay masks, accumulation.

`make_optimizer(config, total_steps)` reads `config.optim` (see experiments/configs/smoke.py):
`learning_rate`, `schedule` ("warmup_cosine" | "one_cycle" | "constant"), `warmup_steps`,
`end_lr_fraction`, `b1`, `b2`, `weight_decay`, `clip_norm` (0 disables), `grad_accum_steps`.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from ml_collections import ConfigDict

# Parameters that scale or shift activations (norm scales, biases, embeddings of position/class
# tokens) are not regularised: decaying them toward zero changes the function, not its capacity.
_NO_DECAY_NAMES = ("bias", "scale", "pos_embed", "cls_token", "embedding")


def make_schedule(optim: ConfigDict, total_steps: int) -> optax.Schedule:
    """The learning rate per optimizer update step for `optim.schedule`."""
    peak = optim.learning_rate
    if optim.schedule == "constant":
        return optax.constant_schedule(peak)
    if optim.schedule == "warmup_cosine":
        warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=peak * optim.end_lr_fraction,
        )
    if optim.schedule == "one_cycle":
        return optax.cosine_onecycle_schedule(
            transition_steps=max(total_steps, 1),
            peak_value=peak,
            pct_start=optim.get("pct_start", 0.3),
        )
    raise ValueError(
        f"unknown optim.schedule {optim.schedule!r}; expected constant, warmup_cosine, one_cycle"
    )


def weight_decay_mask(params: Any) -> Any:
    """True for parameters AdamW should decay: matrices/kernels, not norms, biases or embeddings."""

    def decays(path: tuple, leaf: Any) -> bool:
        name = str(getattr(path[-1], "key", path[-1])) if path else ""
        return leaf.ndim > 1 and not any(word in name for word in _NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
    optim: ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW (+ clipping, decay mask, accumulation) and its schedule, in optimizer-update steps.

    `total_steps` counts train steps (micro-batches); with `grad_accum_steps = n` the optimizer
    updates every n steps, so the schedule spans `total_steps // n` updates.
    """
    accum = max(int(optim.get("grad_accum_steps", 1)), 1)
    schedule = make_schedule(optim, total_steps // accum)
    parts = []
    if optim.clip_norm:
        parts.append(optax.clip_by_global_norm(optim.clip_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            weight_decay=optim.weight_decay,
            mask=weight_decay_mask,
        )
    )
    tx = optax.chain(*parts)
    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum)
    return tx, schedule
