"""What fairseq-signals runs for ECG-FM: the `wav2vec2_cmsc` pre-training model in the
ECGTransformer layout and the `ecg_transformer_classifier` fine-tuned model, from
Jwoo5/fairseq-signals (MIT licence, Copyright (c) Facebook, Inc. and its affiliates /
fairseq-signals authors). Test/benchmark code only.

Sources (paths in Jwoo5/fairseq-signals unless said otherwise):
- `fairseq_signals/modules/`: `transpose_last.py` (TransposeLast), `fp32_group_norm.py`
  (Fp32GroupNorm), `same_pad.py` (SamePad), `conv_feature_extraction.py`
  (ConvFeatureExtraction), `conv_positional_encoding.py` (ConvPositionalEncoding),
  `multi_head_attention.py` (MultiHeadAttention, the q/k/v/out_proj version),
  `transformer_encoder_layer.py` (TransformerEncoderLayer, the pre-/post-LN version),
  `transformer_encoder.py` (TransformerEncoder, the version returning {"x", "saliency"}),
  `gumbel_vector_quantizer.py` (GumbelVectorQuantizer), `dropout.py` (Dropout).
  `layer_norm.py` (LayerNorm, Fp32LayerNorm) is imported by `modules/__init__.py` but was not in
  the stored copy; it is fairseq's `fairseq/modules/layer_norm.py` (facebookresearch/fairseq):
  `LayerNorm(shape, eps=1e-5)` is `torch.nn.LayerNorm` (apex's FusedLayerNorm on CUDA, same
  arithmetic).
- `fairseq_signals/models/`: `transformer.py` (TransformerConfig, TransformerModel,
  TransformerFinetuningConfig/Model), `ecg_transformer.py` (ECGTransformerConfig/Model,
  ECGTransformerFinetuningConfig/Model), `wav2vec2/wav2vec2_cmsc.py` (Wav2Vec2CMSCModel),
  `classification/ecg_transformer_classifier.py` (ECGTransformerClassificationModel),
  `pretraining_model.py`, `finetuning_model.py`.
- `fairseq_signals/models/wav2vec2/wav2vec2.py` (Wav2Vec2Config/Model) in its ECGTransformer-based
  form: the stored Jwoo5 copies are the older ConvTransformer-based ones, so the newer file is
  taken from the fork biomed-AI/ECG-LFM (same path), whose `forward` adds `conv_pos` after the
  (optional) masking and before `encoder`, exactly like `ECGTransformerModel.get_embeddings`.
- `fairseq_signals/trainer.py` (`Trainer.state_dict`), `utils/checkpoint_utils.py`
  (`save_checkpoint`: extra_state), `data/iterators.py` (`EpochBatchIterator.state_dict`),
  `optim/adam.py`: the layout that `save_like_fairseq_signals` writes.

Edits (no parameter name, shape or eval-mode forward computation is changed):
- Configs are plain dataclasses holding the fields of the fairseq-signals dataclasses, with their
  defaults; `to_fairseq_dict(cfg, name)` gives the dict `OmegaConf.to_container` would store.
- Pre-training-only code is dropped: masking (`apply_mask`, `compute_mask_indices`), negatives,
  `compute_preds`, `quantize`, `get_logits/get_targets/get_extra_losses/get_features`, the
  quantizer's forward/codebook helpers, `GradMultiply` (identity in the forward pass),
  `GatherLayer` / `all_gather`, LayerDrop (skips layers in training only; its numpy draw is gone),
  `from_pretrained` (checkpoint reading), `set_num_updates`, `upgrade_state_dict_named`.
  `Wav2Vec2Model.forward` keeps only the `mask=False, features_only=True` path (now its defaults;
  the source's are `mask=True, features_only=False`) that `extract_features` takes.
- Return values: `Wav2Vec2Model.forward` / `ECGTransformerModel.forward` return the source's
  dict ({"x", "padding_mask", "features", "saliency"} / {"x", "padding_mask", "saliency"}; the
  ECG-LFM copy of wav2vec2.py has no "saliency", which the newest classifier reads, so it is
  added from the encoder's dict); their `extract_features(source, padding_mask=None)` returns
  only x [B, T', D] (the source: the dict). The classifier's `forward(source, padding_mask=None)`
  returns the logits (the source: {"encoder_out", "padding_mask", "out": logits, "saliency"}) and
  calls `self.encoder(...)`, which is what the source's `encoder.extract_features(...)` runs.
- `ECGTransformerClassificationModel` flattens FinetuningModel / TransformerFinetuningModel /
  ECGTransformerFinetuningModel into one class (same attributes: `encoder`, `final_dropout`,
  `proj`); `build_model(cfg, pretrained_cfg)` replaces reading the pre-trained checkpoint.
- `ConvPositionalEncoding(..., legacy_weight_norm=True)` uses `torch.nn.utils.weight_norm`
  (keys `pos_conv.0.weight_g/weight_v`, which third-party loaders of ECG-FM's
  `mimic_iv_ecg_physionet_pretrained.pt` expect); `legacy_weight_norm=False` uses
  `torch.nn.utils.parametrizations.weight_norm` (keys `pos_conv.0.parametrizations.weight.
  original0/original1`, the stored current source). Both compute w = g * v / ||v|| (dim=2).
- `extractor_mode="layer_norm"`: fairseq-signals writes `Fp32LayerNorm(dim, dim, affine=True)`,
  which raises TypeError with `torch.nn.LayerNorm` (no `affine` argument), so that mode cannot
  run in fairseq-signals; here it is fairseq's `Fp32LayerNorm(dim, elementwise_affine=True)`
  (fairseq `wav2vec2.py`), same parameter names/shapes (`conv_layers.N.2.1.weight/bias`, [dim]).
- `GumbelVectorQuantizer` keeps only `__init__` (its parameters `vars`, `weight_proj`); its
  `activation=nn.GELU()` default argument is `None` -> `nn.GELU()` (same module).
- The ECG-LFM `print(source.shape)` debug line is dropped.

Use:
    cfg = Wav2Vec2CMSCConfig(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
        encoder_attention_heads=2, conv_feature_layers="[(16, 2, 2)] * 4", in_d=12,
        conv_pos=16, conv_pos_groups=4, apply_mask=True, quantize_targets=True, final_dim=8)
    w2v = Wav2Vec2CMSCModel(cfg, legacy_weight_norm=True).eval()
    x = w2v.extract_features(source)            # source [B, in_d, T] -> x [B, T', D]
    ft_cfg = ECGTransformerClassificationConfig(<same architecture fields>, num_labels=5)
    clf = ECGTransformerClassificationModel.build_model(ft_cfg, cfg).eval()
    logits = clf(source)                          # [B, num_labels]
    save_like_fairseq_signals(w2v, "pretrained.pt", to_fairseq_dict(cfg, "wav2vec2_cmsc"))
    save_like_fairseq_signals(clf, "finetuned.pt",
                              to_fairseq_dict(ft_cfg, "ecg_transformer_classifier"))
"""

