"""AdamW with warm-up + cosine or one-cycle schedules, clipping, decay masks, accumulation.

`make_optimizer(optim, total_steps)` builds what an `OptimConfig` (`config.optim`) describes.
`make_group_optimizer` gives each top-level parameter group (a Classifier's `encoder` and
`head`) its own learning-rate schedule: discriminative learning rates for fine-tuning.

Schedules count optimizer updates. Two consequences a config must allow for:
- "warmup_cosine" starts at 0 (optax's convention): the first update has learning rate 0 and
  only fills Adam's moments; update u < warmup_steps uses `learning_rate · u / warmup_steps`.
- With `grad_accum_steps = n`, `train.steps` counts micro-batches but `warmup_steps` counts
  updates (n micro-batches each): 1,000 warm-up updates take 1,000 · n train steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

# Weight decay by parameter name (the last key of its path), for every model in ecgfm.models and
# the objectives' heads. Only weight matrices and convolution kernels are regularised: decaying
# norm scales, biases and embeddings (position, lead, separator, mask/class tokens) toward zero
# changes the function rather than limiting its capacity. A name in neither set is an error, so
# a new kind of parameter is classified on purpose rather than decayed (or not) by accident.
# S4D layers (ecgfm.models.s4): the output matrix C is decayed like a kernel; the state matrix
# (log_A_real, A_imag), B, the step size log_dt and the skip D are not (the S4 reference trains
# them without weight decay).
DECAYED_NAMES = frozenset({"kernel", "C"})
NOT_DECAYED_NAMES = frozenset(
    {"bias", "scale", "embedding", "lead_embed", "position_embed", "sep_embed", "mask_token",
     "cls_token",
     # The attention-pooling head's learned query (ecgfm.models.heads.AttentionPoolHead).
     "query_token",
     # ST-MEM's ViT (ecgfm.models.st_mem) keeps its original's parameter names.
     "pos_embedding", "sep_embedding", "lead_embeddings",
     # S4D (ecgfm.models.s4): the state-space parameters and the skip D, as the S4 papers.
     "log_dt", "log_A_real", "A_imag", "B", "D"}
)  # fmt: skip


SCHEDULES = ("constant", "warmup_cosine", "one_cycle")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule (`config.optim`).

    Attributes:
      learning_rate: peak learning rate (0 trains nothing; negative is refused).
      schedule: "constant", "warmup_cosine" (linear warm-up from 0, cosine decay) or
        "one_cycle".
      warmup_steps: updates of linear warm-up ("warmup_cosine").
      end_lr_fraction: where the cosine ends, as a fraction of the peak.
      pct_start: fraction of the updates spent rising ("one_cycle").
      b1, b2: Adam's moment decay rates.
      weight_decay: decoupled weight decay (kernels only, `weight_decay_mask`).
      clip_norm: global gradient norm clip, 0 disables.
      grad_accum_steps: micro-batches per update.
    """

    learning_rate: float = 1e-3
    schedule: str = "warmup_cosine"
    warmup_steps: int = 0
    end_lr_fraction: float = 0.01
    pct_start: float = 0.3
    b1: float = 0.9
    b2: float = 0.999
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    grad_accum_steps: int = 1

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown optim.schedule {self.schedule!r}; expected {SCHEDULES}")
        rules = {
            "learning_rate": (self.learning_rate >= 0, ">= 0"),
            "warmup_steps": (self.warmup_steps >= 0, ">= 0"),
            "end_lr_fraction": (0 <= self.end_lr_fraction <= 1, "in [0, 1]"),
            "pct_start": (0 < self.pct_start < 1, "in (0, 1)"),
            "b1": (0 <= self.b1 < 1, "in [0, 1)"),
            "b2": (0 <= self.b2 < 1, "in [0, 1)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "clip_norm": (self.clip_norm >= 0, ">= 0 (0 disables)"),
            "grad_accum_steps": (self.grad_accum_steps >= 1, ">= 1"),
        }
        problems = [
            f"{name} is {getattr(self, name)}, must be {rule}"
            for name, (ok, rule) in rules.items()
            if not ok
        ]
        if problems:
            raise ValueError("optim: " + "; ".join(problems))


def make_schedule(optim: OptimConfig, total_steps: int) -> optax.Schedule:
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
            pct_start=optim.pct_start,
        )
    raise AssertionError(optim.schedule)  # OptimConfig admits only SCHEDULES


