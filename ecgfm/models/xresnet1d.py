"""xresnet1d: the 1-D XResNet of the PTB-XL benchmark, its strongest CNN family.

Strodthoff, N. et al. "Deep Learning for ECG Analysis: Benchmarks and Insights from PTB-XL",
IEEE JBHI 25(5), 2021; reference PyTorch code: helme/ecg_ptbxl_benchmarking
`code/models/xresnet1d.py` (fastai's XResNet in 1-D). As there:

- stem: three conv–BN–ReLU layers 12→32→32→64 (k=5, the first with stride 2), then max-pool
  (k=3, stride 2);
- four stages of residual blocks, strides 1, 2, 2, 2; bottleneck width 64 in every stage (not
  64→512 as in the image XResNet), expansion 4 for depths 50/101/152 (so 256 channels out),
  1 for 18/34; kernel size 5;
- a block is conv–BN–ReLU ×(2 or 3) with the last BN's scale initialised to 0 and no ReLU;
  the skip path is avg-pool(2, ceil) when strided, then conv1x1–BN when channels change; the
  sum goes through ReLU;
- convolutions have no bias, symmetric padding (k−1)/2 (PyTorch's, not "SAME"), He-normal
  kernels; BatchNorm biases start at 1e-3 (fastai).

The benchmark's head is concat pooling (max ‖ mean over time) → BN → dropout 0.5 → dense, which
`LinearHead(batch_norm=True, dropout=0.5)` on `embedding_BD` reproduces.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ecgfm.models.heads import EncoderOutput

# depth → (expansion, blocks per stage)
DEPTHS: dict[int, tuple[int, tuple[int, ...]]] = {
    18: (1, (2, 2, 2, 2)),
    34: (1, (3, 4, 6, 3)),
    50: (4, (3, 4, 6, 3)),
    101: (4, (3, 4, 23, 3)),
    152: (4, (3, 8, 36, 3)),
}


@dataclasses.dataclass(frozen=True)
class XResNet1dConfig:
    """Hyperparameters of xresnet1d; the defaults are the PTB-XL benchmark's xresnet1d101.

    Attributes:
      depth: 18, 34, 50, 101 or 152.
      num_leads: C of the input `[B, T, C]`.
      stem_widths: channels of the three stem convolutions.
      widths: bottleneck width of each stage (before the expansion).
      widen: multiplies `widths`.
      kernel_size, stem_kernel_size: conv kernel lengths.
      head_dropout, head_batch_norm: the benchmark head's (used by `build_model`).
      bn_momentum, bn_epsilon: PyTorch's BatchNorm defaults (momentum 0.1 ≙ 0.9 here).
      dtype: compute dtype ("bfloat16" for mixed precision); param_dtype: parameter dtype.
    """

    depth: int = 101
    num_leads: int = 12
    stem_widths: tuple[int, int, int] = (32, 32, 64)
    widths: tuple[int, ...] = (64, 64, 64, 64)
    widen: float = 1.0
    kernel_size: int = 5
    stem_kernel_size: int = 5
    head_dropout: float = 0.5
    head_batch_norm: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.depth not in DEPTHS:
            raise ValueError(f"xresnet1d depth must be one of {sorted(DEPTHS)}, got {self.depth}")
        if len(self.widths) != len(DEPTHS[self.depth][1]):
            raise ValueError(f"widths needs one entry per stage (4), got {self.widths}")

    @property
    def embedding_dim(self) -> int:
        """D of `embedding_BD`: twice the last stage's channels (concat pooling)."""
        expansion, _ = DEPTHS[self.depth]
        return 2 * int(self.widths[-1] * self.widen) * expansion


