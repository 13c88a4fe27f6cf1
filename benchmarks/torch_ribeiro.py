"""A PyTorch twin of `ecgfm.models.RibeiroResNet` + `FlattenHead`, for speed comparisons only.

Same layers, widths, kernel sizes, TensorFlow "same" padding (the extra sample on the right),
BatchNorm constants (Keras' momentum 0.99 is PyTorch's 0.01), dropout, bias-free convolutions
and flatten → dense head, so both frameworks train the same function with the same parameter
count. Channels-first, as PyTorch convolutions want: `signal [B, C, T]` → `[B, K]` logits.
PyTorch is a benchmark extra (`pip install torch==2.13.0`), never an ecgfm dependency.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(length: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """(left, right) padding of TensorFlow's "same": `ceil(length / stride)` outputs."""
    out = math.ceil(length / stride)
    total = max((out - 1) * stride + kernel_size - length, 0)
    return total // 2, total - total // 2


class SameConv1d(nn.Conv1d):
    """A bias-free 1-D convolution with "same" padding, He-normal initialised."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, bias=False)
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    def forward(self, x_BCT: torch.Tensor) -> torch.Tensor:
        """`[B, C_in, T]` → `[B, C_out, ceil(T / stride)]`."""
        left, right = same_padding(x_BCT.shape[-1], self.kernel_size[0], self.stride[0])
        if right > left:  # the convolution pads symmetrically; the extra sample goes right
            x_BCT = F.pad(x_BCT, (0, right - left))
        return F.conv1d(x_BCT, self.weight, None, self.stride, left)


def same_max_pool(x_BCT: torch.Tensor, size: int) -> torch.Tensor:
    """Max pooling with window = stride = `size` and "same" padding (pads with -inf)."""
    left, right = same_padding(x_BCT.shape[-1], size, size)
    if left or right:
        x_BCT = F.pad(x_BCT, (left, right), value=-math.inf)
    return F.max_pool1d(x_BCT, size, size)


def _batch_norm(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


class ResidualUnit(nn.Module):
    """One pre-activation residual unit: `(x, y) [B, C_in, T]` → `(x, y) [B, C_out, T/ds]`."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, downsample: int, dropout: float
    ):
        super().__init__()
        self.downsample = downsample
        self.skip_conv = (
            SameConv1d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )
        self.conv1 = SameConv1d(in_channels, out_channels, kernel_size)
        self.bn1 = _batch_norm(out_channels)
        self.conv2 = SameConv1d(out_channels, out_channels, kernel_size, downsample)
        self.bn2 = _batch_norm(out_channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unit's output `x` and its skip stream `y`."""
        if self.downsample > 1:
            y = same_max_pool(y, self.downsample)
        if self.skip_conv is not None:
            y = self.skip_conv(y)
        x = self.dropout(F.relu(self.bn1(self.conv1(x))))
        x = self.conv2(x) + y
        y = x
        x = self.dropout(F.relu(self.bn2(x)))
        return x, y


class RibeiroResNetTorch(nn.Module):
    """Ribeiro et al.'s ResNet with its flatten → dense head: `[B, C, T]` → `[B, K]` logits."""

    def __init__(
        self,
        num_classes: int,
        *,
        widths: Sequence[int] = (64, 128, 196, 256, 320),
        downsample: int = 4,
        kernel_size: int = 16,
        dropout: float = 0.2,
        input_length: int = 4096,
        num_leads: int = 12,
    ):
        super().__init__()
        self.stem_conv = SameConv1d(num_leads, widths[0], kernel_size)
        self.stem_bn = _batch_norm(widths[0])
        self.units = nn.ModuleList(
            ResidualUnit(c_in, c_out, kernel_size, downsample, dropout)
            for c_in, c_out in itertools.pairwise(widths)
        )
        output_length = input_length
        for _ in widths[1:]:
            output_length = math.ceil(output_length / downsample)
        self.dense = nn.Linear(output_length * widths[-1], num_classes)
        nn.init.kaiming_normal_(self.dense.weight, nonlinearity="relu")
        nn.init.zeros_(self.dense.bias)

    def forward(self, signal_BCT: torch.Tensor) -> torch.Tensor:
        """`[B, K]` logits."""
        x = F.relu(self.stem_bn(self.stem_conv(signal_BCT)))
        y = x
        for unit in self.units:
            x, y = unit(x, y)
        return self.dense(torch.flatten(x, 1))


def make_adamw(
    model: nn.Module, learning_rate: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW that decays kernels only (not BatchNorm or biases), as `ecgfm.optim` does."""
    params = list(model.parameters())
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=learning_rate,
        betas=(0.9, 0.999),
    )