from __future__ import annotations

import ast
import contextlib
import math
import warnings
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# fairseq_signals/modules
# --------------------------------------------------------------------------------------------


class TransposeLast(nn.Module):
    def __init__(self, deconstruct_idx=None):
        super().__init__()
        self.deconstruct_idx = deconstruct_idx

    def forward(self, x):
        if self.deconstruct_idx is not None:
            x = x[self.deconstruct_idx]
        return x.transpose(-2, -1)


class Fp32GroupNorm(nn.GroupNorm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def forward(self, input):
        output = F.group_norm(
            input.float(),
            self.num_groups,
            self.weight.float() if self.weight is not None else None,
            self.bias.float() if self.bias is not None else None,
            self.eps,
        )
        return output.type_as(input)


def LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, export=False):
    return torch.nn.LayerNorm(normalized_shape, eps, elementwise_affine)


class Fp32LayerNorm(nn.LayerNorm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def forward(self, input):
        output = F.layer_norm(
            input.float(),
            self.normalized_shape,
            self.weight.float() if self.weight is not None else None,
            self.bias.float() if self.bias is not None else None,
            self.eps,
        )
        return output.type_as(input)


class SamePad(nn.Module):
    def __init__(self, kernel_size, causal=False):
        super().__init__()
        if causal:
            self.remove = kernel_size - 1
        else:
            self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x):
        if self.remove > 0:
            x = x[:, :, : -self.remove]
        return x


class Dropout(nn.Module):
    def __init__(self, p, module_name=None):
        super().__init__()
        self.p = p
        self.module_name = module_name
        self.apply_during_inference = False

    def forward(self, x, inplace: bool = False):
        if self.p > 0 and (self.training or self.apply_during_inference):
            return F.dropout(x, p=self.p, training=True, inplace=inplace)
        else:
            return x


class ConvFeatureExtraction(nn.Module):
    def __init__(
        self,
        conv_layers: list[tuple[int, int, int]],
        in_d: int = 1,
        dropout: float = 0.0,
        mode: str = "default",
        conv_bias: bool = False,
    ):
        super().__init__()

        assert mode in {"default", "layer_norm"}

        def block(
            n_in,
            n_out,
            k,
            stride,
            is_layer_norm=False,
            is_group_norm=False,
            conv_bias=False,
        ):
            def make_conv():
                conv = nn.Conv1d(n_in, n_out, k, stride=stride, bias=conv_bias)
                nn.init.kaiming_normal_(conv.weight)
                return conv

            assert not (is_layer_norm and is_group_norm), "layer norm and group norm are exclusive"

            if is_layer_norm:
                return nn.Sequential(
                    make_conv(),
                    nn.Dropout(p=dropout),
                    nn.Sequential(
                        TransposeLast(),
                        # fairseq-signals: Fp32LayerNorm(dim, dim, affine=True), a TypeError
                        Fp32LayerNorm(n_out, elementwise_affine=True),
                        TransposeLast(),
                    ),
                    nn.GELU(),
                )
            elif is_group_norm:
                return nn.Sequential(
                    make_conv(),
                    nn.Dropout(p=dropout),
                    Fp32GroupNorm(n_out, n_out, affine=True),
                    nn.GELU(),
                )
            else:
                return nn.Sequential(make_conv(), nn.Dropout(p=dropout), nn.GELU())

        self.conv_layers = nn.ModuleList()
        for i, cl in enumerate(conv_layers):
            assert len(cl) == 3, "invalid conv definition: " + str(cl)
            (dim, k, stride) = cl

            self.conv_layers.append(
                block(
                    in_d,
                    dim,
                    k,
                    stride,
                    is_layer_norm=mode == "layer_norm",
                    is_group_norm=mode == "default" and i == 0,
                    conv_bias=conv_bias,
                )
            )
            in_d = dim

    def forward(self, x):
        # B x T -> B x C x T
        if len(x.shape) < 3:
            x = x.unsqueeze(1)

        for conv in self.conv_layers:
            x = conv(x)

        return x


