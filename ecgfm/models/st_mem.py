"""ST-MEM's ViT encoder (Na et al., ICLR 2024) exactly as published, in Flax NNX.

Na, Y., Park, M. et al. "Guiding Masked Representation Learning to Capture Spatio-Temporal
Relationship of Electrocardiogram", ICLR 2024; code bakqui/ST-MEM (MIT licence),
`models/encoder/st_mem_vit.py` (`ST_MEM_ViT`) and `models/encoder/vit.py` (`TransformerBlock`).
`ecgfm.models.vit1d` is ecgfm's own ViT with ST-MEM-style patching; this module is the
original, so that its published weights give the published embeddings:

- each lead's signal is cut into `patch_size`-sample patches → LayerNorm → dense → LayerNorm;
- patch j gets position embedding j + 1; each lead gets two SEP tokens (`sep_embedding` +
  position 0, and + the last position, `num_patches + 1`, whatever the input length);
  every token of lead c gets lead embedding c; the tokens are ordered lead by lead;
- pre-LayerNorm transformer blocks: fused qkv projection (`heads × dim_head`, bias), softmax
  attention scaled by dim_head^-½, an output projection, a GELU MLP;
- the SEP tokens are dropped, the remaining tokens averaged, and the mean layer-normalised:
  that is ST-MEM's `forward_encoding`, the embedding its linear probe and head read.

Any length (ecgfm's extension; at `seq_len` nothing changes): T samples give n = T //
patch_size patches (a trailing partial patch is left out); up to `seq_len / patch_size` patches
take the first n patch positions, as the original does for shorter input, more take the patch
positions linearly interpolated to n rows; the SEP tokens keep the first and last position.

LayerNorms use PyTorch's ε = 1e-5. `features_BND` are the patch tokens after the last block
(before the final LayerNorm, which ST-MEM applies only to their mean).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ecgfm.models.heads import EncoderOutput


@dataclasses.dataclass(frozen=True)
class StMemViTConfig:
    """Hyperparameters of `ST_MEM_ViT`; the defaults are `st_mem_vit_base` (12 leads, 9 s).

    Attributes:
      seq_len: T the position table is built for (`seq_len / patch_size + 2` positions).
      patch_size: samples per patch. num_leads: lead embeddings (input may use fewer).
      width, depth, mlp_dim, heads, dim_head, qkv_bias: the transformer.
      dropout: `drop_out_rate` (after the embeddings, attention output and MLP).
      head_dropout: before the linear head (used by `build_model`).
      dtype, param_dtype: compute and parameter dtypes.
    """

    seq_len: int = 2250
    patch_size: int = 75
    num_leads: int = 12
    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    heads: int = 12
    dim_head: int = 64
    qkv_bias: bool = True
    dropout: float = 0.0
    head_dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.seq_len % self.patch_size:
            raise ValueError(
                f"seq_len {self.seq_len} must be a multiple of patch_size {self.patch_size}"
            )

    @property
    def num_patches(self) -> int:
        return self.seq_len // self.patch_size

    @property
    def project_out(self) -> bool:
        """ST-MEM skips the attention output projection only for one head as wide as D."""
        return not (self.heads == 1 and self.dim_head == self.width)

    @property
    def embedding_dim(self) -> int:
        """D of `embedding_BD`."""
        return self.width


def _dense(c_in: int, c_out: int, config: StMemViTConfig, rngs: nnx.Rngs, *, bias=True):
    return nnx.Linear(
        c_in,
        c_out,
        use_bias=bias,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        rngs=rngs,
    )


def _layer_norm(features: int, config: StMemViTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Variance as mean((x - mean)²), as PyTorch computes it (see wav2vec2._Layers).
    return nnx.LayerNorm(
        features,
        epsilon=1e-5,
        use_fast_variance=False,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        rngs=rngs,
    )


class TransformerBlock(nnx.Module):
    """`x + attn(LN(x))`, then `x + mlp(LN(x))` (ST-MEM's `TransformerBlock`, no drop path)."""

    def __init__(self, config: StMemViTConfig, *, rngs: nnx.Rngs):
        inner = config.heads * config.dim_head
        self.heads = config.heads
        self.attn_norm = _layer_norm(config.width, config, rngs)
        self.to_qkv = _dense(config.width, 3 * inner, config, rngs, bias=config.qkv_bias)
        self.to_out = _dense(inner, config.width, config, rngs) if config.project_out else None
        self.ff_norm = _layer_norm(config.width, config, rngs)
        self.ff_in = _dense(config.width, config.mlp_dim, config, rngs)
        self.ff_out = _dense(config.mlp_dim, config.width, config, rngs)
        self.dropout = nnx.Dropout(config.dropout)

    def __call__(self, x_BND: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        """`[B, N, D]` → `[B, N, D]`."""
        drop = dict(deterministic=not train, rngs=rngs)
        b, n, _ = x_BND.shape
        q, k, v = jnp.split(self.to_qkv(self.attn_norm(x_BND)), 3, axis=-1)
        q, k, v = (t.reshape(b, n, self.heads, -1) for t in (q, k, v))
        attended = jax.nn.dot_product_attention(q, k, v).reshape(b, n, -1)
        if self.to_out is not None:
            attended = self.dropout(self.to_out(attended), **drop)
        x_BND = x_BND + attended
        hidden = nnx.gelu(self.ff_in(self.ff_norm(x_BND)), approximate=False)
        hidden = self.dropout(hidden, **drop)
        return x_BND + self.dropout(self.ff_out(hidden), **drop)


class StMemViT(nnx.Module):
    """ST-MEM's ViT: `signal [B, T, C]` → token features `[B, C · T/patch_size, D]`."""

    def __init__(self, config: StMemViTConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.width
        normal = nnx.initializers.normal(1.0)  # torch.randn, as the original initialises
        self.patch_norm = _layer_norm(config.patch_size, config, rngs)
        self.patch_embed = _dense(config.patch_size, d, config, rngs)
        self.token_norm = _layer_norm(d, config, rngs)
        self.pos_embedding = nnx.Param(normal(rngs.params(), (config.num_patches + 2, d)))
        self.sep_embedding = nnx.Param(normal(rngs.params(), (d,)))
        self.lead_embeddings = nnx.Param(normal(rngs.params(), (config.num_leads, d)))
        self.dropout = nnx.Dropout(config.dropout)
        self.blocks = nnx.List([TransformerBlock(config, rngs=rngs) for _ in range(config.depth)])
        self.norm = _layer_norm(d, config, rngs)

    @property
    def embedding_dim(self) -> int:
        """D of `embedding_BD`."""
        return self.config.width

    def __call__(
        self, signal_BTC: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> EncoderOutput:
        """Token features and ST-MEM's pooled embedding; `rngs` has "dropout" when `train`."""
        b, t, c = signal_BTC.shape
        p, config = self.config.patch_size, self.config
        if c > config.num_leads:
            raise ValueError(f"{c} leads exceed the model's {config.num_leads} lead embeddings")
        if t < p:
            raise ValueError(f"T={t} is shorter than one patch (patch_size={p})")
        n = t // p
        patches_BCnP = jnp.transpose(signal_BTC[:, : n * p], (0, 2, 1)).reshape(b, c, n, p)
        x = self.token_norm(self.patch_embed(self.patch_norm(patches_BCnP)))
        pos = self.pos_embedding[...].astype(x.dtype)
        patch_pos = pos[1:-1]
        if n > config.num_patches:
            patch_pos = jax.image.resize(patch_pos, (n, config.width), method="linear")
        x = x + patch_pos[:n]
        sep = self.sep_embedding[...].astype(x.dtype)
        left = jnp.broadcast_to(sep + pos[0], (b, c, 1, config.width))
        right = jnp.broadcast_to(sep + pos[-1], (b, c, 1, config.width))
        x = jnp.concatenate([left, x, right], axis=2)
        x = x + self.lead_embeddings[...][:c, None, :].astype(x.dtype)
        x = self.dropout(x.reshape(b, c * (n + 2), -1), deterministic=not train, rngs=rngs)
        for block in self.blocks:
            x = block(x, train=train, rngs=rngs)
        tokens = x.reshape(b, c, n + 2, -1)[:, :, 1:-1]
        embedding = self.norm(jnp.mean(tokens, axis=(1, 2)))
        return EncoderOutput(features_BND=tokens.reshape(b, c * n, -1), embedding_BD=embedding)
