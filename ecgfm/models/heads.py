"""What every encoder returns, the classification heads, and the encoder + head pair.

The head is a separate submodule of `Classifier`, so `Classifier.encoder` (its state:
`nnx.state(classifier.encoder)`) can be exported or transferred without it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class EncoderOutput(NamedTuple):
    """An encoder's output.

    Attributes:
      features_BND: `[B, N, D]` per-time-step features (CNNs: the last stage's output, N
        downsampled samples) or per-token features (ViT: N = leads × patches).
      embedding_BD: `[B, D']` the pooled embedding a linear probe reads; each encoder documents
        its pooling.
    """

    features_BND: jax.Array
    embedding_BD: jax.Array


def _class_dense(
    in_features: int, num_classes: int, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs
) -> nnx.Linear:
    """The classifying dense layer both heads end in (He-normal, logical axes embed→classes)."""
    return nnx.Linear(
        in_features,
        num_classes,
        kernel_init=nnx.initializers.he_normal(),
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_metadata={"logical_axes": ("embed", "classes")},
        bias_metadata={"logical_axes": ("classes",)},
        rngs=rngs,
    )


class LinearHead(nnx.Module):
    """Logits from the pooled embedding: optional BatchNorm → dropout → dense."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        dropout: float = 0.0,
        batch_norm: bool = False,
        bn_momentum: float = 0.9,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.norm = (
            nnx.BatchNorm(
                in_features, momentum=bn_momentum, dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )
            if batch_norm
            else None
        )
        self.dropout = nnx.Dropout(dropout)
        self.dense = _class_dense(in_features, num_classes, dtype, param_dtype, rngs)

    def __call__(
        self, encoded: EncoderOutput, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """`[B, K]` float32 logits."""
        x = encoded.embedding_BD
        if self.norm is not None:
            x = self.norm(x, use_running_average=not train)
        x = self.dropout(x, deterministic=not train, rngs=rngs)
        return self.dense(x).astype(jnp.float32)


class FlattenHead(nnx.Module):
    """Logits from all per-time-step features flattened: Ribeiro et al.'s dense layer.

    The kernel has `num_positions × width` inputs, so it fixes the input length the encoder was
    built for.
    """

    def __init__(
        self,
        num_positions: int,
        width: int,
        num_classes: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.num_positions = num_positions
        self.width = width
        self.dense = _class_dense(num_positions * width, num_classes, dtype, param_dtype, rngs)

    def __call__(
        self, encoded: EncoderOutput, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """`[B, K]` float32 logits; the features must be `[B, num_positions, width]`."""
        del train, rngs  # no dropout or normalisation in the paper's head
        features_BND = encoded.features_BND
        if features_BND.shape[1:] != (self.num_positions, self.width):
            raise ValueError(
                f"flatten head built for features [B, {self.num_positions}, {self.width}], got "
                f"{list(features_BND.shape)}: the input length differs from the configured one"
            )
        flat = features_BND.reshape(features_BND.shape[0], -1)
        return self.dense(flat).astype(jnp.float32)


def _num_heads(width: int, wanted: int) -> int:
    """The most heads up to `wanted` that divide `width`."""
    return max(h for h in range(1, min(wanted, width) + 1) if width % h == 0)


class AttentionPoolHead(nnx.Module):
    """Logits from per-time-step features by attention with one learned query.

    The frozen-encoder head of the ECG foundation-model benchmark (Al-Masud, Lopez Alcaraz &
    Strodthoff, ICLR 2026; `LearnableQueryAttentionPool1d` in AI4HealthUOL/ecg-fm-benchmarking,
    after V-JEPA): a learned query (init N(0, 1/D)) is projected, the features `[B, N, D]` give
    keys and values, multi-head attention (16 heads; here the most ≤ 16 that divide D) pools
    them into one vector, and a dense layer maps it to the classes. No biases, as there.
    """

    def __init__(
        self,
        width: int,
        num_classes: int,
        *,
        num_heads: int = 16,
        bias: bool = False,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.num_heads = _num_heads(width, num_heads)
        init = nnx.initializers.normal(width**-0.5)
        self.query_token = nnx.Param(init(rngs.params(), (width,), param_dtype))

        def dense(out: int) -> nnx.Linear:
            return nnx.Linear(width, out, use_bias=bias, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)  # fmt: skip

        self.q_proj, self.k_proj, self.v_proj = dense(width), dense(width), dense(width)
        self.out = dense(num_classes)

    def __call__(
        self, encoded: EncoderOutput, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """`[B, K]` float32 logits of the features `[B, N, D]`."""
        del train, rngs  # no dropout in the benchmark's head
        x_BND = encoded.features_BND
        b, _, d = x_BND.shape
        h = self.num_heads
        query = self.q_proj(self.query_token[...].astype(x_BND.dtype)).reshape(1, 1, h, d // h)
        keys = self.k_proj(x_BND).reshape(b, -1, h, d // h)
        values = self.v_proj(x_BND).reshape(b, -1, h, d // h)
        query = jnp.broadcast_to(query, (b, 1, h, d // h)).astype(keys.dtype)
        pooled = jax.nn.dot_product_attention(query, keys, values).reshape(b, d)
        return self.out(pooled).astype(jnp.float32)


class FrozenEncoderClassifier(nnx.Module):
    """A head trained on a frozen encoder: the encoder runs in evaluation mode (dropout off,
    BatchNorm on its running statistics, which stay as they are) and no gradient reaches it."""

    def __init__(self, encoder: nnx.Module, head: nnx.Module):
        self.encoder = encoder
        self.head = head

    def __call__(
        self, signal_BTC: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        encoded = jax.lax.stop_gradient(self.encoder(signal_BTC, train=False))
        return self.head(encoded, train=train, rngs=rngs)


class Classifier(nnx.Module):
    """An encoder and a head: `signal [B, T, C]` → `[B, K]` float32 logits."""

    def __init__(self, encoder: nnx.Module, head: nnx.Module):
        self.encoder = encoder
        self.head = head

    def __call__(
        self, signal_BTC: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """Logits; `rngs` needs a "dropout" stream when `train` and the model uses dropout."""
        encoded = self.encoder(signal_BTC, train=train, rngs=rngs)
        return self.head(encoded, train=train, rngs=rngs)
