"""ECG encoders in Flax NNX, their classification heads, and the registry that builds them.

Every encoder maps `signal [B, T, C]` to `EncoderOutput(features_BND, embedding_BD)` with
`__call__(signal_BTC, *, train, rngs=None)`; `train` switches dropout on and BatchNorm to batch
statistics, `rngs` carries the "dropout" stream (derive it per step, e.g.
`nnx.Rngs(dropout=jax.random.fold_in(key, step))`). Models hold only parameters and batch
statistics, so `graphdef, state = nnx.split(model)` gives a plain pytree for jitted steps.

    model = build_model("xresnet1d", {"depth": 50}, num_classes=5, rngs=nnx.Rngs(0))
    logits_BK = model(signal_BTC, train=False)
    encoder = model.encoder  # without the head, for export or transfer
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from ecgfm.config import ConfigError, section, settings_from
from ecgfm.models.heads import (
    AttentionPoolHead,
    Classifier,
    EncoderOutput,
    FlattenHead,
    FrozenEncoderClassifier,
    LinearHead,
)
from ecgfm.models.net1d import Net1d, Net1dConfig
from ecgfm.models.resnet1d import RibeiroResNet, RibeiroResNetConfig
from ecgfm.models.s4 import S4Config, S4Encoder
from ecgfm.models.st_mem import StMemViT, StMemViTConfig
from ecgfm.models.vit1d import ViT1d, ViT1dConfig
from ecgfm.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder
from ecgfm.models.xresnet1d import XResNet1d, XResNet1dConfig

__all__ = [
    "HEADS",
    "MODELS",
    "AttentionPoolHead",
    "Classifier",
    "EncoderOutput",
    "FlattenHead",
    "FrozenEncoderClassifier",
    "LinearHead",
    "ModelFamily",
    "ModelSpec",
    "Net1d",
    "Net1dConfig",
    "RibeiroResNet",
    "RibeiroResNetConfig",
    "S4Config",
    "S4Encoder",
    "StMemViT",
    "StMemViTConfig",
    "ViT1d",
    "ViT1dConfig",
    "Wav2Vec2Config",
    "Wav2Vec2Encoder",
    "XResNet1d",
    "XResNet1dConfig",
    "build_encoder",
    "build_model",
    "make_config",
    "model_section",
]


def _ribeiro_head(config: RibeiroResNetConfig, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    return FlattenHead(
        config.output_length,
        config.widths[-1],
        num_classes,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        rngs=rngs,
    )


def _xresnet_head(config: XResNet1dConfig, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
    return LinearHead(
        config.embedding_dim,
        num_classes,
        dropout=config.head_dropout,
        batch_norm=config.head_batch_norm,
        bn_momentum=config.bn_momentum,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        rngs=rngs,
    )


def _vit_head(
    config: ViT1dConfig | Net1dConfig | StMemViTConfig | S4Config | Wav2Vec2Config,
    num_classes: int,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """Dense on the pooled embedding (also Net1D's, ST-MEM's, the S4's and wav2vec 2.0's)."""
    return LinearHead(
        config.embedding_dim,
        num_classes,
        dropout=config.head_dropout,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        rngs=rngs,
    )


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """A config class, the encoder it builds, and the head its paper uses."""

    config: type
    encoder: Callable[..., nnx.Module]
    head: Callable[[Any, int, nnx.Rngs], nnx.Module]


MODELS: dict[str, ModelFamily] = {
    "ribeiro_resnet": ModelFamily(RibeiroResNetConfig, RibeiroResNet, _ribeiro_head),
    "xresnet1d": ModelFamily(XResNet1dConfig, XResNet1d, _xresnet_head),
    "vit1d": ModelFamily(ViT1dConfig, ViT1d, _vit_head),
    # Published encoders `ecgfm import` reads (ecgfm/interop/): the originals' architectures.
    "net1d": ModelFamily(Net1dConfig, Net1d, _vit_head),
    "st_mem_vit": ModelFamily(StMemViTConfig, StMemViT, _vit_head),
    "wav2vec2": ModelFamily(Wav2Vec2Config, Wav2Vec2Encoder, _vit_head),  # ECG-FM, HuBERT-ECG
    "s4": ModelFamily(S4Config, S4Encoder, _vit_head),
}


# Heads transfer puts on any encoder (`ModelSpec.build_classifier(head=...)`), besides the
# family's own (`None`; Ribeiro's flatten head fixes the input length it was built for):
# "linear" on the pooled embedding (the benchmark's fine-tuning head), "attention" pooling
# over the per-time-step features (its frozen-encoder head). Both take any input length.
HEADS: tuple[str, ...] = ("linear", "attention")
# Width of `features_BND` where it is not `embedding_dim` (xresnet1d concatenates two poolings).
_FEATURE_DIM: dict[str, Callable[[nnx.Module], int]] = {
    "xresnet1d": lambda encoder: encoder.embedding_dim // 2,
}


def _family(name: str) -> ModelFamily:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


def make_config(name: str, config_dict: Mapping[str, Any] | None = None) -> Any:
    """The frozen config of model family `name`; an unknown hyperparameter is a `ConfigError`."""
    family = _family(name)
    try:
        return settings_from(family.config, config_dict, "model.hparams")
    except ConfigError as err:
        raise ConfigError(f"{name}: {err}") from None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """An encoder architecture: family `name` and its frozen hyperparameters."""

    name: str
    hparams: Any

    @classmethod
    def create(cls, name: str, hparams: Mapping[str, Any] | None = None) -> ModelSpec:
        """Validated: unknown family or hyperparameter names raise `ConfigError`."""
        return cls(name, make_config(name, hparams))

    def to_dict(self) -> dict[str, Any]:
        """`{"model", "hparams"}` as plain JSON, as exports record it."""
        return {"model": self.name, "hparams": dataclasses.asdict(self.hparams)}

    def build_encoder(self, rngs: nnx.Rngs) -> nnx.Module:
        return _family(self.name).encoder(self.hparams, rngs=rngs)

    def build_classifier(
        self, num_classes: int, rngs: nnx.Rngs, head: str | None = None, *, frozen: bool = False
    ) -> Classifier | FrozenEncoderClassifier:
        """Encoder + a head: the family's (None; Ribeiro: flatten → dense, others: pooled →
        dense) or one of `HEADS`. `frozen`: the encoder runs in evaluation mode and gets no
        gradient (`FrozenEncoderClassifier`)."""
        encoder = self.build_encoder(rngs)
        dtypes = dict(
            dtype=jnp.dtype(self.hparams.dtype), param_dtype=jnp.dtype(self.hparams.param_dtype)
        )
        if head is None:
            classifier_head = _family(self.name).head(self.hparams, num_classes, rngs)
        elif head == "linear":
            classifier_head = LinearHead(encoder.embedding_dim, num_classes, rngs=rngs, **dtypes)
        elif head == "attention":
            width = _FEATURE_DIM.get(self.name, lambda e: e.embedding_dim)(encoder)
            classifier_head = AttentionPoolHead(width, num_classes, rngs=rngs, **dtypes)
        else:
            raise ValueError(f"head must be None or one of {HEADS}, not {head!r}")
        if frozen:
            return FrozenEncoderClassifier(encoder, classifier_head)
        return Classifier(encoder, classifier_head)


def model_section(name: str, **hparams: Any) -> ConfigDict:
    """`{"name": name, "hparams": <every hyperparameter>}` for a config file."""
    return ConfigDict({"name": name, "hparams": section(make_config(name, hparams))})


def build_encoder(
    name: str, config_dict: Mapping[str, Any] | None, *, rngs: nnx.Rngs
) -> nnx.Module:
    """The encoder of family `name` with hyperparameters `config_dict` (defaults elsewhere)."""
    return ModelSpec.create(name, config_dict).build_encoder(rngs)


def build_model(
    name: str, config_dict: Mapping[str, Any] | None, num_classes: int, rngs: nnx.Rngs
) -> Classifier:
    """Encoder + the family's head (Ribeiro: flatten → dense; others: pooled → dense)."""
    return ModelSpec.create(name, config_dict).build_classifier(num_classes, rngs)