def weight_decay_mask(params: Any) -> Any:
    """True for parameters AdamW should decay: kernels, not norms, biases or embeddings.

    Decided by each parameter's name (`DECAYED_NAMES` / `NOT_DECAYED_NAMES`); raises ValueError
    naming a parameter whose name is in neither.
    """

    def decays(path: tuple, leaf: Any) -> bool:
        del leaf
        name = str(getattr(path[-1], "key", path[-1])) if path else ""
        if name in DECAYED_NAMES:
            return True
        if name in NOT_DECAYED_NAMES:
            return False
        raise ValueError(
            f"weight decay: parameter {jax.tree_util.keystr(path)} has a name ({name!r}) that "
            f"ecgfm.optim does not classify; add it to DECAYED_NAMES {sorted(DECAYED_NAMES)} or "
            f"NOT_DECAYED_NAMES {sorted(NOT_DECAYED_NAMES)}"
        )

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
    optim: OptimConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW (+ clipping, decay mask, accumulation) and its schedule, in optimizer-update steps.

    `total_steps` counts train steps (micro-batches); with `grad_accum_steps = n` the optimizer
    updates every n steps, so the schedule spans `total_steps // n` updates.
    """
    accum = optim.grad_accum_steps
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


def _per_group(updates: Mapping[str, Any], groups: Mapping[str, Any]) -> None:
    unknown = sorted(set(updates) - set(groups))
    if unknown:
        raise ValueError(f"parameter groups {unknown} have no schedule; have {sorted(groups)}")


def clip_groups_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Clips each top-level parameter group's updates by its own global norm."""
    clip = optax.clip_by_global_norm(max_norm)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        return {name: clip.update(group, state)[0] for name, group in updates.items()}, state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def scale_by_group_schedule(
    schedules: Mapping[str, optax.Schedule],
) -> optax.GradientTransformation:
    """Descent steps of each top-level parameter group, scaled by that group's learning rate."""

    def init(params: Any) -> optax.ScaleByScheduleState:
        del params  # the state is the step count only, so it shards like any scalar
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(
        updates: Any, state: optax.ScaleByScheduleState, params: Any = None
    ) -> tuple[Any, optax.ScaleByScheduleState]:
        del params
        _per_group(updates, schedules)
        scaled = {
            name: jax.tree.map(lambda u, s=schedules[name]: -s(state.count) * u, group)
            for name, group in updates.items()
        }
        return scaled, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def make_group_optimizer(
    optim: OptimConfig, schedules: Mapping[str, optax.Schedule]
) -> optax.GradientTransformation:
    """AdamW with one learning-rate schedule per top-level parameter group (e.g. encoder, head).

    `optim` gives `b1`, `b2`, `weight_decay` and `clip_norm` (0 disables). It is optax's
    `adamw` with the learning rate applied per group, so its state is one Adam state over all
    parameters (`train.state_shardings` shards it like them). Each group is clipped by its own
    global norm: a frozen encoder's gradients do not shrink the head's steps. A group at
    learning rate 0 keeps its parameters bit-identical (its updates are ±0, decay included).
    """
    parts = [clip_groups_by_global_norm(optim.clip_norm)] if optim.clip_norm else []
    parts += [
        optax.scale_by_adam(b1=optim.b1, b2=optim.b2),
        optax.add_decayed_weights(optim.weight_decay, mask=weight_decay_mask),
        scale_by_group_schedule(schedules),
    ]
    return optax.chain(*parts)