class ConvPositionalEncoding(nn.Module):
    def __init__(self, args, legacy_weight_norm: bool = True):
        super().__init__()

        self.embedding_dim = args.encoder_embed_dim

        self.pos_conv = nn.Conv1d(
            self.embedding_dim,
            self.embedding_dim,
            kernel_size=args.conv_pos,
            padding=args.conv_pos // 2,
            groups=args.conv_pos_groups,
        )
        dropout = 0
        std = math.sqrt((4 * (1.0 - dropout)) / (args.conv_pos * self.embedding_dim))
        nn.init.normal_(self.pos_conv.weight, mean=0, std=std)
        nn.init.constant_(self.pos_conv.bias, 0)

        if legacy_weight_norm:  # older fairseq-signals: keys weight_g / weight_v
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.pos_conv = nn.utils.weight_norm(self.pos_conv, name="weight", dim=2)
        else:
            self.pos_conv = nn.utils.parametrizations.weight_norm(
                self.pos_conv, name="weight", dim=2
            )
        self.pos_conv = nn.Sequential(self.pos_conv, SamePad(args.conv_pos), nn.GELU())

    def forward(self, x, channel_first=False):
        if not channel_first:
            x = x.transpose(1, 2)
        x_conv = self.pos_conv(x).transpose(1, 2)

        return x_conv


class MultiHeadAttention(nn.Module):
    def __init__(
        self,
        embed_dim,
        n_heads,
        kdim=None,
        vdim=None,
        dropout=0.0,
        bias=True,
        self_attention=False,
        encoder_decoder_attention=False,
        q_noise=0.0,
        qn_block_size=8,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.qkv_same_dim = self.kdim == embed_dim and self.vdim == embed_dim

        self.n_heads = n_heads
        self.dropout = Dropout(dropout, module_name=self.__class__.__name__)

        self.d_heads = embed_dim // n_heads
        assert self.d_heads * n_heads == self.embed_dim, "embed_dim must be divisible by n_heads"
        self.scaling = self.d_heads**-0.5

        self.self_attention = self_attention
        self.encoder_decoder_attention = encoder_decoder_attention

        assert not self.self_attention or self.qkv_same_dim, (
            "Self-attention requires query, key and value to be of the same size"
        )

        # quant_noise(module, q_noise=0.0, ...) returns the module unchanged
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

        self.reset_parameters()

    def reset_parameters(self):
        if self.qkv_same_dim:
            # Empirically observed the convergence to be much better with
            # the scaled initialization
            nn.init.xavier_uniform_(self.k_proj.weight, gain=1 / math.sqrt(2))
            nn.init.xavier_uniform_(self.v_proj.weight, gain=1 / math.sqrt(2))
            nn.init.xavier_uniform_(self.q_proj.weight, gain=1 / math.sqrt(2))
        else:
            nn.init.xavier_uniform_(self.k_proj.weight)
            nn.init.xavier_uniform_(self.v_proj.weight)
            nn.init.xavier_uniform_(self.q_proj.weight)

        nn.init.xavier_uniform_(self.out_proj.weight)
        if self.out_proj.bias is not None:
            nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None,
        value: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ):
        """Input shape: Time x Batch x Channel"""
        tgt_len, bsz, embed_dim = query.size()  # noqa: RUF059
        src_len = tgt_len
        assert embed_dim == self.embed_dim, f"query dim {embed_dim} != {self.embed_dim}"
        if key is not None:
            src_len, key_bsz, _ = key.size()
            assert value is not None
            assert src_len, key_bsz == value.shape[:2]

        assert key is not None and value is not None

        return F.multi_head_attention_forward(
            query,
            key,
            value,
            self.embed_dim,
            self.n_heads,
            torch.empty([0]),
            torch.cat((self.q_proj.bias, self.k_proj.bias, self.v_proj.bias)),
            None,
            None,
            False,
            self.dropout.p,
            self.out_proj.weight,
            self.out_proj.bias,
            self.training or self.dropout.apply_during_inference,
            key_padding_mask,
            need_weights,
            attn_mask,
            use_separate_proj_weight=True,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
        )


