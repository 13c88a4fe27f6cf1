"""The residual network of Ribeiro et al. 2020, as the CODE papers use it.

Ribeiro, A.H. et al. "Automatic diagnosis of the 12-lead ECG using a deep neural network",
Nat. Commun. 11, 1760 (2020); reference Keras code: antonior92/automatic-ecg-diagnosis
`model.py`. Input `[B, 4096, 12]` at 400 Hz; a conv 12→64 (k=16) + BN + ReLU, then four
residual units 64→128→196→256→320 that each downsample ×4, then flatten → dense.

A residual unit (pre-activation, `y` is the skip stream that carries the un-normalised sum):

    skip:  y ← max_pool(y, ds) if ds > 1;  y ← conv1x1(y) if channels change
    main:  x ← dropout(relu(bn(conv_k(x))));  x ← conv_k(x, stride=ds)
    join:  x ← x + y;  y ← x;  x ← dropout(relu(bn(x)))

Convolutions have no bias and TensorFlow "same" padding (Flax's "SAME" pads the same way:
the extra sample goes on the right), kernels are He-normal. With the paper's widths the model
has 6,387,456 conv weights, 3,728 BatchNorm parameters and 3,728 BatchNorm statistics; the
flatten → dense head adds 5,121 weights per class.

The same network's PyTorch port (antonior92/ecg-age-prediction `resnet.py`, `ResNet1d`, used
for the age model) differs in three details the config can express: an odd kernel (17) with
symmetric padding `floor((k - stride + 1) / 2)` on both sides (`padding="symmetric"`; the skip
path's max pool then pads nothing), no ReLU after the stem's BatchNorm
(`stem_activation=False`), and PyTorch's BatchNorm ε = 1e-5.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from ecgfm.models.heads import EncoderOutput


@dataclasses.dataclass(frozen=True)
class RibeiroResNetConfig:
    """Hyperparameters of the Ribeiro et al. ResNet; the defaults are the paper's.

    Attributes:
      widths: channels of the first conv, then of each residual unit.
      downsample: the factor every residual unit divides the sample count by, or one factor
        per unit (the PyTorch port's first unit keeps the length: (1, 4, 4, 4, 4)).
      kernel_size: the length of every non-skip convolution kernel.
      dropout: rate after every BN + ReLU inside the residual units.
      input_length: T the flatten head is built for (`[B, T, C]` inputs).
      num_leads: C.
      bn_momentum, bn_epsilon: Keras' BatchNormalization defaults, as in the paper's model
        (PyTorch reimplementations use 0.9 and 1e-5).
      padding: "same" (TensorFlow's, the Keras original) or "symmetric" (the PyTorch port's
        `floor((kernel - stride + 1) / 2)` zeros on each side).
      stem_activation: ReLU after the stem's BatchNorm (the PyTorch port has none).
      dtype: compute dtype ("bfloat16" for mixed precision); param_dtype: parameter dtype.
    """

    widths: tuple[int, ...] = (64, 128, 196, 256, 320)
    downsample: int | tuple[int, ...] = 4
    kernel_size: int = 16
    dropout: float = 0.2
    input_length: int = 4096
    num_leads: int = 12
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    padding: str = "same"
    stem_activation: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if len(self.widths) < 2:
            raise ValueError(f"widths needs the stem and at least one unit, got {self.widths}")
        if isinstance(self.downsample, tuple) and len(self.downsample) != len(self.widths) - 1:
            raise ValueError(
                f"downsample {self.downsample} needs one factor per unit ({len(self.widths) - 1})"
            )
        if self.padding not in ("same", "symmetric"):
            raise ValueError(f"padding must be 'same' or 'symmetric', got {self.padding!r}")
        # XLA's answer to an empty kernel depends on its version (an error, or zeros).
        if self.kernel_size < 1 or self.input_length < 1 or min(self.widths) < 1:
            raise ValueError(
                "kernel_size, input_length and widths must be positive, got "
                f"{self.kernel_size}, {self.input_length}, {self.widths}"
            )

    @property
    def output_length(self) -> int:
        """N, the number of time steps the encoder's features have for `input_length`."""
        n = self.input_length
        for ds in self.unit_downsample:
            if self.padding == "same":
                n = -(-n // ds)  # "same" padding rounds up
            else:
                n = (n + 2 * _symmetric_pad(self.kernel_size, ds) - self.kernel_size) // ds + 1
        return n

    @property
    def unit_downsample(self) -> tuple[int, ...]:
        """The downsampling factor of each residual unit."""
        if isinstance(self.downsample, tuple):
            return self.downsample
        return (self.downsample,) * (len(self.widths) - 1)


def _symmetric_pad(kernel_size: int, stride: int) -> int:
    """ecg-age-prediction's `_padding`: zeros on each side of a strided convolution."""
    return max(0, (kernel_size - stride + 1) // 2)


def _conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, config, rngs: nnx.Rngs
) -> nnx.Conv:
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel_size,),
        strides=(stride,),
        padding=(
            "SAME" if config.padding == "same" else [(_symmetric_pad(kernel_size, stride),) * 2]
        ),
        use_bias=False,
        kernel_init=nnx.initializers.he_normal(),
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_metadata={"logical_axes": ("kernel", "conv_in", "conv_out")},
        rngs=rngs,
    )


