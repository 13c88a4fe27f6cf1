"""Contrastive predictive coding (CPC) with a causal S4D context network.

van den Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive Coding"
(2018); for ECG, Mehari & Strodthoff, "Self-supervised representation learning from 12-lead
ECG data" (Comput. Biol. Med. 2022; tmehari/ecg-selfsupervised `clinical_ts/cpc.py`) and their
S4 version (tmehari/ssm_ecg `dl_models/cpc.py`, `pretraining.py --s4`), the recipe of ECG-CPC
in the ECG foundation-model benchmark (Al-Masud, Lopez Alcaraz & Strodthoff, ICLR 2026).

Which network is which, as in Mehari & Strodthoff's S4 CPC:
- latents z_t `[B, T, P]`: the S4 encoder's pointwise stem (`S4Encoder.latents`, their "fc
  encoder": dense → BatchNorm → ReLU layers applied to every sample alone);
- context c_t `[B, T, H]`: the S4D stack over the latents (`S4Encoder.contextualize`), which
  must be causal (`bidirectional=False`) so that c_t sees only z_≤t;
- prediction of z_{t+k} from c_t for every k in `steps_ahead`: W_k c_t, one linear map per
  step (van den Oord's W_k), after an optional shared hidden layer with ReLU
  (`predictor_hidden`, their `--mlp`); no bias on W_k ("original CPC: no bias").
The exported encoder is the whole S4 encoder (stem and context network): downstream tasks
read the context features, pooled over time, as the benchmark does; the predictor is dropped.

The loss is InfoNCE with dot-product scores (no normalisation, no temperature, as both
references): for each exam b, step k and anchor t < T − k, the positive z_{b,t+k} against
negatives drawn per `negatives`:
- "batch": z_{b',t+k} of every other exam b' of the *global* batch at the same time step
  (padded exams are never candidates). `loss_fn` runs under `jax.jit` on the whole sharded
  batch, so the scores span all devices and the loss is the same on 1 or 8 devices, as in
  `ecgfm.objectives.contrastive`. Memory: `[B, T, B]` scores per step.
- "sequence": `num_negatives` time steps of the same exam drawn uniformly, with
  replacement, from the T − 1 steps other than t + k (their `--negatives-from-same-seq-only`,
  the setting of their published pretraining commands); keyed by the step's "augment" stream
  over the global batch, so also independent of the device count. Memory: `[B, T, T]`.
The loss is the mean over exams, anchors and steps of −log p(positive); Mehari & Strodthoff
sum over anchors (a constant factor: our value reads as a cross-entropy, ≈ log(candidates) at
chance). Health metrics: `accuracy_step{k}` (how often the positive scores highest among its
candidates; chance is 1/candidates) per step, their mean `accuracy`, and the pooled context
embedding's `embedding_std` (≈0 would be collapse).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecgfm.models import ModelSpec
from ecgfm.models.s4 import S4Encoder
from ecgfm.objectives import health
from ecgfm.objectives.base import NO_CONTEXT, RunContext

NEGATIVES = ("batch", "sequence")


@dataclasses.dataclass(frozen=True)
class CpcSettings:
    """The CPC objective's settings (`config.objective` without its `name`).

    Attributes:
      steps_ahead: the offsets k (in samples of the latent sequence) whose latents z_{t+k}
        are predicted from c_t, each with its own W_k. Mehari & Strodthoff predict only 12.
      negatives: "batch" or "sequence" (see the module docstring).
      num_negatives: negatives per anchor for "sequence" (128 in their commands); unused for
        "batch", whose negatives are every other exam of the global batch.
      predictor_hidden: width of the shared ReLU hidden layer before the W_k; 0 for none.
    """

    steps_ahead: tuple[int, ...] = (12,)
    negatives: str = "batch"
    num_negatives: int = 128
    predictor_hidden: int = 0

    def __post_init__(self):
        steps = tuple(int(k) for k in self.steps_ahead)
        if not steps or min(steps) < 1 or len(set(steps)) != len(steps):
            raise ValueError(f"steps_ahead must be distinct positive offsets, got {steps}")
        object.__setattr__(self, "steps_ahead", steps)
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be at least 1, got {self.num_negatives}")
        if self.predictor_hidden < 0:
            raise ValueError(f"predictor_hidden must be >= 0, got {self.predictor_hidden}")


def sequence_negative_indices(
    key: jax.Array, batch: int, num_anchors: int, step: int, num_negatives: int
) -> jax.Array:
    """`[B, A, M]` time indices of same-exam negatives for anchors t < A predicting t + step.

    Uniform over the A + step − 1 time steps other than t + step (the sequence has
    T = A + step steps), with replacement: draw from T − 1 values and skip the positive.
    """
    length = num_anchors + step
    draws = jax.random.randint(key, (batch, num_anchors, num_negatives), 0, length - 1)
    positive = (jnp.arange(num_anchors) + step)[None, :, None]
    return draws + (draws >= positive)


def cpc_terms(
    predictions_BTKP: jax.Array,
    latents_BTP: jax.Array,
    weight_B: jax.Array,
    steps_ahead: Sequence[int],
    *,
    negatives: str,
    key: jax.Array | None = None,
    num_negatives: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Per exam and step: (mean −log p(positive) `[B, K]`, accuracy `[B, K]`) over anchors.

    `predictions_BTKP[:, t, i]` predicts `latents_BTP[:, t + steps_ahead[i]]`. Rows with
    weight 0 are never candidates ("batch") and their own terms are set to 0.
    """
    predictions_BTKP = predictions_BTKP.astype(jnp.float32)
    latents_BTP = latents_BTP.astype(jnp.float32)
    b, t = latents_BTP.shape[:2]
    if max(steps_ahead) >= t:
        raise ValueError(f"steps_ahead {tuple(steps_ahead)} needs sequences longer than T={t}")
    valid_B = weight_B > 0
    nll, correct = [], []
    for i, step in enumerate(steps_ahead):
        anchors = t - step
        predicted_BAP = predictions_BTKP[:, :anchors, i]
        if negatives == "batch":
            targets_BAP = latents_BTP[:, step:]
            # scores[b, a, c]: exam b's prediction at anchor a against exam c's latent at a + k.
            scores = jnp.einsum("bap,cap->bac", predicted_BAP, targets_BAP)
            scores = jnp.where(valid_B[None, None, :], scores, -jnp.inf)
            positive = jnp.arange(b)[:, None, None]
        elif negatives == "sequence":
            # Every pairing of a prediction with the exam's own latents, then the candidates.
            all_BAT = jnp.einsum("bap,btp->bat", predicted_BAP, latents_BTP)
            index = sequence_negative_indices(
                jax.random.fold_in(key, step), b, anchors, step, num_negatives
            )
            positive_index = (jnp.arange(anchors) + step)[None, :, None]
            index = jnp.concatenate(
                [jnp.broadcast_to(positive_index, (b, anchors, 1)), index], axis=-1
            )
            scores = jnp.take_along_axis(all_BAT, index, axis=-1)
            positive = jnp.zeros((1, 1, 1), jnp.int32)
        else:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
        log_prob = jnp.take_along_axis(
            jax.nn.log_softmax(scores, axis=-1), jnp.broadcast_to(positive, (b, anchors, 1)), -1
        )[..., 0]
        hit = jnp.argmax(scores, axis=-1) == positive[..., 0]
        nll.append(jnp.where(valid_B, -jnp.mean(log_prob, axis=1), 0.0))
        correct.append(jnp.where(valid_B, jnp.mean(hit.astype(jnp.float32), axis=1), 0.0))
    return jnp.stack(nll, axis=1), jnp.stack(correct, axis=1)


