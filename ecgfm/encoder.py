"""The loaded encoder: one type for embedding signals, transfer, and the benchmark.

`ecgfm.load_encoder(path)` (`ecgfm.export.load_encoder`: reading and checking the folder) gives
an `Encoder`; transfer builds one from an in-memory module (`Encoder.from_module`) or a random
initialisation of an architecture (`Encoder.random_init`, `encoder.random_twin(seed)`: the
baseline pretraining must beat). What it holds:

- the NNX module (`signal [B, T, C]` → `EncoderOutput`), and an original classifier `head`
  where an imported model carries one;
- `config`: the spec (`model`, `hparams`, `preprocessing`, `label_names`, provenance);
- `preprocessing`: the input contract, and `source`: where the weights came from;
- `checkpoint_hash`: the SHA-256 of the weights (every variable's path, dtype, shape and
  bytes), the same whichever layout they were stored in; computed once when first asked.

Every encoder embeds any input length (the conv encoders pool over time, the ViTs crop or
interpolate their position embeddings): `embed` refuses input at another sampling rate or
lead set, not at another length. The fixed-length classifier of an imported model
(`predict`, e.g. Ribeiro et al.'s flatten head) takes the length it was built for.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecgfm.data.preprocessing import Preprocessing

# How `embedding_BD` is computed whenever transfer reads it (recorded with results).
POOLING = "encoder embedding_BD, train=False (dropout and masking off, BatchNorm running stats)"


def hash_module(module: nnx.Module) -> str:
    """SHA-256 of an NNX module's state: every variable's path, dtype, shape and bytes."""
    digest = hashlib.sha256()
    leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.state(module))
    for path, leaf in leaves:
        array = np.asarray(leaf)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class Encoder:
    """A loaded encoder: `encoder(signal, sampling_rate)` gives embeddings `[B, D]`.

    Attributes:
      module: the NNX encoder. head: an imported model's own classifier, or None.
      config: the spec (what `ecgfm_encoder.json` holds).
      preprocessing: the input contract (None where the spec has none).
      label_names: the original head's output names, where published.
      architecture: `{"model", "config"}`, enough to build the same architecture untrained.
      source: the folder it was loaded from, or a description ("random init (seed 0)").
    """

    def __init__(
        self,
        module: nnx.Module,
        spec: Mapping[str, Any],
        head: nnx.Module | None = None,
        *,
        source: str = "in-memory module",
    ):
        self.module = module
        self.head = head
        self.config = dict(spec)
        pre = spec.get("preprocessing")
        self.preprocessing = Preprocessing.from_dict(pre) if pre else None
        self.label_names = tuple(spec.get("label_names", ()))
        self.architecture = {"model": spec["model"], "config": dict(spec["hparams"])}
        self.source = source
        self._run = nnx.jit(lambda m, x: m(x, train=False))

    @classmethod
    def from_module(
        cls,
        module: nnx.Module,
        preprocessing: Preprocessing,
        *,
        model: str,
        hparams: Mapping[str, Any] | Any,
        source: str = "in-memory module",
        **spec: Any,
    ) -> Encoder:
        """An encoder of family `model` held in memory (e.g. a pretraining run's encoder)."""
        if dataclasses.is_dataclass(hparams):
            hparams = dataclasses.asdict(hparams)
        # As JSON holds it (tuples are lists), so a spec compares equal to a loaded one's.
        hparams = json.loads(json.dumps(dict(hparams)))
        full = {"model": model, "hparams": hparams, "preprocessing": preprocessing.to_dict()}
        return cls(module, full | spec, source=source)

    @classmethod
    def random_init(
        cls,
        model: str,
        hparams: Mapping[str, Any] | None,
        preprocessing: Preprocessing,
        *,
        seed: int,
    ) -> Encoder:
        """A randomly initialised encoder of family `model`: the baseline pretraining must beat."""
        from ecgfm.models import ModelSpec

        spec = ModelSpec.create(model, hparams)
        # One compiled initialisation, not one dispatch per initialiser (seconds for a ResNet).
        module = nnx.jit(lambda: spec.build_encoder(nnx.Rngs(seed)))()
        return cls.from_module(
            module, preprocessing, model=model, hparams=spec.hparams,
            source=f"random init (seed {seed})",
        )  # fmt: skip

    def random_twin(self, *, seed: int) -> Encoder:
        """The same architecture and preprocessing, randomly initialised."""
        if self.preprocessing is None:
            raise ValueError(f"{self.source}: no preprocessing spec, cannot build a random twin")
        return Encoder.random_init(
            self.architecture["model"], self.architecture["config"], self.preprocessing, seed=seed
        )

    @functools.cached_property
    def checkpoint_hash(self) -> str:
        """SHA-256 of the weights (`hash_module`), whatever layout they were stored in."""
        return hash_module(self.module)

    @property
    def embedding_dim(self) -> int:
        """D of the embeddings."""
        return int(self.module.embedding_dim)

    def describe(self) -> dict[str, Any]:
        """JSON identity of the weights, as results record it."""
        return {
            "path": self.source,
            "hash": self.checkpoint_hash,
            "architecture": dict(self.architecture),
            "trained_steps": self.config.get("trained_steps"),
            "objective": self.config.get("objective"),
            "pooling": POOLING,
        }

    def _check(self, signal: np.ndarray, sampling_rate: float) -> np.ndarray:
        signal = np.asarray(signal, np.float32)
        if self.preprocessing is not None:
            any_length = dataclasses.replace(self.preprocessing, num_samples=None)
            any_length.check_compatible(signal, sampling_rate)
        if signal.ndim not in (2, 3):
            raise ValueError(f"expected [T, C] or [B, T, C] input, got shape {signal.shape}")
        if not np.isfinite(signal).all():
            # NaN in one sample would make the whole embedding NaN, silently.
            bad = np.argwhere(~np.isfinite(signal))
            raise ValueError(
                f"input has {len(bad)} NaN/Inf values (first at index {tuple(bad[0].tolist())}); "
                "the encoder needs finite millivolts: fill or drop the gaps first"
            )
        return signal

    def _encode(self, signal: np.ndarray, sampling_rate: float) -> tuple[Any, bool]:
        signal = self._check(signal, sampling_rate)
        single = signal.ndim == 2
        out = self._run(self.module, jnp.asarray(signal[None] if single else signal))
        return out, single

    def embed(self, signal: np.ndarray, sampling_rate: float) -> np.ndarray:
        """`[B, D]` embeddings of `[B, T, C]` input (`[D]` for one `[T, C]` signal), any T."""
        out, single = self._encode(signal, sampling_rate)
        embedding = np.asarray(out.embedding_BD)
        return embedding[0] if single else embedding

    def features(self, signal: np.ndarray, sampling_rate: float) -> np.ndarray:
        """`[B, N, D]` per-time-step features (`[N, D]` for one `[T, C]` signal)."""
        out, single = self._encode(signal, sampling_rate)
        features = np.asarray(out.features_BND)
        return features[0] if single else features

    def embed_inputs(self, inputs_BTC: np.ndarray) -> np.ndarray:
        """`[B, D]` float32 embeddings of inputs already prepared by `preprocessing` (windows
        cut by transfer): the fast path, without the checks of `embed`."""
        out = self._run(self.module, jnp.asarray(inputs_BTC, jnp.float32))
        return np.asarray(out.embedding_BD, dtype=np.float32)

    def predict(self, signal: np.ndarray, sampling_rate: float) -> np.ndarray:
        """The original classifier's outputs `[B, K]` (activation applied), for imported models.

        Only encoders that carry their source's head (`spec["head"]`) have one; the outputs
        are named by `label_names` where the source publishes them. A fixed-length head (the
        flatten head) takes only the length of `preprocessing.num_samples`.
        """
        if self.head is None:
            raise ValueError("this encoder has no classification head (spec['head'] absent)")
        if self.preprocessing is not None:
            self.preprocessing.check_compatible(np.asarray(signal), sampling_rate)
        out, single = self._encode(signal, sampling_rate)
        logits = np.asarray(self.head(out, train=False))
        activation = self.config["head"].get("activation", "none")
        if activation == "sigmoid":
            logits = 1.0 / (1.0 + np.exp(-logits))
        elif activation == "softmax":
            logits = np.exp(logits - logits.max(axis=-1, keepdims=True))
            logits = logits / logits.sum(axis=-1, keepdims=True)
        return logits[0] if single else logits

    __call__ = embed
