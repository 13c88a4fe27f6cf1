"""Ribeiro et al. 2020's ResNet: the Keras `model.hdf5` and the PyTorch port's `model.pth`.

Keras: antonior92/automatic-ecg-diagnosis `model.py` (MIT licence), weights on Zenodo
(doi:10.5281/zenodo.3625017), saved by Keras 2 as a whole model (`model_config` JSON +
`model_weights/<layer>/<layer>/<weight>:0`). The file is read with h5py, never with Keras:
the graph in `model_config` says which convolution is which (layer names depend on the Keras
version and session, so they are not trusted), and every hyperparameter (kernel size, widths,
downsampling, dropout, BatchNorm ε and momentum, input length) is read from it.

PyTorch: antonior92/ecg-age-prediction `resnet.py` (`ResNet1d`, MIT licence), the same
authors' port, trained for age; `train.py` saves `{"epoch", "model": state_dict,
"valid_loss", "optimizer"}` to `model.pth` and its arguments to `config.json` beside it.
"""

from __future__ import annotations

import itertools
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np

from ecgfm.data.preprocessing import CODE_400HZ, Preprocessing
from ecgfm.interop.base import Imported, sha256
from ecgfm.interop.convert import Entry, abstract_classifier, fill
from ecgfm.interop.keys import architecture_key_error
from ecgfm.interop.torch_file import find_state_dict, read_torch_checkpoint

CODE_LABELS = ["1dAVb", "RBBB", "LBBB", "SB", "AF", "ST"]
_PAPER = (
    'Ribeiro, A.H. et al. "Automatic diagnosis of the 12-lead ECG using a deep neural network", '
    "Nat. Commun. 11, 1760 (2020), doi:10.1038/s41467-020-15432-4"
)
_CODE_INPUT = [
    "400 Hz, 4096 samples (about 10 s; shorter exams zero-padded, centred, to 4096), leads "
    "I, II, III, aVR, aVL, aVF, V1–V6, no filtering or normalisation: the README of "
    "antonior92/automatic-ecg-diagnosis ('Model' section) and CODE's HDF5 `tracings`.",
    "Units: the README says '1e-4 V … if the signal is in V it should be multiplied by 1000', "
    "i.e. the CODE HDF5 tracings as stored; ecgfm reads those as millivolts (see the ecgfm "
    "README, 'Where the documentation and the files disagree'), so feed millivolts.",
]


# --------------------------------------------------------------------------------- Keras


def _inbound_names(node: Any) -> Iterator[str]:
    """Layer names a Keras 2 or Keras 3 `inbound_nodes` entry refers to."""
    if isinstance(node, dict):
        if "keras_history" in node.get("config", {}):  # Keras 3
            yield node["config"]["keras_history"][0]
            return
        for value in node.values():
            yield from _inbound_names(value)
    elif isinstance(node, list):
        if node and isinstance(node[0], str) and len(node) >= 3:  # Keras 2: [name, i, j, {}]
            yield node[0]
            return
        for value in node:
            yield from _inbound_names(value)


class _Graph:
    def __init__(self, model_config: dict):
        layers = model_config["config"]["layers"]
        self.layers = {layer["name"]: layer for layer in layers}
        self.inbound = {
            layer["name"]: list(dict.fromkeys(_inbound_names(layer.get("inbound_nodes", []))))
            for layer in layers
        }
        self._depth: dict[str, int] = {}

    def cls(self, name: str) -> str:
        return self.layers[name]["class_name"]

    def config(self, name: str) -> dict:
        return self.layers[name]["config"]

    def depth(self, name: str) -> int:
        if name not in self._depth:
            self._depth[name] = 1 + max((self.depth(i) for i in self.inbound[name]), default=0)
        return self._depth[name]

    def of_class(self, cls: str) -> list[str]:
        return sorted((n for n in self.layers if self.cls(n) == cls), key=self.depth)

    def back(self, name: str) -> str:
        """The first layer before `name` that is not Dropout or Activation."""
        (name,) = self.inbound[name]
        while self.cls(name) in ("Dropout", "Activation"):
            (name,) = self.inbound[name]
        return name

    def consumers(self, name: str) -> list[str]:
        return [n for n, ins in self.inbound.items() if name in ins]


def _keras_weights(group: h5py.Group, layer: str) -> dict[str, np.ndarray]:
    """`{"<layer>/<weight>": array}` of one layer (weight = kernel, gamma, moving_mean, …)."""
    out = {}
    g = group[layer]
    for raw in g.attrs.get("weight_names", []):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        short = name.split("/")[-1].split(":")[0]
        out[f"{layer}/{short}"] = np.asarray(g[name])
    return out