def _batch_norm(channels: int, config: RibeiroResNetConfig, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(
        channels,
        momentum=config.bn_momentum,
        epsilon=config.bn_epsilon,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        rngs=rngs,
    )


class ResidualUnit(nnx.Module):
    """One pre-activation residual unit: `(x, y) [B, T, C_in]` → `(x, y) [B, T/ds, C_out]`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        downsample: int,
        config: RibeiroResNetConfig,
        rngs: nnx.Rngs,
    ):
        self.downsample = downsample
        self.pool_padding = "SAME" if config.padding == "same" else "VALID"
        k = config.kernel_size
        self.skip_conv = (
            _conv(in_channels, out_channels, 1, 1, config, rngs)
            if in_channels != out_channels
            else None
        )
        self.conv1 = _conv(in_channels, out_channels, k, 1, config, rngs)
        self.bn1 = _batch_norm(out_channels, config, rngs)
        self.conv2 = _conv(out_channels, out_channels, k, downsample, config, rngs)
        self.bn2 = _batch_norm(out_channels, config, rngs)
        self.dropout = nnx.Dropout(config.dropout)

    def __call__(
        self, x: jax.Array, y: jax.Array, *, train: bool, rngs: nnx.Rngs | None
    ) -> tuple[jax.Array, jax.Array]:
        """The unit's output `x` and its skip stream `y`."""
        if self.downsample > 1:
            ds = (self.downsample,)
            y = nnx.max_pool(y, window_shape=ds, strides=ds, padding=self.pool_padding)
        if self.skip_conv is not None:
            y = self.skip_conv(y)
        x = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
        x = self.dropout(x, deterministic=not train, rngs=rngs)
        x = self.conv2(x) + y
        y = x
        x = nnx.relu(self.bn2(x, use_running_average=not train))
        x = self.dropout(x, deterministic=not train, rngs=rngs)
        return x, y


class RibeiroResNet(nnx.Module):
    """Ribeiro et al.'s ResNet encoder: `signal [B, T, C]` → features `[B, N, 320]`.

    `features_BND` is the last residual unit's output (N = T / 4⁴ = 16 for T = 4096); the
    paper's classifier flattens it (`FlattenHead`). `embedding_BD` is its mean over time
    (global average pooling, `[B, 320]`), what a linear probe reads.
    """

    def __init__(self, config: RibeiroResNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        widths = config.widths
        self.stem_conv = _conv(config.num_leads, widths[0], config.kernel_size, 1, config, rngs)
        self.stem_bn = _batch_norm(widths[0], config, rngs)
        self.units = nnx.List(
            [
                ResidualUnit(c_in, c_out, ds, config, rngs)
                for (c_in, c_out), ds in zip(
                    itertools.pairwise(widths), config.unit_downsample, strict=True
                )
            ]
        )

    @property
    def embedding_dim(self) -> int:
        """D of `embedding_BD`."""
        return self.config.widths[-1]

    def __call__(
        self, signal_BTC: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> EncoderOutput:
        """Features and embedding; `rngs` needs a "dropout" stream when `train`."""
        x = self.stem_bn(self.stem_conv(signal_BTC), use_running_average=not train)
        if self.config.stem_activation:
            x = nnx.relu(x)
        y = x
        for unit in self.units:
            x, y = unit(x, y, train=train, rngs=rngs)
        return EncoderOutput(features_BND=x, embedding_BD=jnp.mean(x, axis=1))
