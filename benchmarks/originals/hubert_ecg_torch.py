"""HuBERT-ECG: Edoar-do/HuBERT-ECG `hubert_ecg/configuration.py` (`HuBERTECGConfig`,
`HuBERTECGClassificationConfig`), `hubert_ecg/modeling.py` (`HuBERTECG`) and
`hubert_ecg/modeling_classification.py` (`HuBERTECGForClassification`); the backbone is the same
as the Hugging Face remote code `hubert_ecg.py` of the Edoardo-BS/hubert-ecg-{small,base,large}
repositories (and the repository's earlier `code/hubert_ecg.py`). Licence: CC BY-NC 4.0
(README and `pyproject.toml` of Edoar-do/HuBERT-ECG; the Hub model cards say the same).
Test/benchmark code only.

Both models are `transformers.PreTrainedModel`s built on `transformers.HubertModel`, so
`model.save_pretrained(folder)` writes `config.json` + `model.safetensors` the way the published
Hub folders are written (keys: the `HubertModel` keys plus `final_proj.N.*` and
`label_embedding.N.weight` for the backbone; `hubert_ecg.<HubertModel key>` and
`classifier.weight/bias` for the classifier). With torch >= 2.1 transformers registers the
positional convolution's weight norm as `encoder.pos_conv_embed.conv.parametrizations.weight.
original0/original1` (older files: `weight_g/weight_v`).

Edits, none of which touches a parameter name, shape or the eval-mode forward computation:
- `HuBERTECG`: dropped `logits()` (cosine-similarity codebook logits of the pre-training loss),
  `from_pretrained_legacy()` and the helpers `_remap_pos_conv_keys()` / `_upgrade_config()`
  (readers of old `torch.save` checkpoints). `_mask_hidden_states()` is kept because `forward`
  relies on its `(hidden_states, mask_time_indices)` return; it is the identity in eval mode.
- `HuBERTECGForClassification`: dropped the freezing helpers
  (`set_feature_extractor_trainable`, `set_transformer_blocks_trainable`),
  `from_pretrained_legacy()`, and the loss computed in `forward` when `labels` are given (the
  `labels` argument and `SequenceClassifierOutput.loss` are gone; `task_type` stays in the
  config). The two other heads (`classifier_hidden_size` MLP, `use_label_embedding`) are kept.
- `_ActivationFunction` is copied unchanged (it builds the MLP head's activation).

Use: `HuBERTECG(HuBERTECGConfig(...))(x).last_hidden_state` is [B, frames, hidden_size] for
x [B, L]; `HuBERTECGForClassification(HuBERTECGClassificationConfig(...))(x).logits` is
[B, num_labels].
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import HubertConfig, HubertModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput
from transformers.models.hubert.modeling_hubert import _compute_mask_indices

# --------------------------------------------------------------------------------------------
# hubert_ecg/configuration.py
# --------------------------------------------------------------------------------------------


class HuBERTECGConfig(HubertConfig):
    """
    Configuration for HuBERT-ECG backbone (pre-training model).

    Extends :class:`~transformers.HubertConfig` with two extra fields that
    control the ensemble of codebook projection heads used during self-supervised
    pre-training.

    Args:
        ensemble_length: Number of K-means codebooks used in the ensemble.
            Must equal ``len(vocab_sizes)``.
        vocab_sizes: List of codebook sizes (one per ensemble member).
    """

    model_type = "hubert_ecg"

    def __init__(
        self,
        ensemble_length: int = 1,
        vocab_sizes: list[int] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.ensemble_length = ensemble_length
        vocab_sizes = vocab_sizes or [100]
        self.vocab_sizes = vocab_sizes if isinstance(vocab_sizes, list) else [vocab_sizes]
        assert self.ensemble_length == len(self.vocab_sizes), (
            f"ensemble_length {self.ensemble_length} must equal "
            f"len(vocab_sizes) {len(self.vocab_sizes)}"
        )


class HuBERTECGClassificationConfig(HuBERTECGConfig):
    """
    Configuration for HuBERT-ECG fine-tuned for classification or regression.

    Extends :class:`HuBERTECGConfig` with parameters that fully describe the
    classification head, so that :meth:`~transformers.PreTrainedModel.from_pretrained`
    can reconstruct the entire model (backbone + head) from a single config.

    Args:
        num_labels: Number of output classes/labels.
        classifier_hidden_size: Hidden size of the MLP head. ``None`` → linear
            (single-layer) head.
        classifier_dropout_prob: Dropout probability applied before the head.
        activation: Activation function for the MLP head
            (``"tanh"``, ``"relu"``, ``"gelu"``, ``"sigmoid"``).
        use_label_embedding: If ``True``, use a learnable label-embedding
            matrix and predict via cosine similarity instead of a linear layer.
        task_type: One of ``"multi_label"``, ``"multi_class"``, ``"regression"``.
            Determines the loss function used during fine-tuning.
    """

    model_type = "hubert_ecg_classification"

    def __init__(
        self,
        num_labels: int = 2,
        classifier_hidden_size: int | None = None,
        classifier_dropout_prob: float = 0.1,
        activation: str = "tanh",
        use_label_embedding: bool = False,
        task_type: str = "multi_label",
        **kwargs,
    ):
        # Pre-training ensemble heads are irrelevant for classification;
        # set minimal defaults so the parent validates correctly.
        kwargs.setdefault("ensemble_length", 1)
        kwargs.setdefault("vocab_sizes", [100])
        # Disable SpecAugment masking at config level — no mutation at runtime.
        kwargs.setdefault("mask_time_prob", 0.0)
        kwargs.setdefault("mask_feature_prob", 0.0)
        super().__init__(**kwargs)
        self.num_labels = num_labels
        self.classifier_hidden_size = classifier_hidden_size
        self.classifier_dropout_prob = classifier_dropout_prob
        self.activation = activation
        self.use_label_embedding = use_label_embedding
        self.task_type = task_type


# --------------------------------------------------------------------------------------------
# hubert_ecg/modeling.py
# --------------------------------------------------------------------------------------------


class HuBERTECG(HubertModel):
    """
    HuBERT-ECG backbone used during self-supervised pre-training.

    Adds ensemble projection heads (``final_proj``) and codebook embeddings
    (``label_embedding``) on top of the standard :class:`~transformers.HubertModel`.
    These heads are removed and replaced by a classification head in
    :class:`~hubert_ecg.modeling_classification.HuBERTECGForClassification`.
    """

    config_class = HuBERTECGConfig
    base_model_prefix = "hubert_ecg"

    def __init__(self, config: HuBERTECGConfig):
        super().__init__(config)
        self.config = config
        self.pretraining_vocab_sizes = config.vocab_sizes

        assert config.ensemble_length > 0 and config.ensemble_length == len(config.vocab_sizes), (
            f"ensemble_length {config.ensemble_length} must equal "
            f"len(vocab_sizes) {len(config.vocab_sizes)}"
        )

        # Projection layers mapping encoder output into codebook space
        self.final_proj = nn.ModuleList(
            [
                nn.Linear(config.hidden_size, config.classifier_proj_size)
                for _ in range(config.ensemble_length)
            ]
        )

        # Codebook embeddings — one per ensemble member
        self.label_embedding = nn.ModuleList(
            [
                nn.Embedding(vocab_size, config.classifier_proj_size)
                for vocab_size in config.vocab_sizes
            ]
        )

        assert len(self.final_proj) == len(self.label_embedding)

    # ------------------------------------------------------------------
    # Overrides
    # ------------------------------------------------------------------

    def _mask_hidden_states(
        self,
        hidden_states: torch.FloatTensor,
        mask_time_indices: torch.FloatTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
    ):
        """
        Masks extracted features along time and/or feature axes (SpecAugment).
        Overrides the parent to *also* return ``mask_time_indices`` so that the
        pre-training loss can be computed on masked positions only.
        """
        if not getattr(self.config, "apply_spec_augment", True):
            return hidden_states, mask_time_indices

        batch_size, sequence_length, hidden_size = hidden_states.size()

        if mask_time_indices is not None:
            hidden_states[mask_time_indices] = self.masked_spec_embed.to(hidden_states.dtype)
        elif self.config.mask_time_prob > 0 and self.training:
            mask_time_indices = _compute_mask_indices(
                (batch_size, sequence_length),
                mask_prob=self.config.mask_time_prob,
                mask_length=self.config.mask_time_length,
                attention_mask=attention_mask,
                min_masks=self.config.mask_time_min_masks,
            )
            mask_time_indices = torch.tensor(
                mask_time_indices, device=hidden_states.device, dtype=torch.bool
            )
            hidden_states[mask_time_indices] = self.masked_spec_embed.to(hidden_states.dtype)

        if self.config.mask_feature_prob > 0 and self.training:
            mask_feature_indices = _compute_mask_indices(
                (batch_size, hidden_size),
                mask_prob=self.config.mask_feature_prob,
                mask_length=self.config.mask_feature_length,
                min_masks=self.config.mask_feature_min_masks,
            )
            mask_feature_indices = torch.tensor(
                mask_feature_indices, device=hidden_states.device, dtype=torch.bool
            )
            mask_feature_indices = mask_feature_indices[:, None].expand(-1, sequence_length, -1)
            hidden_states[mask_feature_indices] = 0

        return hidden_states, mask_time_indices

    def forward(
        self,
        input_values: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | BaseModelOutput:
        output_attentions = (
            output_attentions if output_attentions is not None else self.config.output_attentions
        )
        output_hidden_states = (
            output_hidden_states
            if output_hidden_states is not None
            else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict

        extract_features = self.feature_extractor(input_values)
        extract_features = extract_features.transpose(1, 2)

        if attention_mask is not None:
            attention_mask = self._get_feature_vector_attention_mask(
                extract_features.shape[1], attention_mask
            )

        hidden_states = self.feature_projection(extract_features)
        hidden_states, mask_time_indices = self._mask_hidden_states(
            hidden_states, mask_time_indices=mask_time_indices
        )

        encoder_outputs = self.encoder(
            hidden_states,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )
        hidden_states = encoder_outputs[0]

        if not return_dict:
            if mask_time_indices is None:
                return (hidden_states,) + encoder_outputs[1:]  # noqa: RUF005
            else:
                return (hidden_states,) + encoder_outputs[1:] + (mask_time_indices,)  # noqa: RUF005

        final_dict = BaseModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )
        if mask_time_indices is not None:
            final_dict["mask_time_indices"] = mask_time_indices

        return final_dict


# --------------------------------------------------------------------------------------------
# hubert_ecg/modeling_classification.py
# --------------------------------------------------------------------------------------------


class _ActivationFunction(nn.Module):
    _MAP = {  # noqa: RUF012 (as in the source)
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "gelu": nn.GELU,
        "sigmoid": nn.Sigmoid,
    }

    def __init__(self, name: str):
        super().__init__()
        if name not in self._MAP:
            raise ValueError(f"Unsupported activation '{name}'. Choose from: {list(self._MAP)}")
        self.act = self._MAP[name]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)


class HuBERTECGForClassification(PreTrainedModel):
    """
    HuBERT-ECG with a classification (or regression) head on top.

    The classification head has three variants controlled by config:

    * ``use_label_embedding=True``  — label-embedding cosine-similarity head
    * ``classifier_hidden_size=None`` — linear head (default)
    * ``classifier_hidden_size=N``  — two-layer MLP head with activation
    """

    config_class = HuBERTECGClassificationConfig
    base_model_prefix = "hubert_ecg"
    # Pre-training-only keys: present in backbone checkpoints but deleted here.
    _keys_to_ignore_on_load_missing = [r"final_proj", r"label_embedding"]  # noqa: RUF012

    def __init__(self, config: HuBERTECGClassificationConfig):
        super().__init__(config)

        # Build backbone; pre-training heads are deleted immediately.
        self.hubert_ecg = HuBERTECG(config)
        del self.hubert_ecg.final_proj
        del self.hubert_ecg.label_embedding

        self.classifier_dropout = nn.Dropout(config.classifier_dropout_prob)
        activation = _ActivationFunction(config.activation)

        if config.use_label_embedding:
            self.label_embedding = nn.Embedding(config.num_labels, config.hidden_size)
            self.classifier = None
        elif config.classifier_hidden_size is None:
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
            self.label_embedding = None
        else:
            self.classifier = nn.Sequential(
                nn.Linear(config.hidden_size, config.classifier_hidden_size),
                activation,
                nn.Linear(config.classifier_hidden_size, config.num_labels),
            )
            self.label_embedding = None

        # Required by PreTrainedModel: initialises weights and applies final
        # processing (tied embeddings, etc.).
        self.post_init()

    def _get_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Compute logits from the pooled encoder representation."""
        if self.config.use_label_embedding:
            return torch.cosine_similarity(
                pooled.unsqueeze(1),
                self.label_embedding.weight.unsqueeze(0),
                dim=-1,
            )
        return self.classifier(pooled)

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput:
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        output_hidden_states = True if self.config.use_weighted_layer_sum else output_hidden_states

        encodings = self.hubert_ecg(
            input_values,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )

        hidden = encodings.last_hidden_state  # (B, T, D)

        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            padding_mask = self.hubert_ecg._get_feature_vector_attention_mask(
                hidden.shape[1], attention_mask
            )
            hidden[~padding_mask] = 0.0
            pooled = hidden.sum(dim=1) / padding_mask.sum(dim=1).view(-1, 1)

        pooled = self.classifier_dropout(pooled)
        logits = self._get_logits(pooled)  # (B, num_labels)

        if not return_dict:
            return (logits,) + (encodings.hidden_states, encodings.attentions)  # noqa: RUF005

        return SequenceClassifierOutput(
            logits=logits,
            hidden_states=encodings.hidden_states,
            attentions=encodings.attentions,
        )