def _keras_architecture(graph: _Graph) -> tuple[dict, list[tuple[str, str]], dict]:
    """(hparams, [(ecgfm path prefix, keras layer)], facts) from the model graph."""
    inputs = graph.of_class("InputLayer")
    if len(inputs) != 1:
        raise ValueError(f"expected one input layer, found {inputs}")
    in_config = graph.config(inputs[0])
    shape = in_config.get("batch_input_shape") or in_config.get("batch_shape")
    stem = [c for c in graph.of_class("Conv1D") if graph.inbound[c] == inputs]
    if len(stem) != 1:
        raise ValueError(f"expected one convolution reading the input, found {stem}")
    stem = stem[0]
    stem_bn = [n for n in graph.consumers(stem) if graph.cls(n) == "BatchNormalization"]
    layers = [("stem_conv", stem), ("stem_bn", stem_bn[0])]
    widths = [graph.config(stem)["filters"]]
    downsample, dropout = [], 0.0
    for i, add in enumerate(graph.of_class("Add")):
        ins = graph.inbound[add]
        main = [
            n
            for n in ins
            if graph.cls(n) == "Conv1D"
            and graph.back(n) != n
            and graph.cls(graph.back(n)) == "BatchNormalization"
        ]
        if len(main) != 1 or len(ins) != 2:
            raise ValueError(f"residual sum {add}: cannot tell the main path from the skip")
        conv2 = main[0]
        bn1 = graph.back(conv2)
        conv1 = graph.inbound[bn1][0]
        (skip,) = [n for n in ins if n != conv2]
        (bn2,) = [n for n in graph.consumers(add) if graph.cls(n) == "BatchNormalization"]
        prefix = f"units/{i}"
        layers += [
            (f"{prefix}/conv1", conv1),
            (f"{prefix}/bn1", bn1),
            (f"{prefix}/conv2", conv2),
            (f"{prefix}/bn2", bn2),
        ]
        if graph.cls(skip) == "Conv1D":
            layers.append((f"{prefix}/skip_conv", skip))
        widths.append(graph.config(conv2)["filters"])
        downsample.append(_first(graph.config(conv2)["strides"]))
        drops = [n for n in graph.consumers(bn1)[:1] for n in graph.consumers(n)]
        dropout = next((graph.config(n)["rate"] for n in drops if graph.cls(n) == "Dropout"), 0)
    if len(set(downsample)) != 1:
        raise ValueError(f"units downsample by different factors {downsample}")
    dense = graph.of_class("Dense")
    if len(dense) != 1:
        raise ValueError(f"expected one Dense layer, found {dense}")
    layers.append(("head/dense", dense[0]))
    bn = graph.config(stem_bn[0])
    hparams = {
        "widths": widths,
        "downsample": downsample[0],
        "kernel_size": _first(graph.config(stem)["kernel_size"]),
        "dropout": float(dropout),
        "input_length": int(shape[1]),
        "num_leads": int(shape[2]),
        "bn_momentum": float(bn["momentum"]),
        "bn_epsilon": float(bn["epsilon"]),
    }
    dense_config = graph.config(dense[0])
    facts = {"num_classes": dense_config["units"], "activation": dense_config["activation"]}
    return hparams, layers, facts


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, list | tuple) else value)


_KERAS_WEIGHTS = {
    "conv": [("kernel", "kernel")],
    "bn": [
        ("gamma", "scale"),
        ("beta", "bias"),
        ("moving_mean", "mean"),
        ("moving_variance", "var"),
    ],
    "dense": [("kernel", "kernel"), ("bias", "bias")],
}


def _entries_keras(layers: list[tuple[str, str]]) -> list[Entry]:
    entries = []
    for prefix, layer in layers:
        parts = [int(p) if p.isdigit() else p for p in prefix.split("/")]
        part, name = ("head", parts[1:]) if parts[0] == "head" else ("encoder", parts)
        kind = "bn" if "bn" in str(name[-1]) else "dense" if name[-1] == "dense" else "conv"
        for keras_name, ecgfm_name in _KERAS_WEIGHTS[kind]:
            tree = "model_state" if ecgfm_name in ("mean", "var") else "params"
            entries.append(Entry(f"{layer}/{keras_name}", (tree, part, *name, ecgfm_name)))
    return entries