class TransformerEncoderLayer(nn.Module):
    def __init__(
        self,
        embed_dim: float = 768,
        n_heads: float = 12,
        ffn_dim: float = 3072,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.1,
        layer_norm_first: bool = False,
        need_weights: bool = False,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.dropout = dropout
        self.activation_dropout = activation_dropout

        def gelu(x: torch.Tensor) -> torch.Tensor:
            return F.gelu(x.float()).type_as(x)

        self.activation_fn = gelu
        self.self_attn = MultiHeadAttention(
            self.embed_dim,
            n_heads,
            dropout=attention_dropout,
            self_attention=True,
        )

        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(self.activation_dropout)
        self.dropout3 = nn.Dropout(dropout)

        self.layer_norm_first = layer_norm_first

        # layer norm associated with the self attention layer
        self.self_attn_layer_norm = LayerNorm(self.embed_dim)
        self.fc1 = nn.Linear(self.embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, self.embed_dim)

        # layer norm associated with the position wise feed-forward NN
        self.final_layer_norm = LayerNorm(self.embed_dim)

        self.need_weights = need_weights

    def forward(
        self,
        x: torch.Tensor,
        self_attn_mask: torch.Tensor = None,
        self_attn_padding_mask: torch.Tensor = None,
        att_args=None,
    ):
        """
        LayerNorm is applied either before or after the self-attention/ffn
        modules similar to the original Transformer imlementation.
        """
        residual = x

        if self.layer_norm_first:
            x = self.self_attn_layer_norm(x)
            x, attn = self.self_attn(
                query=x,
                key=x,
                value=x,
                key_padding_mask=self_attn_padding_mask,
                attn_mask=self_attn_mask,
                need_weights=self.need_weights,
            )
            x = self.dropout1(x)
            x = residual + x

            residual = x
            x = self.final_layer_norm(x)
            x = self.activation_fn(self.fc1(x))
            x = self.dropout2(x)
            x = self.fc2(x)

            layer_result = x

            x = self.dropout3(x)
            x = residual + x
        else:
            x, attn = self.self_attn(
                query=x,
                key=x,
                value=x,
                key_padding_mask=self_attn_padding_mask,
                attn_mask=self_attn_mask,
                need_weights=self.need_weights,
            )

            x = self.dropout1(x)
            x = residual + x

            x = self.self_attn_layer_norm(x)

            residual = x
            x = self.activation_fn(self.fc1(x))
            x = self.dropout2(x)
            x = self.fc2(x)

            layer_result = x

            x = self.dropout3(x)
            x = residual + x
            x = self.final_layer_norm(x)

        return x, (attn, layer_result)


def init_bert_params(module):
    def normal_(data):
        data.copy_(data.cpu().normal_(mean=0.0, std=0.02).to(data.device))

    if isinstance(module, nn.Linear):
        normal_(module.weight.data)
        if module.bias is not None:
            module.bias.data.zero_()
    if isinstance(module, nn.Embedding):
        normal_(module.weight.data)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    if isinstance(module, MultiHeadAttention):
        normal_(module.q_proj.weight.data)
        normal_(module.k_proj.weight.data)
        normal_(module.v_proj.weight.data)


class TransformerEncoder(nn.Module):
    def __init__(self, args):
        super().__init__()

        self.dropout = args.dropout
        self.embed_dim = args.encoder_embed_dim
        self.need_weights = args.saliency

        self.layers = nn.ModuleList(
            [
                TransformerEncoderLayer(
                    embed_dim=self.embed_dim,
                    ffn_dim=args.encoder_ffn_embed_dim,
                    n_heads=args.encoder_attention_heads,
                    dropout=self.dropout,
                    attention_dropout=args.attention_dropout,
                    activation_dropout=args.activation_dropout,
                    layer_norm_first=args.layer_norm_first,
                    need_weights=self.need_weights,
                )
                for _ in range(args.encoder_layers)
            ]
        )

        self.layer_norm_first = args.layer_norm_first
        self.layer_norm = LayerNorm(self.embed_dim)
        self.layerdrop = args.encoder_layerdrop

        self.apply(init_bert_params)

    def forward(
        self,
        x,
        padding_mask=None,
        attn_mask=None,
    ):
        res = self.extract_features(
            x,
            padding_mask,
            attn_mask,
        )

        if self.layer_norm_first:
            res["x"] = self.layer_norm(res["x"])

        return res

    def extract_features(
        self,
        x,
        padding_mask=None,
        attn_mask=None,
    ):
        if padding_mask is not None:
            x[padding_mask] = 0

        if not self.layer_norm_first:
            x = self.layer_norm(x)

        x = F.dropout(x, p=self.dropout, training=self.training)

        # B x T x C -> T x B x C
        x = x.transpose(0, 1)

        layer_results = []
        attns = []
        for _i, layer in enumerate(self.layers):
            # (LayerDrop: a layer is skipped only in training; numpy draw dropped)
            x, z = layer(
                x,
                self_attn_padding_mask=padding_mask,
                self_attn_mask=attn_mask,
            )
            layer_results.append(x)

            # Extract the attention weights
            if self.need_weights:
                (attn, layer_result) = z  # noqa: RUF059
                attns.append(attn)

        attns = torch.transpose(torch.stack(attns), 0, 1) if self.need_weights else None

        # T x B x C -> B x T x C
        x = x.transpose(0, 1)

        return {"x": x, "saliency": attns}


class GumbelVectorQuantizer(nn.Module):
    """Parameters of fairseq-signals' GumbelVectorQuantizer (its forward is pre-training only)."""

    def __init__(
        self,
        dim,
        num_vars,
        temp,
        groups,
        combine_groups,
        vq_dim,
        time_first,
        activation=None,
        weight_proj_depth=1,
        weight_proj_factor=1,
    ):
        super().__init__()
        activation = nn.GELU() if activation is None else activation

        self.groups = groups
        self.combine_groups = combine_groups
        self.input_dim = dim
        self.num_vars = num_vars
        self.time_first = time_first
        self.num_updates = 0

        assert vq_dim % groups == 0, (
            f"dim {vq_dim} must be divisible by groups {groups} for concatenation"
        )

        var_dim = vq_dim // groups
        num_groups = groups if not combine_groups else 1

        self.vars = nn.Parameter(torch.FloatTensor(1, num_groups * num_vars, var_dim))
        nn.init.uniform_(self.vars)

        if weight_proj_depth > 1:

            def block(input_dim, output_dim):
                return nn.Sequential(nn.Linear(input_dim, output_dim), activation)

            inner_dim = self.input_dim * weight_proj_factor
            self.weight_proj = nn.Sequential(
                *[
                    block(self.input_dim if i == 0 else inner_dim, inner_dim)
                    for i in range(weight_proj_depth - 1)
                ],
                nn.Linear(inner_dim, groups * num_vars),
            )
        else:
            self.weight_proj = nn.Linear(self.input_dim, groups * num_vars)
            nn.init.normal_(self.weight_proj.weight, mean=0, std=1)
            nn.init.zeros_(self.weight_proj.bias)

        if isinstance(temp, str):
            temp = ast.literal_eval(temp)
        assert len(temp) == 3, f"{temp}, {len(temp)}"

        self.max_temp, self.min_temp, self.temp_decay = temp
        self.curr_temp = self.max_temp
        self.codebook_indices = None


# --------------------------------------------------------------------------------------------
# Configs: fields (and defaults) of the fairseq-signals dataclasses
# --------------------------------------------------------------------------------------------


@dataclass
class TransformerConfig:
    # PretrainingConfig (models/pretraining_model.py)
    all_gather: bool = False
    normalize: bool = False  # II("task.normalize")
    filter: bool = False  # II("task.filter")
    data: str = "/path/to/manifest"  # II("task.data")
    args: object = None
    # TransformerConfig (models/transformer.py)
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    layer_norm_first: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    dropout_features: float = 0.0
    apply_mask: bool = False
    mask_length: int = 10
    mask_prob: float = 0.0
    mask_selection: str = "static"
    mask_other: float = 0.0
    no_mask_overlap: bool = False
    mask_min_space: int = 1
    mask_channel_length: int = 10
    mask_channel_prob: float = 0.0
    mask_channel_selection: str = "static"
    mask_channel_other: float = 0.0
    no_mask_channel_overlap: bool = False
    mask_channel_min_space: int = 1
    saliency: bool = False  # newer TransformerConfig: TransformerEncoder need_weights


@dataclass
class ECGTransformerConfig(TransformerConfig):
    extractor_mode: str = "default"
    conv_feature_layers: str = "[(256, 2, 2)] * 4"
    in_d: int = 12
    conv_bias: bool = False
    feature_grad_mult: float = 1.0
    conv_pos: int = 128
    conv_pos_groups: int = 16


@dataclass
class Wav2Vec2Config(ECGTransformerConfig):
    logit_temp: float = 0.1
    quantize_targets: bool = False
    quantize_input: bool = False
    same_quantizer: bool = False
    target_glu: bool = False
    latent_vars: int = 320
    latent_groups: int = 2
    latent_dim: int = 0
    final_dim: int = 0  # must be set (> 0): Wav2Vec2Model uses it as is (ECG-FM: 256)
    num_negatives: int = 100
    negatives_from_everywhere: bool = False
    cross_sample_negatives: int = 0
    codebook_negatives: int = 0
    latent_temp: tuple[float, float, float] = (2, 0.5, 0.999995)


@dataclass
class Wav2Vec2CMSCConfig(Wav2Vec2Config):
    pass


@dataclass
class ECGTransformerClassificationConfig(ECGTransformerConfig):
    # FinetuningConfig (models/finetuning_model.py)
    model_path: str | None = None
    no_pretrained_weights: bool = False
    freeze_finetune_updates: int = 0
    # TransformerFinetuningConfig (models/transformer.py), with its overrides
    final_dropout: float = 0.0
    dropout: float = 0.0
    activation_dropout: float = 0.0
    dropout_input: float = 0.0
    attention_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    # ECGTransformerFinetuningConfig override
    feature_grad_mult: float = 0.0
    # ECGTransformerClassificationConfig
    num_labels: int = 2  # MISSING in the source: must be given


def to_fairseq_dict(cfg, name: str) -> dict:
    """The `cfg["model"]` dict of a fairseq-signals checkpoint: `_name` then every field
    (`OmegaConf.to_container(..., resolve=True, enum_to_str=True)` turns tuples into lists)."""
    out = {"_name": name}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


# --------------------------------------------------------------------------------------------
# fairseq_signals/models
# --------------------------------------------------------------------------------------------


class TransformerModel(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg

        self.mask_prob = cfg.mask_prob
        self.mask_selection = cfg.mask_selection
        self.mask_other = cfg.mask_other
        self.mask_length = cfg.mask_length
        self.no_mask_overlap = cfg.no_mask_overlap
        self.mask_min_space = cfg.mask_min_space

        self.mask_channel_prob = cfg.mask_channel_prob
        self.mask_channel_selection = cfg.mask_channel_selection
        self.mask_channel_other = cfg.mask_channel_other
        self.mask_channel_length = cfg.mask_channel_length
        self.no_mask_channel_overlap = cfg.no_mask_channel_overlap
        self.mask_channel_min_space = cfg.mask_channel_min_space

        if cfg.apply_mask:
            self.mask_emb = nn.Parameter(torch.FloatTensor(cfg.encoder_embed_dim).uniform_())

        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.dropout_features = nn.Dropout(cfg.dropout_features)

        self.num_updates = 0

        self.encoder = TransformerEncoder(cfg)


class ECGTransformerModel(TransformerModel):
    def __init__(self, cfg: ECGTransformerConfig, legacy_weight_norm: bool = True):
        super().__init__(cfg)

        feature_enc_layers = eval(cfg.conv_feature_layers)
        self.embed = feature_enc_layers[-1][0]

        self.feature_extractor = ConvFeatureExtraction(
            conv_layers=feature_enc_layers,
            in_d=cfg.in_d,
            dropout=0.0,
            mode=cfg.extractor_mode,
            conv_bias=cfg.conv_bias,
        )

        self.post_extract_proj = (
            nn.Linear(self.embed, cfg.encoder_embed_dim)
            if self.embed != cfg.encoder_embed_dim
            else None
        )

        self.feature_grad_mult = cfg.feature_grad_mult
        self.conv_pos = ConvPositionalEncoding(cfg, legacy_weight_norm=legacy_weight_norm)
        self.layer_norm = LayerNorm(self.embed)

        self.num_updates = 0

    def _get_feat_extract_output_lengths(self, input_lengths: torch.LongTensor):
        """
        Computes the output length of the convolutional layers
        """

        def _conv_out_length(input_length, kernel_size, stride):
            return torch.floor((input_length - kernel_size) / stride + 1)

        conv_cfg_list = eval(self.cfg.conv_feature_layers)

        for i in range(len(conv_cfg_list)):
            input_lengths = _conv_out_length(
                input_lengths, conv_cfg_list[i][1], conv_cfg_list[i][2]
            )

        return input_lengths.to(torch.long)

    def forward(self, source, padding_mask=None, **kwargs):
        x, padding_mask = self.get_embeddings(source, padding_mask)
        res = self.get_output(x, padding_mask)
        x = res["x"]

        ret = {"x": x, "padding_mask": padding_mask, "saliency": res["saliency"]}

        return ret

    def get_embeddings(self, source, padding_mask):
        if self.feature_grad_mult > 0:
            features = self.feature_extractor(source)
        else:
            with torch.no_grad():
                features = self.feature_extractor(source)

        features = features.transpose(1, 2)
        features = self.layer_norm(features)

        if padding_mask is not None and padding_mask.any():
            input_lengths = (1 - padding_mask.long()).sum(-1)
            if input_lengths.dim() > 1:
                for input_len in input_lengths:
                    assert (input_len == input_len[0]).all()
                input_lengths = input_lengths[:, 0]
            # apply conv formula to get real output_lengths
            output_lengths = self._get_feat_extract_output_lengths(input_lengths)

            padding_mask = torch.zeros(
                features.shape[:2], dtype=features.dtype, device=features.device
            )

            # these two operations makes sure that all values
            # before the output lengths indices are attended to
            padding_mask[
                (
                    torch.arange(padding_mask.shape[0], device=padding_mask.device),
                    output_lengths - 1,
                )
            ] = 1
            padding_mask[torch.where(output_lengths == 0)] = 0
            padding_mask = (1 - padding_mask.flip([-1]).cumsum(-1).flip([-1])).bool()
        else:
            padding_mask = None

        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)

        features = self.dropout_input(features)

        x = features
        x_conv = self.conv_pos(x, channel_first=False)
        x = x + x_conv

        return x, padding_mask

    def get_output(self, x, padding_mask=None):
        res = self.encoder(x, padding_mask=padding_mask)
        return res

    def extract_features(self, source, padding_mask=None):
        res = self.forward(source, padding_mask=padding_mask)
        return res["x"]


class Wav2Vec2Model(ECGTransformerModel):
    def __init__(self, cfg: Wav2Vec2Config, legacy_weight_norm: bool = True):
        super().__init__(cfg, legacy_weight_norm=legacy_weight_norm)
        self.cfg = cfg

        self.quantizer = None
        self.input_quantizer = None

        self.n_negatives = cfg.num_negatives
        self.cross_sample_negatives = cfg.cross_sample_negatives
        self.codebook_negatives = cfg.codebook_negatives
        self.negatives_from_everywhere = cfg.negatives_from_everywhere

        self.logit_temp = cfg.logit_temp

        self.final_dim = cfg.final_dim

        if cfg.quantize_targets:
            vq_dim = cfg.latent_dim if cfg.latent_dim > 0 else self.final_dim
            self.quantizer = GumbelVectorQuantizer(
                dim=self.embed,
                num_vars=cfg.latent_vars,
                temp=cfg.latent_temp,
                groups=cfg.latent_groups,
                combine_groups=False,
                vq_dim=vq_dim,
                time_first=True,
            )
            self.project_q = nn.Linear(vq_dim, self.final_dim)
        else:
            self.project_q = nn.Linear(self.embed, self.final_dim)

        if cfg.quantize_input:
            if cfg.same_quantizer and self.quantizer is not None:
                vq_dim = self.final_dim
                self.input_quantizer = self.quantizer
            else:
                vq_dim = cfg.latent_dim if cfg.latent_dim > 0 else cfg.encoder_embed_dim
                self.input_quantizer = GumbelVectorQuantizer(
                    dim=self.embed,
                    num_vars=cfg.latent_vars,
                    temp=cfg.latent_temp,
                    groups=cfg.latent_groups,
                    combine_groups=False,
                    vq_dim=vq_dim,
                    time_first=True,
                )
            self.project_inp = nn.Linear(vq_dim, cfg.encoder_embed_dim)

        self.target_glu = None
        if cfg.target_glu:
            self.target_glu = nn.Sequential(nn.Linear(self.final_dim, self.final_dim * 2), nn.GLU())

        self.final_proj = nn.Linear(cfg.encoder_embed_dim, self.final_dim)

    def forward(self, source, padding_mask=None, mask=False, features_only=True):
        assert not mask and features_only, "only the extract_features path is kept"
        if self.feature_grad_mult > 0:
            features = self.feature_extractor(source)
        else:
            with torch.no_grad():
                features = self.feature_extractor(source)

        features = features.transpose(1, 2)
        features = self.layer_norm(features)
        unmasked_features = features.clone()

        if padding_mask is not None and padding_mask.any():
            input_lengths = (1 - padding_mask.long()).sum(-1)
            if input_lengths.dim() > 1:
                for input_len in input_lengths:
                    assert (input_len == input_len[0]).all()
                input_lengths = input_lengths[:, 0]
            # apply conv formula to get real output_lengths
            output_lengths = self._get_feat_extract_output_lengths(input_lengths)

            padding_mask = torch.zeros(
                features.shape[:2], dtype=features.dtype, device=features.device
            )

            # these two operations makes sure that all values
            # before the output lengths indices are attended to
            padding_mask[
                (
                    torch.arange(padding_mask.shape[0], device=padding_mask.device),
                    output_lengths - 1,
                )
            ] = 1
            padding_mask = (1 - padding_mask.flip([-1]).cumsum(-1).flip([-1])).bool()
        else:
            padding_mask = None

        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)

        features = self.dropout_input(features)
        unmasked_features = self.dropout_features(unmasked_features)

        if self.input_quantizer:
            raise NotImplementedError("quantize_input: the quantizer's forward is not kept")

        # mask=False
        x = features

        x_conv = self.conv_pos(x, channel_first=False)
        x = x + x_conv

        res = self.encoder(x, padding_mask=padding_mask)
        x = res["x"]

        # features_only=True
        return {
            "x": x,
            "padding_mask": padding_mask,
            "features": unmasked_features,
            "saliency": res["saliency"],
        }

    def extract_features(self, source, padding_mask=None, mask=False):
        res = self.forward(source, padding_mask, mask=mask, features_only=True)
        return res["x"]

    def remove_pretraining_modules(self):
        self.quantizer = None
        self.project_q = None
        self.target_glu = None
        self.final_proj = None


