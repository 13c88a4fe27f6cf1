"""A ViT on lead-aware patches of the signal: the backbone of the masked-modelling objectives.

Patching follows ST-MEM (Na et al., ICLR 2024; bakqui/ST-MEM `st_mem_vit.py`): each lead is
cut into patches of `patch_size` samples (75 at 250 Hz in ST-MEM), every patch is embedded by
one shared LayerNorm → dense → LayerNorm, and gets a position embedding (its patch index,
shared by all leads) and a lead embedding. Tokens are lead-major: token `c · n + j` is lead c,
patch j, so N = leads × patches. Optionally each lead also gets two SEP tokens (ST-MEM's lead
separators, positions 0 and `max_patches + 1`); they take part in attention but are dropped
from the output.

The transformer is pre-LayerNorm: `x + drop(attn(LN(x)))`, `x + drop(mlp(LN(x)))`, a GELU MLP,
and a final LayerNorm on every token.

For masked modelling, `tokenize` and `encode_tokens` split the forward pass so an objective can
keep a subset of tokens in between (attention is permutation-equivariant and the positions
are inside the tokens, so any subset and order works).

Any length: an input of T samples gives n = T // patch_size patches per lead (the last
T mod patch_size samples are left out: 2.5 s at 250 Hz is 625 samples, 8 patches of 75 and 25
samples unused). Up to `max_patches` patches take the first n rows of the position table; more
take the table linearly interpolated to n rows (as ViTs are fine-tuned at another
resolution), so an encoder pretrained on 9 s embeds 2.5 s windows and 10 s records alike.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecgfm.models.heads import EncoderOutput

_POSITIONS = ("learned", "sinusoidal")


@dataclasses.dataclass(frozen=True)
class ViT1dConfig:
    """Hyperparameters of the ViT-1D; the defaults are ST-MEM's ViT-S (2,250 samples).

    Attributes:
      patch_size: samples per patch; T must be a multiple of it.
      width: D. depth: transformer blocks. num_heads: attention heads (D divisible by it).
      mlp_ratio: hidden width of the MLP over D.
      num_leads: C of the input `[B, T, C]`; one lead embedding each.
      max_patches: the most patches per lead (T / patch_size) the position table covers.
      position: "learned" or "sinusoidal" (fixed) position embeddings.
      sep_tokens: add ST-MEM's two SEP tokens per lead.
      dropout: after the embeddings, the attention output and the MLP output.
      head_dropout: before the linear head (used by `build_model`).
      dtype: compute dtype ("bfloat16" for mixed precision); param_dtype: parameter dtype.
    """

    patch_size: int = 75
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_leads: int = 12
    max_patches: int = 30
    position: str = "learned"
    sep_tokens: bool = False
    dropout: float = 0.0
    head_dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.position not in _POSITIONS:
            raise ValueError(f"position must be one of {_POSITIONS}, got {self.position!r}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by {self.num_heads} heads")

    @property
    def embedding_dim(self) -> int:
        """D of `embedding_BD`."""
        return self.width


def sinusoidal_positions(num_positions: int, width: int) -> np.ndarray:
    """`[num_positions, width]` fixed embeddings: sin of `pos / 10000^(2i/D)`, then cos."""
    half = width // 2
    freqs = 1.0 / 10000.0 ** (np.arange(half) / half)
    angles = np.arange(num_positions)[:, None] * freqs[None, :]
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    return np.pad(table, ((0, 0), (0, width - 2 * half))).astype(np.float32)


def _dense(in_features, out_features, axes, config: ViT1dConfig, rngs: nnx.Rngs, **kwargs):
    """A LinearGeneral whose kernel carries logical axes `axes` (inputs then outputs)."""
    n_out = len(out_features) if isinstance(out_features, tuple) else 1
    return nnx.LinearGeneral(
        in_features,
        out_features,
        kernel_init=nnx.initializers.xavier_uniform(),
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_metadata={"logical_axes": axes},
        bias_metadata={"logical_axes": axes[-n_out:]},
        rngs=rngs,
        **kwargs,
    )


def _layer_norm(features: int, config: ViT1dConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        features,
        epsilon=1e-6,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Multi-head self-attention over all tokens (no mask)."""

    def __init__(self, config: ViT1dConfig, *, rngs: nnx.Rngs):
        d, h = config.width, config.num_heads
        heads = (h, d // h)
        self.query = _dense(d, heads, ("embed", "heads", "kv"), config, rngs)
        self.key = _dense(d, heads, ("embed", "heads", "kv"), config, rngs)
        self.value = _dense(d, heads, ("embed", "heads", "kv"), config, rngs)
        self.out = _dense(heads, d, ("heads", "kv", "embed"), config, rngs, axis=(-2, -1))

    def __call__(self, x_BND: jax.Array) -> jax.Array:
        """`[B, N, D]` → `[B, N, D]`."""
        attended = jax.nn.dot_product_attention(
            self.query(x_BND), self.key(x_BND), self.value(x_BND)
        )
        return self.out(attended)


class Block(nnx.Module):
    """A pre-LayerNorm transformer block."""

    def __init__(self, config: ViT1dConfig, *, rngs: nnx.Rngs):
        d = config.width
        hidden = int(d * config.mlp_ratio)
        self.norm1 = _layer_norm(d, config, rngs)
        self.attention = Attention(config, rngs=rngs)
        self.norm2 = _layer_norm(d, config, rngs)
        self.mlp_in = _dense(d, hidden, ("embed", "mlp"), config, rngs)
        self.mlp_out = _dense(hidden, d, ("mlp", "embed"), config, rngs)
        self.dropout = nnx.Dropout(config.dropout)

    def __call__(self, x_BND: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        """`[B, N, D]` → `[B, N, D]`."""
        drop = dict(deterministic=not train, rngs=rngs)
        x_BND = x_BND + self.dropout(self.attention(self.norm1(x_BND)), **drop)
        hidden = nnx.gelu(self.mlp_in(self.norm2(x_BND)), approximate=False)
        return x_BND + self.dropout(self.mlp_out(hidden), **drop)


class ViT1d(nnx.Module):
    """ViT-1D encoder: `signal [B, T, C]` → token features `[B, C · T/patch_size, D]`.

    `features_BND` are the patch tokens after the final LayerNorm (SEP tokens removed), in
    lead-major order. `embedding_BD` is their mean (`[B, D]`), what a linear probe reads (as in
    ST-MEM, which pools the patch tokens by their mean).
    """

    def __init__(self, config: ViT1dConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.width
        self.patch_norm = _layer_norm(config.patch_size, config, rngs)
        self.patch_embed = _dense(config.patch_size, d, ("patch", "embed"), config, rngs)
        self.token_norm = _layer_norm(d, config, rngs)
        self.lead_embed = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (config.num_leads, d)),
            logical_axes=("leads", "embed"),
        )
        n_positions = config.max_patches + (2 if config.sep_tokens else 0)
        if config.position == "learned":
            table = nnx.initializers.normal(0.02)(rngs.params(), (n_positions, d))
            self.position_embed = nnx.Param(table, logical_axes=("length", "embed"))
        else:
            self.position_embed = None
        self.sep_embed = (
            nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (d,)), logical_axes=("embed",))
            if config.sep_tokens
            else None
        )
        self.dropout = nnx.Dropout(config.dropout)
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.depth)])
        self.final_norm = _layer_norm(d, config, rngs)

    @property
    def embedding_dim(self) -> int:
        """D of `embedding_BD`."""
        return self.config.width

    def _positions(self) -> jax.Array:
        if self.position_embed is not None:
            return self.position_embed[...]
        n_positions = self.config.max_patches + (2 if self.config.sep_tokens else 0)
        return jnp.asarray(sinusoidal_positions(n_positions, self.config.width))

    def num_patches(self, num_samples: int) -> int:
        """Patches per lead for T = `num_samples` (a trailing partial patch is left out)."""
        p = self.config.patch_size
        if num_samples < p:
            raise ValueError(f"T={num_samples} is shorter than one patch (patch_size={p})")
        return num_samples // p

    def patch_positions(self, n: int) -> jax.Array:
        """`[n, D]` position embeddings of patches 0…n-1: the table's rows, or the table
        interpolated linearly to n rows when n exceeds `max_patches`."""
        first = 1 if self.config.sep_tokens else 0
        table = self._positions()[first : first + self.config.max_patches]
        if n <= self.config.max_patches:
            return table[:n]
        return jax.image.resize(table, (n, table.shape[1]), method="linear")

    def tokenize(self, signal_BTC: jax.Array) -> jax.Array:
        """`[B, T, C]` → `[B, C · n, D]` patch tokens with position and lead embeddings added."""
        b, t, c = signal_BTC.shape
        if c != self.config.num_leads:
            raise ValueError(
                f"expected {self.config.num_leads} leads, got signal shape {[b, t, c]}"
            )
        n = self.num_patches(t)
        p = self.config.patch_size
        patches_BCnP = jnp.transpose(signal_BTC[:, : n * p], (0, 2, 1)).reshape(b, c, n, p)
        tokens = self.token_norm(self.patch_embed(self.patch_norm(patches_BCnP)))
        tokens = tokens + self.patch_positions(n).astype(tokens.dtype)
        tokens = tokens + self.lead_embed[...][:, None, :].astype(tokens.dtype)
        return tokens.reshape(b, c * n, -1)

    def _sep_tokens(self, batch: int, dtype: jnp.dtype) -> jax.Array:
        positions = self._positions()
        ends_2D = jnp.stack([positions[0], positions[-1]])
        seps_C2D = self.sep_embed[...] + ends_2D[None] + self.lead_embed[...][:, None, :]
        seps = seps_C2D.reshape(1, -1, self.config.width).astype(dtype)
        return jnp.broadcast_to(seps, (batch, *seps.shape[1:]))

    def encode_tokens(
        self, tokens_BND: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """Run the transformer over (any subset of) tokens: `[B, N, D]` → `[B, N, D]`."""
        x = tokens_BND
        n_sep = 0
        if self.sep_embed is not None:
            seps = self._sep_tokens(x.shape[0], x.dtype)
            n_sep = seps.shape[1]
            x = jnp.concatenate([seps, x], axis=1)
        x = self.dropout(x, deterministic=not train, rngs=rngs)
        for block in self.blocks:
            x = block(x, train=train, rngs=rngs)
        return self.final_norm(x)[:, n_sep:]

    def __call__(
        self, signal_BTC: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> EncoderOutput:
        """Token features and their mean; `rngs` needs a "dropout" stream when `train`."""
        features = self.encode_tokens(self.tokenize(signal_BTC), train=train, rngs=rngs)
        return EncoderOutput(features_BND=features, embedding_BD=jnp.mean(features, axis=1))