class CpcPredictor(nnx.Module):
    """c_t `[B, T, H]` → predictions `[B, T, K, P]`: optional dense + ReLU, then the W_k."""

    def __init__(
        self, context_dim: int, latent_dim: int, num_steps: int, hidden: int, *, rngs: nnx.Rngs
    ):
        self.num_steps, self.latent_dim = num_steps, latent_dim
        self.hidden = (
            nnx.Linear(
                context_dim,
                hidden,
                kernel_metadata={"logical_axes": ("embed", "mlp")},
                bias_metadata={"logical_axes": ("mlp",)},
                rngs=rngs,
            )
            if hidden
            else None
        )
        in_axis = "mlp" if hidden else "embed"
        self.steps = nnx.Linear(
            hidden or context_dim,
            num_steps * latent_dim,
            use_bias=False,
            kernel_metadata={"logical_axes": (in_axis, "embed" if hidden else "mlp")},
            rngs=rngs,
        )

    def __call__(self, context_BTH: jax.Array) -> jax.Array:
        """Float32 predictions of the latents `steps_ahead` ahead."""
        x = context_BTH.astype(jnp.float32)
        if self.hidden is not None:
            x = nnx.relu(self.hidden(x))
        out = self.steps(x)
        return out.reshape(*out.shape[:-1], self.num_steps, self.latent_dim)