class ConvBN(nnx.Module):
    """conv (no bias) → BN → optional ReLU, fastai's `ConvLayer`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        config: XResNet1dConfig,
        *,
        stride: int = 1,
        relu: bool = True,
        zero_scale: bool = False,
        rngs: nnx.Rngs,
    ):
        pad = (kernel_size - 1) // 2
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            kernel_size=(kernel_size,),
            strides=(stride,),
            padding=((pad, pad),),
            use_bias=False,
            kernel_init=nnx.initializers.variance_scaling(2.0, "fan_in", "normal"),
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
            kernel_metadata={"logical_axes": ("kernel", "conv_in", "conv_out")},
            rngs=rngs,
        )
        # A zero scale makes each residual block start as the identity (fastai's BatchZero).
        self.bn = nnx.BatchNorm(
            out_channels,
            momentum=config.bn_momentum,
            epsilon=config.bn_epsilon,
            scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones,
            bias_init=nnx.initializers.constant(1e-3),
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
            rngs=rngs,
        )
        self.relu = relu

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """`[B, T, C_in]` → `[B, T / stride, C_out]`."""
        x = self.bn(self.conv(x), use_running_average=not train)
        return nnx.relu(x) if self.relu else x


class ResBlock(nnx.Module):
    """A basic (expansion 1) or bottleneck (expansion 4) residual block."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        expansion: int,
        stride: int,
        config: XResNet1dConfig,
        *,
        rngs: nnx.Rngs,
    ):
        out_channels = width * expansion
        k = config.kernel_size
        if expansion == 1:
            convs = [
                ConvBN(in_channels, width, k, config, stride=stride, rngs=rngs),
                ConvBN(width, out_channels, k, config, relu=False, zero_scale=True, rngs=rngs),
            ]
        else:
            convs = [
                ConvBN(in_channels, width, 1, config, rngs=rngs),
                ConvBN(width, width, k, config, stride=stride, rngs=rngs),
                ConvBN(width, out_channels, 1, config, relu=False, zero_scale=True, rngs=rngs),
            ]
        self.convs = nnx.List(convs)
        self.stride = stride
        self.skip = (
            ConvBN(in_channels, out_channels, 1, config, relu=False, rngs=rngs)
            if in_channels != out_channels
            else None
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """`[B, T, C_in]` → `[B, ceil(T / stride), C_out]`."""
        y = x
        if self.stride != 1:
            # avg-pool(2, ceil_mode=True): an odd last sample is averaged on its own.
            pad = ((0, y.shape[1] % 2),)
            y = nnx.avg_pool(y, (2,), strides=(2,), padding=pad, count_include_pad=False)
        if self.skip is not None:
            y = self.skip(y, train=train)
        for conv in self.convs:
            x = conv(x, train=train)
        return nnx.relu(x + y)


class XResNet1d(nnx.Module):
    """xresnet1d encoder: `signal [B, T, C]` → features `[B, ≈T/32, 256]` (depth ≥ 50).

    `features_BND` is the last stage's output. `embedding_BD` is concat pooling over time,
    `[max ‖ mean]` (`[B, 512]` for depth ≥ 50), what the benchmark's head and a linear probe
    read.
    """

    def __init__(self, config: XResNet1dConfig, *, rngs: nnx.Rngs):
        self.config = config
        expansion, blocks_per_stage = DEPTHS[config.depth]
        s = config.stem_widths
        ks = config.stem_kernel_size
        self.stem = nnx.List(
            [
                ConvBN(config.num_leads, s[0], ks, config, stride=2, rngs=rngs),
                ConvBN(s[0], s[1], ks, config, rngs=rngs),
                ConvBN(s[1], s[2], ks, config, rngs=rngs),
            ]
        )
        blocks = []
        in_channels = s[2]
        for stage, (n_blocks, width) in enumerate(
            zip(blocks_per_stage, config.widths, strict=True)
        ):
            width = int(width * config.widen)
            for i in range(n_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ResBlock(in_channels, width, expansion, stride, config, rngs=rngs))
                in_channels = width * expansion
        self.blocks = nnx.List(blocks)

    @property
    def embedding_dim(self) -> int:
        """D of `embedding_BD`."""
        return self.config.embedding_dim

    def __call__(
        self, signal_BTC: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> EncoderOutput:
        """Features and embedding (no dropout inside the encoder; `rngs` is unused)."""
        del rngs
        x = signal_BTC
        for layer in self.stem:
            x = layer(x, train=train)
        x = nnx.max_pool(x, (3,), strides=(2,), padding=((1, 1),))
        for block in self.blocks:
            x = block(x, train=train)
        embedding = jnp.concatenate([jnp.max(x, axis=1), jnp.mean(x, axis=1)], axis=-1)
        return EncoderOutput(features_BND=x, embedding_BD=embedding)
