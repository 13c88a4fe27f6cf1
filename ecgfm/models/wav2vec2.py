"""The wav2vec 2.0 / HuBERT encoder, as ECG-FM and HuBERT-ECG publish it, in Flax NNX.

Baevski et al. "wav2vec 2.0", NeurIPS 2020, and Hsu et al. "HuBERT", 2021, share this network;
two ECG foundation models reuse it and `ecgfm import` reads both (ecgfm/interop/):

- ECG-FM (McKeen et al., JAMIA Open 2025; fairseq-signals `wav2vec2_cmsc`): the 12 leads are
  the convolution's input channels (`input_layout="leads_as_channels"`, fairseq's `in_d=12`);
- HuBERT-ECG (Coppola et al., medRxiv 2024; transformers `HubertModel`): the leads are laid
  end to end as one channel, `[lead 0 | lead 1 | ... ]` (`"leads_concatenated"`), as its
  dataset does with `reshape(-1)` before the model.

The network (both originals, evaluation mode):

- a convolutional feature extractor: `conv_layers` of (channels, kernel, stride), no padding,
  each followed by GELU; `extractor_norm="group"` puts a GroupNorm with one group per channel
  (each channel normalised over time) on the first layer only, `"layer"` a LayerNorm over
  channels on every layer;
- LayerNorm over the conv channels (`feature_norm`), then a dense projection to `width`;
- a convolutional position embedding added to the tokens: a grouped conv of `conv_pos`
  taps padded `conv_pos // 2` on each side (an even kernel's extra last frame is dropped,
  `SamePad`), then GELU. The originals weight-normalise this kernel (`weight_norm(dim=2)`);
  ecgfm stores the effective kernel `g · v / ‖v‖`, the same function, so fine-tuning here
  trains the kernel directly;
- a transformer: post-LN (`layer_norm_first=False`: LayerNorm before the first layer, then
  `x = LN(x + attn(x))`, `x = LN(x + ff(x))`) or pre-LN (`True`: `x + attn(LN(x))`, LayerNorm
  after the last layer). Separate q/k/v/out projections with bias, softmax attention scaled by
  (width / heads)^-½, GELU (erf) feed-forward.

`features_BND` is the last layer's output (HF `last_hidden_state`; fairseq's
`extract_features`), one token per `prod(strides)` samples; `embedding_BD` is its mean over
tokens, which both originals' classifiers read. Any input length at least the extractor's
receptive field works; for "leads_concatenated" that is per lead.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from ecgfm.models.heads import EncoderOutput

InputLayout = Literal["leads_as_channels", "leads_concatenated"]


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
    """Hyperparameters; the defaults are ECG-FM's (90.4 M encoder parameters).

    Attributes:
      input_layout: "leads_as_channels" (`[B, T, C]` convolved as C channels) or
        "leads_concatenated" (`[B, C·T, 1]`, lead after lead).
      num_leads: C the first convolution expects (its input channels, or the leads laid end
        to end; input may not have more).
      conv_layers: (channels, kernel, stride) of each feature-extractor convolution.
      conv_bias: whether those convolutions have a bias.
      extractor_norm: "group" (first layer) or "layer" (every layer), see the module doc.
      feature_norm: LayerNorm over the conv channels before the projection.
      project_features: dense projection to `width` (fairseq drops it when the widths match).
      width, depth, heads, mlp_dim: the transformer.
      conv_pos, conv_pos_groups: the position convolution's taps and groups.
      layer_norm_first: pre-LN (True) or post-LN (False) transformer.
      layer_norm_eps: ε of the feature and transformer LayerNorms (the conv norms use 1e-5).
      dropout: after the projection, attention, feed-forward and the residual sums.
      head_dropout: before the linear head (used by `build_model`).
      dtype, param_dtype: compute and parameter dtypes.
    """

    input_layout: InputLayout = "leads_as_channels"
    num_leads: int = 12
    conv_layers: tuple[tuple[int, int, int], ...] = ((256, 2, 2),) * 4
    conv_bias: bool = False
    extractor_norm: Literal["group", "layer"] = "group"
    feature_norm: bool = True
    project_features: bool = True
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    conv_pos: int = 128
    conv_pos_groups: int = 16
    layer_norm_first: bool = False
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0
    head_dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        # JSON gives lists; the frozen config (and its hash) wants tuples.
        layers = tuple(tuple(int(n) for n in layer) for layer in self.conv_layers)
        object.__setattr__(self, "conv_layers", layers)
        if not layers or any(len(layer) != 3 or min(layer) < 1 for layer in layers):
            raise ValueError(f"conv_layers must be (channels, kernel, stride) ≥ 1, got {layers}")
        if self.input_layout not in ("leads_as_channels", "leads_concatenated"):
            raise ValueError(f"unknown input_layout {self.input_layout!r}")
        if self.extractor_norm not in ("group", "layer"):
            raise ValueError(
                f"extractor_norm must be 'group' or 'layer', not {self.extractor_norm!r}"
            )
        for name in (
            "num_leads",
            "width",
            "depth",
            "heads",
            "mlp_dim",
            "conv_pos",
            "conv_pos_groups",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.width % self.heads or self.width % self.conv_pos_groups:
            raise ValueError(
                f"width {self.width} must be divisible by heads {self.heads} and "
                f"conv_pos_groups {self.conv_pos_groups}"
            )
        if not self.project_features and layers[-1][0] != self.width:
            raise ValueError("without project_features the last conv must have `width` channels")

    @property
    def in_channels(self) -> int:
        return self.num_leads if self.input_layout == "leads_as_channels" else 1

    @property
    def receptive_field(self) -> int:
        """Input samples (per lead) the extractor needs for one token."""
        field = 1
        for _, kernel, stride in reversed(self.conv_layers):
            field = (field - 1) * stride + kernel
        return field

    @property
    def embedding_dim(self) -> int:
        """D of `embedding_BD`."""
        return self.width


class _Layers:
    """Dense and norm layers built with one config's dtypes and rngs (`common`, for convs too).

    Norms compute the variance as mean((x - mean)²), as PyTorch does: Flax's default
    E[x²] - E[x]² loses the digits of a small variance beside a large mean (a relative error
    of 0.6 was measured on an input with a 50 mV offset), where the originals do not.
    """

    def __init__(self, config: Wav2Vec2Config, rngs: nnx.Rngs):
        self.common = dict(
            dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype), rngs=rngs
        )
        self.eps = config.layer_norm_eps

    def dense(self, c_in: int, c_out: int) -> nnx.Linear:
        return nnx.Linear(c_in, c_out, **self.common)

    def layer_norm(self, features: int, eps: float | None = None) -> nnx.LayerNorm:
        return nnx.LayerNorm(
            features,
            epsilon=self.eps if eps is None else eps,
            use_fast_variance=False,
            **self.common,
        )

    def group_norm(self, channels: int) -> nnx.GroupNorm:
        """One group per channel: each channel normalised over time (ε 1e-5, as both do)."""
        return nnx.GroupNorm(
            channels, num_groups=channels, epsilon=1e-5, use_fast_variance=False, **self.common
        )


class EncoderLayer(nnx.Module):
    """One transformer layer (fairseq `TransformerEncoderLayer`, HF `HubertEncoderLayer`)."""

    def __init__(self, config: Wav2Vec2Config, layers: _Layers):
        d = config.width
        self.heads, self.pre_ln = config.heads, config.layer_norm_first
        self.q_proj, self.k_proj = layers.dense(d, d), layers.dense(d, d)
        self.v_proj, self.out_proj = layers.dense(d, d), layers.dense(d, d)
        self.attn_norm = layers.layer_norm(d)
        self.fc1, self.fc2 = layers.dense(d, config.mlp_dim), layers.dense(config.mlp_dim, d)
        self.ff_norm = layers.layer_norm(d)
        self.dropout = nnx.Dropout(config.dropout)

    def _attention(self, x_BND: jax.Array) -> jax.Array:
        """Multi-head self-attention, scaled by (D / heads)^-½: `[B, N, D]` → `[B, N, D]`."""
        b, n, d = x_BND.shape
        q, k, v = (
            proj(x_BND).reshape(b, n, self.heads, d // self.heads)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        return self.out_proj(jax.nn.dot_product_attention(q, k, v).reshape(b, n, d))

    def __call__(self, x_BND: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        """`[B, N, D]` → `[B, N, D]`."""

        def drop(y):
            return self.dropout(y, deterministic=not train, rngs=rngs)

        def feed_forward(y):
            return self.fc2(drop(nnx.gelu(self.fc1(y), approximate=False)))

        if self.pre_ln:
            x_BND = x_BND + drop(self._attention(self.attn_norm(x_BND)))
            return x_BND + drop(feed_forward(self.ff_norm(x_BND)))
        x_BND = self.attn_norm(x_BND + drop(self._attention(x_BND)))
        return self.ff_norm(x_BND + drop(feed_forward(x_BND)))


class Wav2Vec2Encoder(nnx.Module):
    """`signal [B, T, C]` → token features `[B, N, width]` and their mean."""

    def __init__(self, config: Wav2Vec2Config, *, rngs: nnx.Rngs):
        self.config = config
        layers = _Layers(config, rngs)
        self.convs = nnx.List()
        c_in = config.in_channels
        for channels, kernel, stride in config.conv_layers:
            self.convs.append(
                nnx.Conv(
                    c_in,
                    channels,
                    kernel_size=(kernel,),
                    strides=(stride,),
                    padding="VALID",
                    use_bias=config.conv_bias,
                    **layers.common,
                )
            )
            c_in = channels
        if config.extractor_norm == "group":
            self.conv_norms = nnx.List([layers.group_norm(config.conv_layers[0][0])])
        else:
            self.conv_norms = nnx.List(
                [layers.layer_norm(channels, 1e-5) for channels, _, _ in config.conv_layers]
            )
        self.feature_norm = layers.layer_norm(c_in) if config.feature_norm else None
        self.feature_projection = (
            layers.dense(c_in, config.width) if config.project_features else None
        )
        self.pos_conv = nnx.Conv(
            config.width,
            config.width,
            kernel_size=(config.conv_pos,),
            padding=((config.conv_pos // 2, config.conv_pos // 2),),
            feature_group_count=config.conv_pos_groups,
            **layers.common,
        )
        self.encoder_norm = layers.layer_norm(config.width)
        self.layers = nnx.List([EncoderLayer(config, layers) for _ in range(config.depth)])
        self.dropout = nnx.Dropout(config.dropout)

    @property
    def embedding_dim(self) -> int:
        """D of `embedding_BD`."""
        return self.config.width

    def _extract(self, signal_BTC: jax.Array) -> jax.Array:
        """The conv feature extractor: `[B, T, C]` → `[B, N, channels of the last conv]`."""
        b, t, c = signal_BTC.shape
        config = self.config
        if c > config.num_leads:
            raise ValueError(f"{c} leads exceed the model's {config.num_leads}")
        if t < config.receptive_field:
            raise ValueError(
                f"T={t} samples per lead is shorter than the extractor's receptive field "
                f"({config.receptive_field})"
            )
        if config.input_layout == "leads_concatenated":
            x = jnp.transpose(signal_BTC, (0, 2, 1)).reshape(b, c * t, 1)
        elif c < config.num_leads:
            raise ValueError(f"{c} leads given; the first convolution takes {config.num_leads}")
        else:
            x = signal_BTC
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.conv_norms):
                x = self.conv_norms[i](x)
            x = nnx.gelu(x, approximate=False)
        return x

    def __call__(
        self, signal_BTC: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> EncoderOutput:
        """Token features and their mean; `rngs` has "dropout" when `train`."""

        def drop(y):
            return self.dropout(y, deterministic=not train, rngs=rngs)

        x_BNC = self._extract(signal_BTC)
        if self.feature_norm is not None:
            x_BNC = self.feature_norm(x_BNC)
        projected = self.feature_projection is not None
        x_BND = drop(self.feature_projection(x_BNC) if projected else x_BNC)
        position_BND = self.pos_conv(x_BND)
        if self.config.conv_pos % 2 == 0:  # SamePad: the even kernel's extra last frame
            position_BND = position_BND[:, :-1]
        x_BND = x_BND + nnx.gelu(position_BND, approximate=False)
        if not self.config.layer_norm_first:
            x_BND = self.encoder_norm(x_BND)
        x_BND = drop(x_BND)
        for layer in self.layers:
            x_BND = layer(x_BND, train=train, rngs=rngs)
        if self.config.layer_norm_first:
            x_BND = self.encoder_norm(x_BND)
        return EncoderOutput(features_BND=x_BND, embedding_BD=jnp.mean(x_BND, axis=1))
