"""ST-MEM's ViT checkpoint (PyTorch `.pth`), read without torch.

Architecture: `ecgfm.models.st_mem` (bakqui/ST-MEM `models/encoder/st_mem_vit.py`). ST-MEM's
fine-tuning script loads the encoder from `checkpoint["model"]`; a state_dict saved bare, or
under "state_dict", or a whole ST-MEM pretraining model (keys `encoder.*` beside
`decoder*`/`mask_embedding`, which are dropped and listed) is accepted too. Width, depth,
heads (from `to_qkv`: 3·heads·dim_head; `dim_head` 64 as in ST-MEM's ViT-S/B), MLP width,
patch size, leads and `seq_len` are read from the shapes.
"""

from __future__ import annotations

import pathlib
import re

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.interop.base import Imported, sha256
from ecgfm.interop.convert import (
    Entry,
    abstract_classifier,
    fill,
    linear_entries,
    norm_entries,
)
from ecgfm.interop.keys import architecture_key_error
from ecgfm.interop.torch_file import find_state_dict, read_torch_checkpoint

_PRETRAINING_ONLY = ("decoder", "mask_embedding", "decoder_")


def infer_hparams(state: dict, *, dim_head: int = 64) -> dict:
    """ST_MEM_ViT hyperparameters from its state_dict's shapes."""
    width, patch_size = (int(n) for n in state["to_patch_embedding.2.weight"].shape)
    depth = len({m[1] for k in state if (m := re.match(r"block(\d+)\.", k))})
    inner = int(state["block0.attn.fn.to_qkv.weight"].shape[0]) // 3
    if inner % dim_head:
        raise ValueError(f"to_qkv width {inner} is not a multiple of dim_head {dim_head}")
    num_positions = int(state["pos_embedding"].shape[1])
    return {
        "seq_len": (num_positions - 2) * patch_size,
        "patch_size": patch_size,
        "num_leads": len([k for k in state if re.fullmatch(r"lead_embeddings\.\d+", k)]),
        "width": width,
        "depth": depth,
        "mlp_dim": int(state["block0.ff.fn.net.0.weight"].shape[0]),
        "heads": inner // dim_head,
        "dim_head": dim_head,
        "qkv_bias": "block0.attn.fn.to_qkv.bias" in state,
    }


def _entries(hparams: dict, with_head: bool) -> list[Entry]:
    linear, norm = linear_entries, norm_entries
    enc = ("encoder",)
    entries = norm("to_patch_embedding.1", (*enc, "patch_norm"))
    entries += linear("to_patch_embedding.2", (*enc, "patch_embed"))
    entries += norm("to_patch_embedding.3", (*enc, "token_norm"))
    entries += [
        Entry("pos_embedding", ("params", *enc, "pos_embedding"), "squeeze0"),
        Entry("sep_embedding", ("params", *enc, "sep_embedding")),
    ]
    entries += [
        Entry(f"lead_embeddings.{i}", ("params", *enc, "lead_embeddings"), f"row:{i}")
        for i in range(hparams["num_leads"])
    ]
    for i in range(hparams["depth"]):
        key, path = f"block{i}", (*enc, "blocks", i)
        entries += norm(f"{key}.attn.norm", (*path, "attn_norm"))
        entries += linear(f"{key}.attn.fn.to_qkv", (*path, "to_qkv"), hparams["qkv_bias"])
        if not (hparams["heads"] == 1 and hparams["dim_head"] == hparams["width"]):
            entries += linear(f"{key}.attn.fn.to_out.0", (*path, "to_out"))
        entries += norm(f"{key}.ff.norm", (*path, "ff_norm"))
        entries += linear(f"{key}.ff.fn.net.0", (*path, "ff_in"))
        entries += linear(f"{key}.ff.fn.net.3", (*path, "ff_out"))
    entries += norm("norm", (*enc, "norm"))
    return entries + (linear("head", ("head", "dense")) if with_head else [])


