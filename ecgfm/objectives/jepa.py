"""JEPA for the ViT-1D: predict an EMA target encoder's features of masked blocks (I-JEPA).

Assran et al., CVPR 2023, on ECG's lead × time token grid (`ViT1d.tokenize`: token `c · n + j`
is lead c, patch j):

- Multi-block masking: `num_blocks` target blocks per exam, each `block_leads` consecutive
  leads × `block_patches` consecutive patches at a uniform random corner (blocks may overlap).
  The context is `N − num_blocks · block_leads · block_patches` tokens (times
  `context_fraction`) drawn uniformly from the tokens outside every block — a fixed count, so
  shapes are static under `jax.jit`; context tokens are *dropped* from the grid, not replaced.
- The context encoder (`model.encoder`, trained and exported) encodes the context tokens;
  the predictor (`masked.TokenPredictor`) runs once per target block with mask tokens at the
  block's positions and predicts the target features.
- The target encoder sees every token; its features are layer-normalised (no parameters) and
  the loss is the smooth-L1 distance to the predictions, averaged over target tokens.
- The target encoder is an exponential moving average of the context encoder, updated inside
  the jitted step: its weights are `EmaTarget` variables (not `nnx.Param`), so the optimizer
  and weight decay never see them, they sit in the state's `model_state` and are checkpointed
  and restored with it. The update `target ← m · target + (1 − m) · online` is applied in
  `loss_fn` with the online weights the step's gradient is taken at (I-JEPA applies it just
  after the optimizer update, with the updated ones: ours trails by that one step). With
  gradient accumulation over k micro-batches it runs once per micro-batch with momentum
  m^(1/k): the online weights do not change within an accumulation cycle, so the k updates
  compose to exactly one update with m per optimizer step, whatever k.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ecgfm.models import ModelSpec
from ecgfm.models.vit1d import ViT1d
from ecgfm.objectives import health
from ecgfm.objectives.base import NO_CONTEXT, RunContext
from ecgfm.objectives.masked import (
    PredictorSettings,
    TokenPredictor,
    build_vit,
    decoder_config,
    gather_tokens,
)


class EmaTarget(nnx.Variable):
    """A weight of the EMA target encoder: state, but not a parameter the optimizer updates."""


def as_ema_target(encoder: nnx.Module) -> nnx.Module:
    """A copy of `encoder` whose `nnx.Param`s are `EmaTarget`s with the same values."""
    target = nnx.clone(encoder)
    for _, node in list(nnx.iter_graph(target)):
        if isinstance(node, nnx.Module):
            for name, value in list(vars(node).items()):
                if isinstance(value, nnx.Param):
                    setattr(node, name, EmaTarget(value.get_value(), **value.get_metadata()))
    return target


def ema_update(target: nnx.Module, online: nnx.Module, momentum: float) -> None:
    """`target ← momentum · target + (1 − momentum) · online`, weight by weight, in place."""
    target_state = nnx.state(target, EmaTarget)
    online_values = jax.lax.stop_gradient(nnx.to_pure_dict(nnx.state(online, nnx.Param)))
    new_values = jax.tree.map(
        lambda t, o: momentum * t + (1.0 - momentum) * o.astype(t.dtype),
        nnx.to_pure_dict(target_state),
        online_values,
    )
    nnx.replace_by_pure_dict(target_state, new_values)
    nnx.update(target, target_state)


def block_indices(
    key: jax.Array,
    batch: int,
    num_leads: int,
    num_patches: int,
    num_blocks: int,
    block_leads: int,
    block_patches: int,
) -> jax.Array:
    """`[B, num_blocks, block_leads · block_patches]` token indices of random lead × time blocks."""
    if block_leads > num_leads or block_patches > num_patches:
        raise ValueError(
            f"block {block_leads} leads × {block_patches} patches does not fit the grid "
            f"{num_leads} × {num_patches}"
        )
    k_lead, k_patch = jax.random.split(key)
    shape = (batch, num_blocks)
    lead0 = jax.random.randint(k_lead, shape, 0, num_leads - block_leads + 1)
    patch0 = jax.random.randint(k_patch, shape, 0, num_patches - block_patches + 1)
    leads = lead0[..., None, None] + jnp.arange(block_leads)[:, None]
    patches = patch0[..., None, None] + jnp.arange(block_patches)[None, :]
    return (leads * num_patches + patches).reshape(batch, num_blocks, -1)


def context_indices(
    key: jax.Array, target_BMK: jax.Array, num_tokens: int, num_context: int
) -> jax.Array:
    """`[B, num_context]` indices drawn uniformly from the tokens in no target block."""
    b = target_BMK.shape[0]
    in_target_BN = jnp.zeros((b, num_tokens), bool)
    in_target_BN = in_target_BN.at[jnp.arange(b)[:, None], target_BMK.reshape(b, -1)].set(True)
    # Noise in [0, 1) plus 2 for target tokens: sorting puts every free token first.
    score = jax.random.uniform(key, (b, num_tokens)) + 2.0 * in_target_BN
    return jnp.argsort(score, axis=1)[:, :num_context]


class JepaModel(nnx.Module):
    """Context encoder (exported), its EMA target copy and the predictor."""

    def __init__(self, encoder: ViT1d, target_encoder: nnx.Module, predictor: TokenPredictor):
        self.encoder = encoder
        self.target_encoder = target_encoder
        self.predictor = predictor


@dataclasses.dataclass(frozen=True)
class JepaSettings(PredictorSettings):
    """I-JEPA's masking and target; see the module docstring.

    Attributes:
      num_blocks: target blocks per exam.
      block_leads, block_patches: each block's extent (consecutive leads × patches).
      context_fraction: fraction of the tokens outside every block that the context keeps.
      ema_momentum: the target encoder's EMA momentum per optimizer update.
    """

    num_blocks: int = 4
    block_leads: int = 12
    block_patches: int = 2
    context_fraction: float = 1.0
    ema_momentum: float = 0.996

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_momentum <= 1.0:
            raise ValueError(f"ema_momentum must lie in [0, 1], got {self.ema_momentum}")
        if not 0.0 < self.context_fraction <= 1.0:
            raise ValueError(f"context_fraction must lie in (0, 1], got {self.context_fraction}")


@dataclasses.dataclass(frozen=True)
class JepaObjective:
    """I-JEPA on ECG tokens; the EMA moves once per micro-batch (`context.accum_steps`)."""

    settings: JepaSettings = JepaSettings()
    context: RunContext = NO_CONTEXT

    @property
    def micro_batch_momentum(self) -> float:
        """The EMA momentum per micro-batch: `ema_momentum ** (1 / accum_steps)`."""
        return self.settings.ema_momentum ** (1.0 / self.context.accum_steps)

    def build_model(self, model: ModelSpec, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
        """ViT-1D context encoder, its EMA copy (same initial weights) and the predictor."""
        del num_classes
        encoder = build_vit(model, "jepa", rngs)
        width = encoder.config.width
        predictor = TokenPredictor(width, width, decoder_config(encoder.config, self.settings),
                                   rngs=rngs)  # fmt: skip
        return JepaModel(encoder, as_ema_target(encoder), predictor)

    def prediction_loss(
        self,
        model: JepaModel,
        signal_BTC: jax.Array,
        key: jax.Array,
        *,
        train: bool,
        rngs: nnx.Rngs | None,
    ) -> tuple[jax.Array, jax.Array]:
        """(per-exam smooth-L1 `[B]` over target tokens, mean context feature `[B, D]`)."""
        cfg, encoder = self.settings, model.encoder
        tokens_BND = encoder.tokenize(signal_BTC)
        b, n_tokens, _ = tokens_BND.shape
        num_leads = encoder.config.num_leads
        num_patches = n_tokens // num_leads
        m = cfg.num_blocks
        k_block, k_context = jax.random.split(key)
        target_BMK = block_indices(
            k_block, b, num_leads, num_patches, m,
            cfg.block_leads, cfg.block_patches,
        )  # fmt: skip
        k = target_BMK.shape[-1]
        num_context = int((n_tokens - m * k) * cfg.context_fraction)
        if num_context < 1:
            raise ValueError(f"{m} target blocks of {k} tokens leave no context of {n_tokens}")
        context_BX = context_indices(k_context, target_BMK, n_tokens, num_context)
        context_tokens = gather_tokens(tokens_BND, context_BX)
        context = encoder.encode_tokens(context_tokens, train=train, rngs=rngs)

        target_features = model.target_encoder(signal_BTC, train=False).features_BND
        target_features = jax.lax.stop_gradient(target_features.astype(jnp.float32))
        mean = jnp.mean(target_features, axis=-1, keepdims=True)
        var = jnp.var(target_features, axis=-1, keepdims=True)
        target_features = (target_features - mean) / jnp.sqrt(var + 1e-6)
        target_BMKD = gather_tokens(target_features, target_BMK.reshape(b, -1)).reshape(b, m, k, -1)

        # One predictor pass per block: the context repeated, the block's positions as queries.
        predicted = model.predictor(
            jnp.repeat(context, m, axis=0),
            jnp.repeat(context_BX, m, axis=0),
            target_BMK.reshape(b * m, k),
            num_patches,
            train=train,
            rngs=rngs,
        ).reshape(target_BMKD.shape)
        per_exam = jnp.mean(optax.huber_loss(predicted, target_BMKD, delta=1.0), axis=(1, 2, 3))
        return per_exam, jnp.mean(context, axis=1)

    def loss_fn(
        self, model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean prediction loss over the global batch; updates the EMA target when `train`."""
        weight_B = batch["mask"]
        per_exam, embedding_BD = self.prediction_loss(
            model, batch["signal"], rngs.augment(), train=train, rngs=rngs
        )
        loss = health.exam_mean(per_exam, weight_B)
        if train:
            ema_update(model.target_encoder, model.encoder, self.micro_batch_momentum)
        return loss, {"loss": loss, "embedding_std": health.embedding_std(embedding_BD, weight_B)}

    def eval_outputs(self, model: nnx.Module, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Per-exam prediction loss (fixed masks) and the context encoder's pooled embedding."""
        loss_B, _ = self.prediction_loss(
            model, batch["signal"], jax.random.key(0), train=False, rngs=None
        )
        embedding_BD = model.encoder(batch["signal"], train=False).embedding_BD
        return {"prediction_loss": loss_B, "embedding": embedding_BD, "weight": batch["mask"]}

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Held-out prediction loss, embedding std and uniformity."""
        return health.held_out_metrics(outputs)