def read_keras(src: str | pathlib.Path) -> Imported:
    """The Keras `model.hdf5` of automatic-ecg-diagnosis (or any model of `model.py`)."""
    src = pathlib.Path(src)
    with h5py.File(src, "r") as f:
        if "model_config" not in f.attrs:
            raise ValueError(
                f"{src}: no `model_config` attribute: not a whole Keras model saved to HDF5 "
                "(weights-only files do not say which layer is which)"
            )
        raw = f.attrs["model_config"]
        model_config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        keras_version = f.attrs.get("keras_version", b"?")
        keras_version = (
            keras_version.decode() if isinstance(keras_version, bytes) else keras_version
        )
        group = f.get("model_weights", f)
        graph = _Graph(model_config)
        hparams, layers, facts = _keras_architecture(graph)
        state = {}
        for name in group:
            if isinstance(group[name], h5py.Group):
                state |= _keras_weights(group, name)
    params, model_state = abstract_classifier("ribeiro_resnet", hparams, facts["num_classes"])
    params, model_state = fill(state, _entries_keras(layers), params, model_state, str(src))
    num_classes = facts["num_classes"]
    return Imported(
        model="ribeiro_resnet",
        hparams=hparams,
        params=params["encoder"],
        model_state=model_state["encoder"],
        head_params=params["head"],
        head={
            "num_classes": num_classes,
            "activation": facts["activation"],
            "meaning": "probabilities of " + ", ".join(CODE_LABELS)
            if num_classes == 6
            else "the original Dense layer's outputs",
        },
        preprocessing=Preprocessing(
            sampling_rate=400, num_samples=hparams["input_length"], leads=CODE_400HZ.leads
        ),
        notes=list(_CODE_INPUT),
        label_names=list(CODE_LABELS) if num_classes == 6 else [],
        source={
            "format": f"ribeiro_keras (Keras {keras_version} HDF5, read with h5py)",
            "file": f"{src.name} (sha256 {sha256(src)})",
            "paper": _PAPER,
            "architecture": "antonior92/automatic-ecg-diagnosis model.py",
            "weights": "https://doi.org/10.5281/zenodo.3625017",
        },
        license="MIT (antonior92/automatic-ecg-diagnosis code); check the Zenodo record "
        "(doi:10.5281/zenodo.3625017) for the weights' terms",
        title="Ribeiro et al. 2020 ResNet (CODE, 6 abnormalities)",
        summary="The residual network of Ribeiro et al. 2020, trained on CODE (2.3 M exams, "
        "Brazil) to detect 6 ECG abnormalities, imported from its Keras release.",
        objective="supervised, 6 abnormalities (sigmoid)",
        training_data="CODE (Telehealth Network of Minas Gerais), 2,322,513 ECGs of 1,676,384 "
        "patients, 400 Hz (paper); not public",
    )


# ------------------------------------------------------------------------------- PyTorch