def read(src: str | pathlib.Path, *, dim_head: int = 64) -> Imported:
    """An ST-MEM encoder (or fine-tuned classifier) `.pth` checkpoint."""
    src = pathlib.Path(src)
    state = find_state_dict(read_torch_checkpoint(src), ("model", "state_dict"))
    state = {k.removeprefix("module."): v for k, v in state.items()}
    dropped = []
    if any(k.startswith("encoder.") for k in state):  # a whole ST-MEM pretraining model
        dropped = sorted(k for k in state if not k.startswith("encoder."))
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    try:
        hparams = infer_hparams(state, dim_head=dim_head)
    except KeyError as error:
        raise architecture_key_error(
            str(src), error, state, "expected bakqui/ST-MEM st_mem_vit.py ST_MEM_ViT keys"
        ) from None
    with_head = "head.weight" in state
    num_classes = int(state["head.weight"].shape[0]) if with_head else 1
    params, model_state = abstract_classifier("st_mem_vit", hparams, num_classes)
    if not with_head:  # an encoder-only file: no head to fill
        params = {"encoder": params["encoder"]}
    params, model_state = fill(
        state,
        _entries(hparams, with_head),
        params,
        model_state,
        str(src),
        hint="expected bakqui/ST-MEM st_mem_vit.py ST_MEM_ViT keys",
    )
    return Imported(
        model="st_mem_vit",
        hparams=hparams,
        params=params["encoder"],
        model_state=model_state.get("encoder", {}),
        head_params=params["head"] if with_head else None,
        head={
            "num_classes": num_classes,
            "activation": "none",
            "meaning": "the fine-tuned head's logits (ST-MEM's downstream configs use "
            "cross-entropy: apply softmax for multi-class tasks)",
        }
        if with_head
        else None,
        preprocessing=Preprocessing(
            sampling_rate=250,
            num_samples=hparams["seq_len"],
            baseline_cutoff_hz=0.67,
            lowpass_hz=40.0,
            filter_order=5,
            normalization="per_record_standardize",
        ),
        notes=[
            "250 Hz, 2250 samples (9 s), leads I, II, III, aVR, aVL, aVF, V1–V6: ST-MEM "
            "configs/downstream/st_mem.yaml (`fs: 250`, `crop_length: 2250`, `12lead`).",
            "Filters: zero-phase Butterworth high-pass 0.67 Hz then low-pass 40 Hz, order 5 "
            "each (scipy butter + sosfiltfilt): ST-MEM util/transforms.py HighpassFilter / "
            "LowpassFilter. ST-MEM filters each 9 s crop; ecgfm filters the whole record, then "
            "crops (fewer edge transients), and pads the ends as ecgfm does (scipy's default "
            "padding in ST-MEM), so outputs near the crop edges differ slightly.",
            "Normalisation: one mean and standard deviation over all leads and samples "
            "(ST-MEM `Standardize(axis=[-1, -2])`, a zero deviation gives zeros).",
            "Evaluation in ST-MEM: 3 crops of 2250 samples per record (`n_crop`), predictions "
            "averaged; ecgfm's protocol windows the record and aggregates (--aggregation).",
            "The embedding is ST-MEM's `forward_encoding`: the mean of the patch tokens (SEP "
            "tokens removed), layer-normalised.",
        ],
        label_names=[],
        source={
            "format": "st_mem (PyTorch zip checkpoint, read without torch or pickle code)",
            "file": f"{src.name} (sha256 {sha256(src)})",
            "paper": 'Na, Y., Park, M. et al. "Guiding Masked Representation Learning to '
            'Capture Spatio-Temporal Relationship of Electrocardiogram", ICLR 2024',
            "architecture": "bakqui/ST-MEM models/encoder/st_mem_vit.py (ST_MEM_ViT), "
            "models/encoder/vit.py (TransformerBlock)",
            "weights": "linked from the bakqui/ST-MEM README",
        },
        license="MIT (bakqui/ST-MEM, Copyright (c) 2024 Minje Park); check the weights' "
        "download page for theirs",
        title=f"ST-MEM ViT (width {hparams['width']}, depth {hparams['depth']})",
        summary="ST-MEM's spatio-temporal masked-autoencoder ViT encoder, imported from its "
        ".pth checkpoint.",
        objective="self-supervised (ST-MEM masked modelling)"
        + (f", then supervised head ({num_classes} outputs)" if with_head else ""),
        training_data="Chapman, Ningbo and CODE-15% (paper)",
        ignored_keys=dropped,
    )
