"""ST-MEM-style masked signal modelling for the ViT-1D encoder (Na et al., ICLR 2024).

The signal is cut into lead-aware patches (`ViT1d.tokenize`: lead c, patch j → token
`c · n + j` with position and lead embeddings). A fraction `mask_ratio` of the C · n tokens of
every exam is *dropped* MAE-style: each exam keeps the same number of tokens,
`round(N · (1 − mask_ratio))`, chosen by sorting uniform noise, so all shapes are static under
`jax.jit`. The encoder sees only the kept tokens; a light transformer decoder gets them back
(projected to its width), adds a learned mask token at every dropped position, gives every
token its own position + lead embedding, and regresses the dropped patches' samples. The loss
is the MSE over dropped patches only, optionally against per-patch normalised targets
(`norm_targets`, MAE's normalised-pixel loss).

`TokenPredictor` (the decoder) is shared with JEPA's predictor.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecgfm.models import ModelSpec
from ecgfm.models.vit1d import Block, ViT1d, ViT1dConfig
from ecgfm.objectives import health
from ecgfm.objectives.base import NO_CONTEXT, RunContext


class TokenPredictor(nnx.Module):
    """A narrow transformer that predicts features at queried token positions from others.

    `__call__(visible_BVE, visible_index_BV, query_index_BQ, num_patches)`: the visible
    tokens are projected to `config.width`, query tokens are a learned mask token; both get
    the lead + position embedding of their index (`index // num_patches`,
    `index % num_patches`), attend to each other, and the query tokens are mapped to
    `out_features`.
    """

    def __init__(self, in_features: int, out_features: int, config: ViT1dConfig, *, rngs: nnx.Rngs):
        d = config.width
        self.embed = nnx.Linear(
            in_features,
            d,
            kernel_metadata={"logical_axes": ("embed", None)},
            bias_metadata={"logical_axes": (None,)},
            rngs=rngs,
        )
        init = nnx.initializers.normal(0.02)
        self.mask_token = nnx.Param(init(rngs.params(), (d,)), logical_axes=("embed",))
        self.lead_embed = nnx.Param(
            init(rngs.params(), (config.num_leads, d)), logical_axes=("leads", "embed")
        )
        self.position_embed = nnx.Param(
            init(rngs.params(), (config.max_patches, d)), logical_axes=("length", "embed")
        )
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.depth)])
        self.norm = nnx.LayerNorm(d, epsilon=1e-6, rngs=rngs)
        self.out = nnx.Linear(
            d,
            out_features,
            kernel_metadata={"logical_axes": (None, "embed")},
            bias_metadata={"logical_axes": ("embed",)},
            rngs=rngs,
        )

    def _where(self, index: jax.Array, num_patches: int) -> jax.Array:
        return (
            self.lead_embed[...][index // num_patches]
            + self.position_embed[...][index % num_patches]
        )

    def __call__(
        self,
        visible_BVE: jax.Array,
        visible_index_BV: jax.Array,
        query_index_BQ: jax.Array,
        num_patches: int,
        *,
        train: bool,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Predictions `[B, Q, out_features]` (float32) at the query tokens."""
        visible = self.embed(visible_BVE) + self._where(visible_index_BV, num_patches)
        queries = self.mask_token[...] + self._where(query_index_BQ, num_patches)
        x = jnp.concatenate([visible, queries], axis=1)
        for block in self.blocks:
            x = block(x, train=train, rngs=rngs)
        return self.out(self.norm(x[:, visible.shape[1] :])).astype(jnp.float32)


