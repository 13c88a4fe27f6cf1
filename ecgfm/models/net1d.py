"""Net1D, the encoder of ECGFounder (Li et al. 2025), in Flax NNX.

Li, J. et al. "An Electrocardiogram Foundation Model Built on over 10 Million Recordings with
External Evaluation across Multiple Domains", NEJM AI (2025); code PKUDigitalHealth/ECGFounder
(`finetune_model.py` builds the model, `net1d.py` defines it). Net1D itself is Shenda Hong's
(hsd1503/resnet1d `net1d.py`); ECGFounder's copy (read from Verma-Lab/ECGFounder-ukb
`net1d.py`, the copy stored for this work) takes the stage widths directly (`filter_list`) and
uses Swish instead of ReLU. Layers and their order follow that file exactly:

    stem:   conv_k (stride 2, "same") → [BN] → act
    stage:  blocks; the first one downsamples by `stride` and changes the width
    block:  [BN → act → dropout →] conv1x1 → [BN] → act → [dropout] → conv_k (grouped, stride)
            → [BN] → act → [dropout] → conv1x1 → squeeze-excitation (mean → dense → act →
            dense → sigmoid) → + identity (max-pooled when downsampling, zero-padded on both
            sides of the channel axis when widening)
    head:   mean over time → dense

The first block of the first stage skips its leading BN/act/dropout. "[BN]" and "[dropout]"
are on only with `use_bn`/`use_do`; ECGFounder's `ft_ECGFounder` builds the model with both
off (the BatchNorm modules exist in its state_dict but are never applied). Convolutions have
biases and TensorFlow "same" padding (extra sample on the right), as `MyConv1dPadSame`; the
skip path's max pool pads with zeros on the right (`MyMaxPool1dPadSame`), not −inf.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ecgfm.models.heads import EncoderOutput

_ACTIVATIONS = ("swish", "relu")


@dataclasses.dataclass(frozen=True)
class Net1dConfig:
    """Hyperparameters of Net1D; the defaults are ECGFounder's 12-lead model.

    Attributes:
      num_leads: C of the input `[B, T, C]` (ECGFounder: 12, or 1 for its single-lead model).
      base_filters: width of the stem convolution.
      ratio: bottleneck width over the block's output width.
      filter_list: output width of each stage.
      m_blocks_list: blocks per stage.
      kernel_size: length of every non-1x1 kernel.
      stride: downsampling of each stage's first block (the stem always strides by 2).
      groups_width: channels per group of the grouped convolution.
      use_bn, use_do: BatchNorm / dropout (p = 0.5) inside the blocks, as in the original.
      activation: "swish" (ECGFounder) or "relu" (hsd1503/resnet1d).
      bn_momentum, bn_epsilon: PyTorch's BatchNorm1d defaults (momentum 0.1 there is 0.9 here).
      head_dropout: before the linear head (used by `build_model`; the original has none).
      dtype, param_dtype: compute and parameter dtypes.
    """

    num_leads: int = 12
    base_filters: int = 64
    ratio: float = 1.0
    filter_list: tuple[int, ...] = (64, 160, 160, 400, 400, 1024, 1024)
    m_blocks_list: tuple[int, ...] = (2, 2, 2, 3, 3, 4, 4)
    kernel_size: int = 16
    stride: int = 2
    groups_width: int = 16
    use_bn: bool = False
    use_do: bool = False
    activation: str = "swish"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    head_dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if len(self.filter_list) != len(self.m_blocks_list):
            raise ValueError(
                f"filter_list {self.filter_list} and m_blocks_list {self.m_blocks_list} "
                "must have one entry per stage"
            )
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")

    @property
    def embedding_dim(self) -> int:
        """D of `embedding_BD`."""
        return self.filter_list[-1]


def _activation(name: str, x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(x) if name == "swish" else nnx.relu(x)


def _conv(c_in: int, c_out: int, kernel: int, stride: int, groups: int, config, rngs):
    return nnx.Conv(
        c_in,
        c_out,
        kernel_size=(kernel,),
        strides=(stride,),
        padding="SAME",
        feature_group_count=groups,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        rngs=rngs,
    )


def _batch_norm(channels: int, config: Net1dConfig, rngs: nnx.Rngs) -> nnx.BatchNorm | None:
    if not config.use_bn:
        return None
    return nnx.BatchNorm(
        channels,
        momentum=config.bn_momentum,
        epsilon=config.bn_epsilon,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        rngs=rngs,
    )


def _dense(c_in: int, c_out: int, config: Net1dConfig, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        c_in,
        c_out,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        rngs=rngs,
    )


def zero_padded_max_pool(x_BTC: jax.Array, size: int) -> jax.Array:
    """`MyMaxPool1dPadSame`: pad `size - 1` zeros (the extra one on the right), then pool."""
    pad = size - 1
    x_BTC = jnp.pad(x_BTC, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)))
    return nnx.max_pool(x_BTC, window_shape=(size,), strides=(size,), padding="VALID")


class BasicBlock(nnx.Module):
    """One Net1D bottleneck block with squeeze-excitation: `[B, T, C_in]` → `[B, T', C_out]`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        groups: int,
        *,
        downsample: bool,
        is_first_block: bool,
        config: Net1dConfig,
        rngs: nnx.Rngs,
    ):
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = stride if downsample else 1
        self.downsample = downsample
        self.is_first_block = is_first_block
        self.activation = config.activation
        middle = int(out_channels * config.ratio)
        # The first block never applies bn1 (the original builds it all the same).
        self.bn1 = None if is_first_block else _batch_norm(in_channels, config, rngs)
        self.conv1 = _conv(in_channels, middle, 1, 1, 1, config, rngs)
        self.bn2 = _batch_norm(middle, config, rngs)
        self.conv2 = _conv(middle, middle, config.kernel_size, self.stride, groups, config, rngs)
        self.bn3 = _batch_norm(middle, config, rngs)
        self.conv3 = _conv(middle, out_channels, 1, 1, 1, config, rngs)
        self.se_fc1 = _dense(out_channels, out_channels // 2, config, rngs)
        self.se_fc2 = _dense(out_channels // 2, out_channels, config, rngs)
        self.dropout = nnx.Dropout(0.5 if config.use_do else 0.0)

    def _pre(self, bn, x, *, train: bool, rngs) -> jax.Array:
        if bn is not None:
            x = bn(x, use_running_average=not train)
        x = _activation(self.activation, x)
        return self.dropout(x, deterministic=not train, rngs=rngs)

    def __call__(self, x_BTC: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        identity = x_BTC
        out = x_BTC
        if not self.is_first_block:
            out = self._pre(self.bn1, out, train=train, rngs=rngs)
        out = self.conv1(out)
        out = self.conv2(self._pre(self.bn2, out, train=train, rngs=rngs))
        out = self.conv3(self._pre(self.bn3, out, train=train, rngs=rngs))
        se = _activation(self.activation, self.se_fc1(jnp.mean(out, axis=1)))
        out = out * jax.nn.sigmoid(self.se_fc2(se))[:, None, :]
        if self.downsample:
            identity = zero_padded_max_pool(identity, self.stride)
        if self.out_channels != self.in_channels:
            extra = self.out_channels - self.in_channels
            identity = jnp.pad(identity, ((0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return out + identity


class Net1d(nnx.Module):
    """Net1D encoder: `signal [B, T, C]` → features `[B, N, filter_list[-1]]`.

    `features_BND` is the last stage's output (N = T / 2 / stride^stages, rounded up);
    `embedding_BD` its mean over time, what the original's dense layer reads.
    """

    def __init__(self, config: Net1dConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.first_conv = _conv(
            config.num_leads, config.base_filters, config.kernel_size, 2, 1, config, rngs
        )
        self.first_bn = _batch_norm(config.base_filters, config, rngs)
        stages = []
        in_channels = config.base_filters
        for i_stage, (out_channels, m_blocks) in enumerate(
            zip(config.filter_list, config.m_blocks_list, strict=True)
        ):
            blocks = [
                BasicBlock(
                    in_channels if i_block == 0 else out_channels,
                    out_channels,
                    config.stride,
                    out_channels // config.groups_width,
                    downsample=i_block == 0,
                    is_first_block=i_stage == 0 and i_block == 0,
                    config=config,
                    rngs=rngs,
                )
                for i_block in range(m_blocks)
            ]
            stages.append(nnx.List(blocks))
            in_channels = out_channels
        self.stages = nnx.List(stages)

    @property
    def embedding_dim(self) -> int:
        """D of `embedding_BD`."""
        return self.config.embedding_dim

    def __call__(
        self, signal_BTC: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> EncoderOutput:
        """Features and embedding; `rngs` needs a "dropout" stream when `train` and `use_do`."""
        x = self.first_conv(signal_BTC)
        if self.first_bn is not None:
            x = self.first_bn(x, use_running_average=not train)
        x = _activation(self.config.activation, x)
        for stage in self.stages:
            for block in stage:
                x = block(x, train=train, rngs=rngs)
        return EncoderOutput(features_BND=x, embedding_BD=jnp.mean(x, axis=1))