class Wav2Vec2CMSCModel(Wav2Vec2Model):
    def __init__(self, cfg: Wav2Vec2CMSCConfig, legacy_weight_norm: bool = True):
        super().__init__(cfg, legacy_weight_norm=legacy_weight_norm)
        self.cfg = cfg

    def extract_features(self, source, padding_mask=None, mask=False):
        res = super().forward(source, padding_mask, mask=mask, features_only=True)
        return res["x"]


class ECGTransformerClassificationModel(nn.Module):
    """TransformerFinetuningModel -> ECGTransformerFinetuningModel ->
    ECGTransformerClassificationModel, flattened: `encoder` and `proj` are the parameters."""

    def __init__(self, cfg: ECGTransformerClassificationConfig, encoder: nn.Module):
        super().__init__()
        # FinetuningModel
        self.cfg = cfg
        self.encoder = encoder
        # TransformerFinetuningModel
        if not cfg.apply_mask and hasattr(self.encoder, "mask_emb"):
            self.encoder.mask_emb = None

        self.final_dropout = nn.Dropout(cfg.final_dropout)
        self.freeze_finetune_updates = cfg.freeze_finetune_updates
        self.num_updates = 0
        # ECGTransformerClassificationModel
        self.proj = nn.Linear(cfg.encoder_embed_dim, cfg.num_labels)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.constant_(self.proj.bias, 0.0)

    @classmethod
    def build_model(
        cls,
        cfg: ECGTransformerClassificationConfig,
        pretrained_cfg: Wav2Vec2CMSCConfig | None = None,
        legacy_weight_norm: bool = True,
    ):
        """`ECGTransformerFinetuningModel.build_model` without reading a checkpoint: with
        `pretrained_cfg`, the encoder is the pre-training model that `TransformerModel.
        from_pretrained` builds (`task.build_model(args.model)` with the fine-tuning overrides of
        dropout, activation_dropout, dropout_input, attention_dropout, encoder_layerdrop,
        all_gather and feature_grad_mult) after `remove_pretraining_modules()`; without it, a
        plain `ECGTransformerModel(cfg)` (`no_pretrained_weights`)."""
        if pretrained_cfg is not None:
            overrides = {
                "dropout": cfg.dropout,
                "activation_dropout": cfg.activation_dropout,
                "dropout_input": cfg.dropout_input,
                "attention_dropout": cfg.attention_dropout,
                "encoder_layerdrop": cfg.encoder_layerdrop,
                "all_gather": False,
                "feature_grad_mult": cfg.feature_grad_mult,
            }
            args = replace(pretrained_cfg, **overrides)
            encoder = Wav2Vec2CMSCModel(args, legacy_weight_norm=legacy_weight_norm)
            encoder.remove_pretraining_modules()
        else:
            encoder = ECGTransformerModel(cfg, legacy_weight_norm=legacy_weight_norm)
        return cls(cfg, encoder)

    def forward(self, source, padding_mask=None):
        # ECGTransformerFinetuningModel.forward: `self.encoder.extract_features(**args)`, i.e.
        # the encoder's forward dict (Wav2Vec2: mask=False, features_only=True)
        ft = self.freeze_finetune_updates <= self.num_updates
        with torch.no_grad() if not ft else contextlib.ExitStack():
            res = self.encoder(source=source, padding_mask=padding_mask)

        # ECGTransformerClassificationModel.forward
        x = res["x"]
        padding_mask = res["padding_mask"]

        x = self.final_dropout(x)
        if padding_mask is not None and padding_mask.any():
            x[padding_mask] = 0

        x = torch.div(x.sum(dim=1), (x != 0).sum(dim=1))

        x = self.proj(x)

        # the source returns {"encoder_out", "padding_mask", "out": x, "saliency"}
        return x