def patchify(signal_BTC: jax.Array, patch_size: int) -> jax.Array:
    """`[B, T, C]` → `[B, C · T/patch_size, patch_size]`, lead-major like `ViT1d.tokenize`."""
    b, t, c = signal_BTC.shape
    return jnp.transpose(signal_BTC, (0, 2, 1)).reshape(b, c * (t // patch_size), patch_size)


def random_token_split(key: jax.Array, batch: int, num_tokens: int, num_keep: int):
    """(kept `[B, num_keep]`, dropped `[B, N − num_keep]`) token indices, uniform per exam."""
    order_BN = jnp.argsort(jax.random.uniform(key, (batch, num_tokens)), axis=1)
    return order_BN[:, :num_keep], order_BN[:, num_keep:]


def gather_tokens(tokens_BND: jax.Array, index_BK: jax.Array) -> jax.Array:
    """`tokens[b, index[b, k]]` → `[B, K, D]`."""
    return jnp.take_along_axis(tokens_BND, index_BK[..., None], axis=1)


@dataclasses.dataclass(frozen=True)
class PredictorSettings:
    """The narrow transformer that predicts masked tokens (MAE's decoder, JEPA's predictor)."""

    decoder_width: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4


def decoder_config(encoder: ViT1dConfig, settings: PredictorSettings) -> ViT1dConfig:
    """The predictor's transformer config: `decoder_width/depth/heads` on the encoder's grid."""
    return ViT1dConfig(
        patch_size=encoder.patch_size,
        width=settings.decoder_width,
        depth=settings.decoder_depth,
        num_heads=settings.decoder_heads,
        num_leads=encoder.num_leads,
        max_patches=encoder.max_patches,
        dtype=encoder.dtype,
        param_dtype=encoder.param_dtype,
    )


def build_vit(model: ModelSpec, objective: str, rngs: nnx.Rngs) -> ViT1d:
    """The configured encoder, which must be the ViT-1D (the objective works on its tokens)."""
    if model.name != "vit1d":
        raise ValueError(f"{objective} needs model.name='vit1d', got {model.name!r}")
    return model.build_encoder(rngs)


class MaskedModel(nnx.Module):
    """The ViT-1D encoder (exported) and the reconstruction decoder (pretraining only)."""

    def __init__(self, encoder: ViT1d, decoder: TokenPredictor):
        self.encoder = encoder
        self.decoder = decoder


@dataclasses.dataclass(frozen=True)
class MaskedSettings(PredictorSettings):
    """`mask_ratio`: fraction of tokens dropped; `norm_targets`: per-patch normalised targets."""

    mask_ratio: float = 0.75
    norm_targets: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio}")


@dataclasses.dataclass(frozen=True)
class MaskedObjective:
    """ST-MEM masked patch reconstruction; see the module docstring."""

    settings: MaskedSettings = MaskedSettings()
    context: RunContext = NO_CONTEXT

    def build_model(self, model: ModelSpec, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
        """ViT-1D encoder + decoder (`num_classes` is unused)."""
        del num_classes
        encoder = build_vit(model, "masked", rngs)
        dec = decoder_config(encoder.config, self.settings)
        decoder = TokenPredictor(encoder.config.width, encoder.config.patch_size, dec, rngs=rngs)
        return MaskedModel(encoder, decoder)

    def reconstruction_loss(
        self,
        model: MaskedModel,
        signal_BTC: jax.Array,
        key: jax.Array,
        *,
        train: bool,
        rngs: nnx.Rngs | None,
    ) -> tuple[jax.Array, jax.Array]:
        """(per-exam MSE `[B]` over the dropped patches, mean of the kept tokens' features)."""
        encoder = model.encoder
        tokens_BND = encoder.tokenize(signal_BTC)
        b, n_tokens, _ = tokens_BND.shape
        num_patches = n_tokens // encoder.config.num_leads
        num_keep = max(round(n_tokens * (1.0 - self.settings.mask_ratio)), 1)
        if num_keep >= n_tokens:
            raise ValueError(f"mask_ratio {self.settings.mask_ratio} drops no token of {n_tokens}")
        kept_BK, dropped_BM = random_token_split(key, b, n_tokens, num_keep)
        encoded = encoder.encode_tokens(gather_tokens(tokens_BND, kept_BK), train=train, rngs=rngs)
        predicted_BMP = model.decoder(
            encoded, kept_BK, dropped_BM, num_patches, train=train, rngs=rngs
        )
        target_BMP = gather_tokens(patchify(signal_BTC, encoder.config.patch_size), dropped_BM)
        target_BMP = target_BMP.astype(jnp.float32)
        if self.settings.norm_targets:
            mean = jnp.mean(target_BMP, axis=-1, keepdims=True)
            var = jnp.var(target_BMP, axis=-1, keepdims=True)
            target_BMP = (target_BMP - mean) / jnp.sqrt(var + 1e-6)
        per_exam = jnp.mean(jnp.square(predicted_BMP - target_BMP), axis=(1, 2))
        return per_exam, jnp.mean(encoded, axis=1)

    def loss_fn(
        self, model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean masked-patch MSE over the global batch (padded exams weigh 0), embedding std."""
        weight_B = batch["mask"]
        per_exam, embedding_BD = self.reconstruction_loss(
            model, batch["signal"], rngs.augment(), train=train, rngs=rngs
        )
        loss = health.exam_mean(per_exam, weight_B)
        return loss, {"loss": loss, "embedding_std": health.embedding_std(embedding_BD, weight_B)}

    def eval_outputs(self, model: nnx.Module, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Per-exam reconstruction loss (a fixed mask) and the unmasked pooled embedding."""
        loss_B, _ = self.reconstruction_loss(
            model, batch["signal"], jax.random.key(0), train=False, rngs=None
        )
        embedding_BD = model.encoder(batch["signal"], train=False).embedding_BD
        return {"reconstruction_loss": loss_B, "embedding": embedding_BD, "weight": batch["mask"]}

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Held-out reconstruction loss, embedding std and uniformity."""
        return health.held_out_metrics(outputs)