def _torch_hparams(state: dict, config: dict) -> tuple[dict, int]:
    """ResNet1d's hyperparameters from its keys/shapes and the run's config.json.

    ResNet1d builds one residual block per `blocks_dim` entry, the first from the stem's width
    to itself, so the default run has 5 blocks (64→64 at full length, then ×4 downsampling)
    where the Keras original has 4 units.
    """
    kernel_size = int(state["conv1.weight"].shape[2])
    num_units = len({k.split(".")[0] for k in state if k.startswith("resblock1d_")})
    widths = [int(state["conv1.weight"].shape[0])]
    widths += [int(state[f"resblock1d_{i}.conv1.weight"].shape[0]) for i in range(num_units)]
    num_classes, flat = (int(n) for n in state["lin.weight"].shape)
    seq_lengths = [int(n) for n in config.get("net_seq_lengh", [4096, 1024, 256, 64, 16])]
    input_length = int(config.get("seq_length", 4096))
    if len(seq_lengths) != num_units or seq_lengths[-1] * widths[-1] != flat:
        raise ValueError(
            f"the file has {num_units} residual blocks and lin.weight reads {flat} features; "
            f"net_seq_lengh {seq_lengths} does not fit them: pass the run's config.json"
        )
    if seq_lengths[0] != input_length:
        raise ValueError(
            "a stem that downsamples (seq_length != net_seq_lengh[0]) is not supported"
        )
    lengths = [input_length, *seq_lengths]
    hparams = {
        "widths": widths,
        "downsample": [a // b for a, b in itertools.pairwise(lengths)],
        "kernel_size": kernel_size,
        "dropout": float(config.get("dropout_rate", 0.8)),
        "input_length": input_length,
        "num_leads": int(state["conv1.weight"].shape[1]),
        "bn_momentum": 0.9,
        "bn_epsilon": 1e-5,
        "padding": "symmetric",
        "stem_activation": False,
    }
    return hparams, num_classes


def _bn(key: str, path: tuple) -> list[Entry]:
    return [
        Entry(f"{key}.weight", ("params", *path, "scale")),
        Entry(f"{key}.bias", ("params", *path, "bias")),
        Entry(f"{key}.running_mean", ("model_state", *path, "mean")),
        Entry(f"{key}.running_var", ("model_state", *path, "var")),
    ]


def _entries_torch(hparams: dict) -> list[Entry]:
    entries = [Entry("conv1.weight", ("params", "encoder", "stem_conv", "kernel"), "conv")]
    entries += _bn("bn1", ("encoder", "stem_bn"))
    widths = hparams["widths"]
    for i in range(len(widths) - 1):
        unit, key = ("encoder", "units", i), f"resblock1d_{i}"
        entries += [
            Entry(f"{key}.conv1.weight", ("params", *unit, "conv1", "kernel"), "conv"),
            Entry(f"{key}.conv2.weight", ("params", *unit, "conv2", "kernel"), "conv"),
        ]
        entries += _bn(f"{key}.bn1", (*unit, "bn1")) + _bn(f"{key}.bn2", (*unit, "bn2"))
        if widths[i] != widths[i + 1]:
            index = 1 if hparams["downsample"][i] > 1 else 0  # Sequential(maxpool?, conv1x1)
            skip = f"{key}.skip_connection.{index}.weight"
            entries.append(Entry(skip, ("params", *unit, "skip_conv", "kernel"), "conv"))
    entries += [
        Entry("lin.weight", ("params", "head", "dense", "kernel"), "flatten_ct"),
        Entry("lin.bias", ("params", "head", "dense", "bias")),
    ]
    return entries


def read_torch(src: str | pathlib.Path, config: str | pathlib.Path | None = None) -> Imported:
    """ecg-age-prediction's `model.pth` (a folder holding it and `config.json` also works)."""
    src = pathlib.Path(src)
    if src.is_dir():
        config = config or (src / "config.json" if (src / "config.json").is_file() else None)
        src = src / "model.pth"
    run_config = json.loads(pathlib.Path(config).read_text()) if config else {}
    state = find_state_dict(read_torch_checkpoint(src), ("model", "state_dict"))
    try:
        hparams, num_classes = _torch_hparams(state, run_config)
    except KeyError as error:
        raise architecture_key_error(
            str(src), error, state, "expected antonior92/ecg-age-prediction resnet.py ResNet1d keys"
        ) from None
    params, model_state = abstract_classifier("ribeiro_resnet", hparams, num_classes)
    ignored = [k for k in state if k.endswith("num_batches_tracked")]
    params, model_state = fill(
        state,
        _entries_torch(hparams),
        params,
        model_state,
        str(src),
        ignored=ignored,
        flatten_width=hparams["widths"][-1],
        hint="expected antonior92/ecg-age-prediction resnet.py ResNet1d keys",
    )
    return Imported(
        model="ribeiro_resnet",
        hparams=hparams,
        params=params["encoder"],
        model_state=model_state["encoder"],
        head_params=params["head"],
        head={
            "num_classes": num_classes,
            "activation": "none",
            "meaning": "predicted age in years" if num_classes == 1 else "lin outputs",
        },
        preprocessing=Preprocessing(
            sampling_rate=int(run_config.get("sample_freq", 400)),
            num_samples=hparams["input_length"],
        ),
        notes=[
            *_CODE_INPUT,
            "ecg-age-prediction's train.py has a `--scale_multiplier` argument (default 10) "
            "that its train.py and evaluate.py never apply: traces go in as stored, and so "
            "here.",
        ],
        label_names=["age"] if num_classes == 1 else [],
        source={
            "format": "ribeiro_torch (PyTorch zip checkpoint, read without torch or pickle code)",
            "file": f"{src.name} (sha256 {sha256(src)})",
            "paper": 'Lima, E.M. et al. "Deep neural network-estimated electrocardiographic age '
            'as a mortality predictor", Nat. Commun. 12, 5117 (2021); ' + _PAPER,
            "architecture": "antonior92/ecg-age-prediction resnet.py (ResNet1d)",
            "weights": "https://doi.org/10.5281/zenodo.4892365 (as the repository's README "
            "links them)",
        },
        license="MIT (antonior92/ecg-age-prediction code); check the weights' record for theirs",
        title="Ribeiro/Lima ResNet, PyTorch port (ECG age)",
        summary="The Ribeiro et al. ResNet as ported to PyTorch in ecg-age-prediction "
        "(odd kernel, symmetric padding, no ReLU after the stem), imported from its state_dict.",
        objective="supervised regression of age" if num_classes == 1 else "supervised",
        training_data="CODE-15% / CODE (age), per the paper",
        ignored_keys=ignored,
    )
