"""ECGFounder's Net1D checkpoint (PyTorch `.pth`: `{"state_dict": ...}`), read without torch.

Architecture: `ecgfm.models.net1d` (PKUDigitalHealth/ECGFounder `net1d.py`). Every
hyperparameter but `stride` and `use_bn` is read from the tensor shapes: stem width and kernel
from `first_conv.conv.weight`, each stage's width and block count from its keys, the grouped
convolution's groups from `conv2.conv.weight`, the classes from `dense.weight`.

`use_bn`: ECGFounder's `ft_ECGFounder` builds Net1D with `use_bn=False`, so its BatchNorm
arrays are stored but never applied. When every BatchNorm in the file still holds its
initial values (weight 1, bias 0, running mean 0, variance 1, no batches tracked) BN was never
used in training and is left off; otherwise it is switched on and the model card says so.
Pass `use_bn=True/False` to decide yourself.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np

from ecgfm.data.preprocessing import Preprocessing
from ecgfm.interop.base import Imported, sha256
from ecgfm.interop.convert import Entry, abstract_classifier, fill
from ecgfm.interop.keys import architecture_key_error
from ecgfm.interop.torch_file import find_state_dict, read_torch_checkpoint

_BN_ARRAYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn_keys(state: dict) -> list[str]:
    prefixes = {k.rsplit(".", 1)[0] for k in state if k.endswith(".running_mean")}
    return sorted(f"{p}.{a}" for p in prefixes for a in _BN_ARRAYS if f"{p}.{a}" in state)


def _bn_untouched(state: dict, keys: list[str]) -> bool:
    initial = {
        "weight": 1.0,
        "bias": 0.0,
        "running_mean": 0.0,
        "running_var": 1.0,
        "num_batches_tracked": 0,
    }
    return all(np.all(np.asarray(state[k]) == initial[k.rsplit(".", 1)[1]]) for k in keys)


def infer_hparams(state: dict, *, stride: int = 2) -> tuple[dict, int]:
    """(Net1D hyperparameters, classes) from a Net1D state_dict's keys and shapes."""
    base, num_leads, kernel = (int(n) for n in state["first_conv.conv.weight"].shape)
    blocks: dict[int, set[int]] = {}
    for key in state:
        if m := re.match(r"stage_list\.(\d+)\.block_list\.(\d+)\.", key):
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    stages = sorted(blocks)
    filters = [
        int(state[f"stage_list.{s}.block_list.0.conv3.conv.weight"].shape[0]) for s in stages
    ]
    middle = int(state["stage_list.0.block_list.0.conv1.conv.weight"].shape[0])
    group_in = int(state["stage_list.0.block_list.0.conv2.conv.weight"].shape[1])
    hparams = {
        "num_leads": num_leads,
        "base_filters": base,
        "ratio": middle / filters[0],
        "filter_list": filters,
        "m_blocks_list": [len(blocks[s]) for s in stages],
        "kernel_size": kernel,
        "stride": stride,
        "groups_width": int(filters[0] // (middle // group_in)),
    }
    return hparams, int(state["dense.weight"].shape[0])


def _entries(hparams: dict) -> list[Entry]:
    def conv(key, path):
        return [
            Entry(f"{key}.conv.weight", ("params", *path, "kernel"), "conv"),
            Entry(f"{key}.conv.bias", ("params", *path, "bias")),
        ]

    def dense(key, path):
        return [
            Entry(f"{key}.weight", ("params", *path, "kernel"), "linear"),
            Entry(f"{key}.bias", ("params", *path, "bias")),
        ]

    def bn(key, path):
        return [
            Entry(f"{key}.weight", ("params", *path, "scale")),
            Entry(f"{key}.bias", ("params", *path, "bias")),
            Entry(f"{key}.running_mean", ("model_state", *path, "mean")),
            Entry(f"{key}.running_var", ("model_state", *path, "var")),
        ]

    use_bn = hparams.get("use_bn", False)
    entries = conv("first_conv", ("encoder", "first_conv"))
    if use_bn:
        entries += bn("first_bn", ("encoder", "first_bn"))
    for s, m_blocks in enumerate(hparams["m_blocks_list"]):
        for b in range(m_blocks):
            key, path = f"stage_list.{s}.block_list.{b}", ("encoder", "stages", s, b)
            for i in (1, 2, 3):
                entries += conv(f"{key}.conv{i}", (*path, f"conv{i}"))
                if use_bn and not (i == 1 and s == 0 and b == 0):
                    entries += bn(f"{key}.bn{i}", (*path, f"bn{i}"))
            entries += dense(f"{key}.se_fc1", (*path, "se_fc1"))
            entries += dense(f"{key}.se_fc2", (*path, "se_fc2"))
    return entries + dense("dense", ("head", "dense"))


def read(src: str | pathlib.Path, *, use_bn: bool | None = None, stride: int = 2) -> Imported:
    """An ECGFounder (Net1D) `.pth` checkpoint."""
    src = pathlib.Path(src)
    state = find_state_dict(read_torch_checkpoint(src), ("state_dict", "model"))
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        hparams, num_classes = infer_hparams(state, stride=stride)
    except KeyError as error:
        raise architecture_key_error(
            str(src), error, state, "expected ECGFounder net1d.py Net1D keys"
        ) from None
    bn_keys = _bn_keys(state)
    trained_bn = not _bn_untouched(state, bn_keys)
    hparams["use_bn"] = trained_bn if use_bn is None else use_bn
    params, model_state = abstract_classifier("net1d", hparams, num_classes)
    entries = _entries(hparams)
    used = {e.key for e in entries}
    ignored = [k for k in bn_keys if k not in used]
    params, model_state = fill(
        state,
        entries,
        params,
        model_state,
        str(src),
        ignored=ignored,
        hint="expected ECGFounder net1d.py Net1D keys (first_conv.conv.*, stage_list.*, dense.*)",
    )
    bn_note = (
        "BatchNorm: off (use_bn=False), as ECGFounder's finetune_model.py builds Net1D; the "
        "file's BatchNorm arrays are at their initial values and are ignored."
        if not hparams["use_bn"]
        else "BatchNorm: ON. The file's BatchNorm statistics were trained, so they are applied, "
        "although ECGFounder's finetune_model.py builds Net1D with use_bn=False: check which "
        "your copy of the code does (ecgfm import ... --use-bn false to switch it off)."
    )
    leads = "12 leads" if hparams["num_leads"] == 12 else f"{hparams['num_leads']} lead(s)"
    return Imported(
        model="net1d",
        hparams=hparams,
        params=params["encoder"],
        model_state=model_state.get("encoder", {}),
        head_params=params["head"],
        head={
            "num_classes": num_classes,
            "activation": "sigmoid",
            "meaning": f"ECGFounder's {num_classes} label probabilities (multi-label, sigmoid); "
            "the label list is not part of the checkpoint (see the ECGFounder repository)",
        },
        preprocessing=Preprocessing(
            sampling_rate=500,
            num_samples=5000,
            leads=("I",) if hparams["num_leads"] == 1 else Preprocessing(500).leads,
            normalization="per_record_standardize",
        ),
        notes=[
            "500 Hz, 10 s (5000 samples), leads I, II, III, aVR, aVL, aVF, V1–V6 (MIMIC-IV-ECG "
            "files store aVF before aVL; ECGFounder's dataset.py reorders them to this order).",
            "Normalisation: one mean and standard deviation over all leads and samples of the "
            "record, (x − mean) / (std + 1e-8), after NaN → 0: ECGFounder dataset.py "
            "`z_score_normalization` (ecgfm: per_record_standardize, ε 1e-6 as a floor).",
            "No filter is applied in ECGFounder's dataset.py; the paper's pipeline may differ.",
            bn_note,
        ],
        label_names=[],
        source={
            "format": "ecgfounder (PyTorch zip checkpoint, read without torch or pickle code)",
            "file": f"{src.name} (sha256 {sha256(src)})",
            "paper": 'Li, J. et al. "An Electrocardiogram Foundation Model Built on over 10 '
            'Million Recordings with External Evaluation across Multiple Domains", NEJM AI '
            "(2025), arXiv:2410.04133",
            "architecture": "PKUDigitalHealth/ECGFounder net1d.py (Net1D) and "
            "finetune_model.py (ft_ECGFounder); hsd1503/resnet1d net1d.py",
            "weights": "https://huggingface.co/PKUDigitalHealth/ECGFounder (as the "
            "repository's README links them)",
        },
        license="see the ECGFounder repository and its Hugging Face model page: their terms "
        "apply to the weights (not stated inside the checkpoint)",
        title=f"ECGFounder Net1D ({leads}, {num_classes} labels)",
        summary="ECGFounder's Net1D encoder (squeeze-excitation bottleneck ResNet, Swish), "
        "pretrained on Harvard-Emory ECG Database labels, imported from its .pth checkpoint.",
        objective=f"supervised, {num_classes} labels (sigmoid)",
        training_data="Harvard-Emory ECG Database, over 10 million ECGs (paper)",
        ignored_keys=ignored,
    )
