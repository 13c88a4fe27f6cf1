"""Contrastive pretraining: SimCLR (two augmented views) and CLOCS (patient-aware positives).

Both encode two views of every exam with one encoder and a projection MLP, and minimise an
InfoNCE loss whose similarity matrix spans the *global* batch: `loss_fn` runs under `jax.jit`
on the whole sharded batch, so XLA gathers the projections across devices and the loss is the
same on 1 or 8 devices (no per-device reduction).

- SimCLR (Chen et al., ICML 2020): NT-Xent over the 2B projections, each view's positive is
  the other view of its exam and the other 2B − 2 projections are negatives.
- CLOCS (Kiyasseh et al., ICML 2021): positives come from the structure of the data rather
  than (only) augmentation, and negatives are cross-view only (`view_a_i` against every
  `view_b_j`, symmetrised). `view` picks the positive pair:
  "cmsc" — two adjacent, non-overlapping halves of the same exam (the encoder sees T/2);
  "cmlc" — the same time window with two disjoint random halves of the leads (the others
  zeroed: a 12-lead encoder's version of CLOCS' per-lead inputs);
  "patient" — two different exams of one patient (`signal`, `signal_b` from
  `ecgfm.data.sources.PatientPairSource`, set `data.patient_pairs = True`).
  Exams of one patient that meet as different rows of a batch still count as negatives.

Views are augmented on device with `ecgfm.objectives.augment.augment_batch`, keyed by the
example's position in the global batch and the step's "augment" stream.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecgfm.models import ModelSpec
from ecgfm.objectives import augment, health
from ecgfm.objectives.base import NO_CONTEXT, RunContext

_CLOCS_VIEWS = ("cmsc", "cmlc", "patient")


def info_nce(
    za_BP: jax.Array,
    zb_BP: jax.Array,
    weight_B: jax.Array,
    temperature: float,
    *,
    intra_view_negatives: bool,
) -> jax.Array:
    """InfoNCE between paired projections: row i of `za` and `zb` are positives.

    Cosine similarities are divided by `temperature`. With `intra_view_negatives` (SimCLR's
    NT-Xent) each of the 2B projections is contrasted with the other 2B − 1; without (CLOCS)
    `za_i` only against every `zb_j` and `zb_i` against every `za_j`. Both directions are
    averaged over the exams with weight > 0; padded exams are never negatives.
    """
    za_BP, zb_BP = health.l2_normalize(za_BP), health.l2_normalize(zb_BP)
    b = za_BP.shape[0]
    valid_B = weight_B > 0
    if intra_view_negatives:
        z_2BP = jnp.concatenate([za_BP, zb_BP])
        logits = z_2BP @ z_2BP.T / temperature
        valid_2B = jnp.concatenate([valid_B, valid_B])
        candidate = valid_2B[None, :] & ~jnp.eye(2 * b, dtype=bool)
        positive = jnp.concatenate([jnp.arange(b) + b, jnp.arange(b)])
        weight = jnp.concatenate([weight_B, weight_B])
    else:
        ab = za_BP @ zb_BP.T / temperature
        logits = jnp.concatenate([ab, ab.T])
        candidate = jnp.broadcast_to(valid_B[None, :], (2 * b, b))
        positive = jnp.concatenate([jnp.arange(b), jnp.arange(b)])
        weight = jnp.concatenate([weight_B, weight_B])
    logits = jnp.where(candidate, logits, -jnp.inf)
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), positive[:, None], axis=-1)[
        :, 0
    ]
    log_prob = jnp.where(weight > 0, log_prob, 0.0)
    return -health.exam_mean(log_prob, weight)


class ProjectionHead(nnx.Module):
    """SimCLR's projection MLP: dense → ReLU → dense, on the encoder's pooled embedding."""

    def __init__(self, in_features: int, hidden: int, out_features: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(
            in_features,
            hidden,
            kernel_metadata={"logical_axes": ("embed", "mlp")},
            bias_metadata={"logical_axes": ("mlp",)},
            rngs=rngs,
        )
        self.out = nnx.Linear(
            hidden,
            out_features,
            kernel_metadata={"logical_axes": ("mlp", "embed")},
            bias_metadata={"logical_axes": ("embed",)},
            rngs=rngs,
        )

    def __call__(self, embedding_BD: jax.Array) -> jax.Array:
        """`[B, D]` → `[B, P]` float32."""
        x = embedding_BD.astype(jnp.float32)
        return self.out(nnx.relu(self.hidden(x)))


class ContrastiveModel(nnx.Module):
    """An encoder (exported and transferred) and the projection head used only in pretraining."""

    def __init__(self, encoder: nnx.Module, projector: ProjectionHead):
        self.encoder = encoder
        self.projector = projector

    def __call__(
        self, signal_BTC: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(pooled embedding `[B, D]`, projection `[B, P]`)."""
        embedding_BD = self.encoder(signal_BTC, train=train, rngs=rngs).embedding_BD
        return embedding_BD, self.projector(embedding_BD)


