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