# --------------------------------------------------------------------------------------------
# fairseq_signals/trainer.py: Trainer.state_dict + checkpoint_utils.save_checkpoint
# --------------------------------------------------------------------------------------------


def save_like_fairseq_signals(
    model: nn.Module,
    path,
    cfg_model: dict,
    *,
    task: dict | None = None,
    criterion_name: str | None = None,
    num_updates: int = 10,
    step_as_tensor: bool = True,
) -> dict:
    """torch.save the dict fairseq-signals' `Trainer.save_checkpoint` writes, for `model`.

    `cfg_model` is the `cfg["model"]` dict (e.g. `to_fairseq_dict(cfg, "wav2vec2_cmsc")`, with
    `_name` and the `conv_feature_layers` string). Only plain containers, numbers, strings, None
    and tensors go in (`OmegaConf.to_container` output), so `torch.load(weights_only=True)` reads
    it. The optimizer state is a small Adam state over the model's parameters (fairseq-signals'
    own Adam keeps `step` as an int; torch's Adam as a tensor: `step_as_tensor`)."""
    name = cfg_model.get("_name", "")
    if criterion_name is None:
        criterion_name = (
            "BinaryCrossEntropyWithLogitsCriterion"
            if "classifier" in name
            else "Wav2Vec2WithCMSCCriterion"
        )
    if task is None:
        task = {
            "_name": "ecg_classification" if "classifier" in name else "ecg_pretraining",
            "data": cfg_model.get("data", "/path/to/manifest"),
            "normalize": bool(cfg_model.get("normalize", False)),
            "filter": bool(cfg_model.get("filter", False)),
            "enable_padding": True,
            "leads_to_load": None,
            "sample_rate": 500,
        }
    cfg = {
        "_name": None,
        "common": {
            "_name": None,
            "no_progress_bar": False,
            "log_interval": 10,
            "log_format": "json",
            "seed": 1,
            "fp16": False,
            "all_gather_list_size": 16384,
        },
        "distributed_training": {"_name": None, "distributed_world_size": 1},
        "dataset": {"_name": None, "num_workers": 6, "max_tokens": None, "batch_size": 64},
        "optimization": {"_name": None, "max_epoch": 200, "max_update": 0, "lr": [5e-05]},
        "checkpoint": {
            "_name": None,
            "save_dir": "checkpoints",
            "restore_file": "checkpoint_last.pt",
            "no_save_optimizer_state": False,
        },
        "model": cfg_model,
        "task": task,
        "criterion": {"_name": "binary_cross_entropy_with_logits"}
        if "classifier" in name
        else {"_name": "wav2vec2_with_cmsc"},
        "optimizer": {
            "_name": "adam",
            "adam_betas": "(0.9, 0.98)",
            "adam_eps": 1e-06,
            "weight_decay": 0.01,
            "use_old_adam": False,
            "lr": [5e-05],
        },
        "lr_scheduler": {"_name": "fixed", "force_anneal": None, "lr_shrink": 0.1, "lr": [5e-05]},
    }

    params = [p for p in model.parameters() if p.requires_grad]
    opt_state = {}
    for i, p in enumerate(params):
        opt_state[i] = {
            "step": torch.tensor(float(num_updates)) if step_as_tensor else num_updates,
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format).detach(),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format).detach(),
        }
    last_optimizer_state = {
        "state": opt_state,
        "param_groups": [
            {
                "lr": 5e-05,
                "betas": (0.9, 0.98),
                "eps": 1e-06,
                "weight_decay": 0.01,
                "amsgrad": False,
                "params": list(range(len(params))),
            }
        ],
    }

    state_dict = {
        "args": None,  # legacy
        "cfg": cfg,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": criterion_name,
                "optimizer_name": "Adam",
                "lr_scheduler_state": {"best": None},
                "num_updates": num_updates,
            }
        ],
        "task_state": {},
        "extra_state": {
            "metrics": {},
            "previous_training_time": 1.0,
            # checkpoint_utils.save_checkpoint: extra_state.update(...)
            "train_iterator": {
                "version": 2,
                "epoch": 1,
                "iterations_in_epoch": num_updates,
                "shuffle": True,
            },
            "val_loss": None,
        },
        "last_optimizer_state": last_optimizer_state,
    }
    torch.save(state_dict, path)
    return state_dict