def _lead_halves(key: jax.Array, signal_BTC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each exam's leads split at random into two disjoint halves, the rest zeroed."""
    b, _, c = signal_BTC.shape
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))
    order_BC = jax.vmap(lambda k: jax.random.permutation(k, c))(keys)
    in_a_BC = jnp.zeros((b, c), bool).at[jnp.arange(b)[:, None], order_BC[:, : c // 2]].set(True)
    return (
        jnp.where(in_a_BC[:, None, :], signal_BTC, 0.0),
        jnp.where(in_a_BC[:, None, :], 0.0, signal_BTC),
    )


@dataclasses.dataclass(frozen=True)
class ContrastiveSettings:
    """SimCLR or CLOCS; see the module docstring.

    Attributes:
      method: "simclr" or "clocs".
      view: CLOCS' positive pair: "cmsc", "cmlc" or "patient" (SimCLR: None).
      temperature: InfoNCE temperature.
      projection_hidden, projection_dim: the projection MLP's widths.
      augmentations: names for `augment.build_augmentations` (SimCLR needs at least one: its two
        views are otherwise the same signal; CLOCS' may be empty).
      augment_probability: probability of applying each augmentation.
    """

    method: str = "simclr"
    view: str | None = None
    temperature: float = 0.1
    projection_hidden: int = 256
    projection_dim: int = 128
    augmentations: tuple[str, ...] = ()
    augment_probability: float = 0.8

    def __post_init__(self) -> None:
        if self.method not in ("simclr", "clocs"):
            raise ValueError(f"objective.method must be simclr or clocs, got {self.method!r}")
        if self.method == "clocs" and self.view not in _CLOCS_VIEWS:
            raise ValueError(f"objective.view must be one of {_CLOCS_VIEWS} for CLOCS")
        if self.method == "simclr" and (not self.augmentations or self.augment_probability <= 0):
            raise ValueError(
                "SimCLR without augmentations contrasts two identical views of each exam: set "
                "objective.augmentations (e.g. ('random_crop_resize', 'amplitude_scale')) and "
                "a positive augment_probability"
            )


@dataclasses.dataclass(frozen=True)
class ContrastiveObjective:
    """SimCLR or CLOCS per `settings.method` (augmentations at the context's sampling rate)."""

    settings: ContrastiveSettings
    context: RunContext = NO_CONTEXT

    def __post_init__(self):
        # Unknown names or a missing sampling rate fail here, not inside the jitted step.
        self._augmentations  # noqa: B018

    @property
    def _augmentations(self) -> list[augment.Augmentation]:
        config = augment.AugmentConfig(
            names=self.settings.augmentations, sampling_rate=self.context.sampling_rate
        )
        return augment.build_augmentations(config)

    def build_model(self, model: ModelSpec, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
        """Encoder + projection head (`num_classes` is unused: no labels are read)."""
        del num_classes
        encoder = model.build_encoder(rngs)
        projector = ProjectionHead(
            encoder.embedding_dim,
            self.settings.projection_hidden,
            self.settings.projection_dim,
            rngs=rngs,
        )
        return ContrastiveModel(encoder, projector)

    def views(self, batch: dict[str, jax.Array], key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The two views `[B, T', C]` of every exam (before augmentation)."""
        signal_BTC = batch["signal"]
        method, view = self.settings.method, self.settings.view
        if method == "simclr":
            return signal_BTC, signal_BTC
        if view == "cmsc":
            half = signal_BTC.shape[1] // 2
            return signal_BTC[:, :half], signal_BTC[:, half : 2 * half]
        if view == "cmlc":
            return _lead_halves(key, signal_BTC)
        if "signal_b" not in batch:
            raise ValueError("CLOCS view 'patient' needs batches of exam pairs: data.patient_pairs")
        return signal_BTC, batch["signal_b"]

    def _augmented_views(
        self, batch: dict[str, jax.Array], key: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        k_view, k_a, k_b = jax.random.split(key, 3)
        view_a, view_b = self.views(batch, k_view)
        chain, p = self._augmentations, self.settings.augment_probability
        if chain:
            view_a = augment.augment_batch(k_a, view_a, chain, p)
            view_b = augment.augment_batch(k_b, view_b, chain, p)
        return view_a, view_b

    def _loss_and_embeddings(
        self,
        model: ContrastiveModel,
        batch: dict[str, jax.Array],
        key: jax.Array,
        weight_B: jax.Array,
        *,
        train: bool,
        rngs: nnx.Rngs | None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        view_a, view_b = self._augmented_views(batch, key)
        b = view_a.shape[0]
        # One encoder call on both views: BatchNorm statistics cover the 2B signals together.
        embedding_2BD, projection_2BP = model(
            jnp.concatenate([view_a, view_b]), train=train, rngs=rngs
        )
        loss = info_nce(
            projection_2BP[:b],
            projection_2BP[b:],
            weight_B,
            self.settings.temperature,
            intra_view_negatives=self.settings.method == "simclr",
        )
        return loss, embedding_2BD[:b], embedding_2BD[b:]

    def loss_fn(
        self, model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """InfoNCE over the global batch, with collapse metrics of the encoder's embedding."""
        weight_B = batch["mask"]
        loss, emb_a, emb_b = self._loss_and_embeddings(
            model, batch, rngs.augment(), weight_B, train=train, rngs=rngs
        )
        return loss, {"loss": loss, **health.representation_metrics(emb_a, weight_B, emb_b)}

    def eval_outputs(self, model: nnx.Module, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Per-exam embeddings of both views (fixed augmentation key) and the batch's loss."""
        weight_B = batch["mask"]
        if self.settings.view == "patient" and "signal_b" not in batch:
            # Validation batches are single exams: report the representation only.
            embedding_BD, _ = model(batch["signal"], train=False)
            return {"embedding": embedding_BD, "weight": weight_B}
        loss, emb_a, emb_b = self._loss_and_embeddings(
            model, batch, jax.random.key(0), weight_B, train=False, rngs=None
        )
        return {
            "embedding": emb_a,
            "embedding_b": emb_b,
            "weight": weight_B,
            "batch_loss": jnp.broadcast_to(loss, weight_B.shape),
        }

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Mean per-batch InfoNCE, embedding std, uniformity and alignment on held-out exams."""
        return health.held_out_metrics(outputs)