class CpcModel(nnx.Module):
    """The S4 encoder (exported and transferred) and the predictor used only in pretraining."""

    def __init__(self, encoder: S4Encoder, predictor: CpcPredictor):
        self.encoder = encoder
        self.predictor = predictor

    def __call__(
        self, signal_BTC: jax.Array, *, train: bool, rngs: nnx.Rngs | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(latents `[B, T, P]`, predictions `[B, T, K, P]`, context features `[B, T, H]`)."""
        latents = self.encoder.latents(signal_BTC, train=train, rngs=rngs)
        context = self.encoder.contextualize(latents, train=train, rngs=rngs)
        return latents, self.predictor(context), context


@dataclasses.dataclass(frozen=True)
class CpcObjective:
    """CPC on the S4 encoder (see the module docstring and `CpcSettings`)."""

    settings: CpcSettings = CpcSettings()
    context: RunContext = NO_CONTEXT

    def build_model(self, model: ModelSpec, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
        """The causal S4 encoder with a stem, and the predictor (`num_classes` is unused)."""
        del num_classes
        if model.name != "s4":
            raise ValueError(
                f"CPC is implemented for the S4 encoder (model.name='s4'), got "
                f"{model.name!r}: its stem gives the latents and its causal S4D stack the context"
            )
        encoder_config = model.hparams
        if encoder_config.bidirectional:
            raise ValueError(
                "CPC needs a causal context network: set model.hparams.bidirectional=False "
                "(a bidirectional S4 sees the latents it is asked to predict)"
            )
        if not encoder_config.stem_widths:
            raise ValueError(
                "CPC predicts the stem's latents: set model.hparams.stem_widths (e.g. "
                "(512, 512, 512, 512), Mehari & Strodthoff's fc encoder)"
            )
        encoder = S4Encoder(encoder_config, rngs=rngs)
        predictor = CpcPredictor(
            encoder_config.width,
            encoder_config.latent_dim,
            len(self.settings.steps_ahead),
            self.settings.predictor_hidden,
            rngs=rngs,
        )
        return CpcModel(encoder, predictor)

    def _terms(
        self,
        model: CpcModel,
        signal_BTC: jax.Array,
        weight_B: jax.Array,
        key: jax.Array,
        *,
        train: bool,
        rngs: nnx.Rngs | None,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        latents, predictions, context = model(signal_BTC, train=train, rngs=rngs)
        nll_BK, correct_BK = cpc_terms(
            predictions,
            latents,
            weight_B,
            self.settings.steps_ahead,
            negatives=self.settings.negatives,
            key=key,
            num_negatives=self.settings.num_negatives,
        )
        return nll_BK, correct_BK, jnp.mean(context, axis=1)

    def _step_metrics(self, correct_BK: jax.Array, weight_B: jax.Array) -> dict[str, jax.Array]:
        count = jnp.maximum(jnp.sum(weight_B), 1.0)
        per_step = jnp.sum(correct_BK * weight_B[:, None], axis=0) / count
        steps = self.settings.steps_ahead
        metrics = {f"accuracy_step{k}": per_step[i] for i, k in enumerate(steps)}
        metrics["accuracy"] = jnp.mean(per_step)
        return metrics

    def loss_fn(
        self, model: nnx.Module, batch: dict[str, jax.Array], rngs: nnx.Rngs, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """InfoNCE over the global batch, with per-step prediction accuracy and embedding std."""
        weight_B = batch["mask"]
        nll_BK, correct_BK, embedding_BD = self._terms(
            model, batch["signal"], weight_B, rngs.augment(), train=train, rngs=rngs
        )
        loss = health.exam_mean(jnp.mean(nll_BK, axis=1), weight_B)
        metrics = {"loss": loss, **self._step_metrics(correct_BK, weight_B)}
        metrics["embedding_std"] = health.embedding_std(embedding_BD, weight_B)
        return loss, metrics

    def eval_outputs(self, model: nnx.Module, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Per-exam loss and accuracy per step (fixed negatives key) and the pooled context."""
        weight_B = batch["mask"]
        nll_BK, correct_BK, embedding_BD = self._terms(
            model, batch["signal"], weight_B, jax.random.key(0), train=False, rngs=None
        )
        outputs = {
            "prediction_loss": jnp.mean(nll_BK, axis=1),
            "embedding": embedding_BD,
            "weight": weight_B,
        }
        for i, k in enumerate(self.settings.steps_ahead):
            outputs[f"accuracy_step{k}"] = correct_BK[:, i]
        return outputs

    def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Held-out InfoNCE, per-step accuracy, embedding std and uniformity."""
        metrics = health.held_out_metrics(outputs)
        weight = outputs["weight"]
        steps = [f"accuracy_step{k}" for k in self.settings.steps_ahead]
        for name in steps:
            metrics[name] = float(np.average(outputs[name], weights=weight))
        metrics["accuracy"] = float(np.mean([metrics[name] for name in steps]))
        return metrics
