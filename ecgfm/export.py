"""Shareable encoders: `export_encoder` writes one, `load_encoder` gives back a callable.

An exported encoder directory holds `encoder/` (Orbax arrays: parameters and batch statistics,
no pickle, no head), `ecgfm_encoder.json` (model family and hyperparameters, the preprocessing
spec, label vocabulary, training data summary) and a model card `README.md`.

Reading one checks it before anything is served (`read_spec`, `load_encoder`): a known
`format_version`, a preprocessing spec (the input contract that every call is checked
against), a known model family whose hyperparameters build, weights that read onto that
architecture and are finite. Each failure is an `EncoderFormatError` naming the folder and the
problem; a folder that is no encoder at all is an `EncoderNotFoundError`.
"""

from __future__ import annotations

import functools
import json
import pathlib
import shutil
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from ecgfm import checkpoint, models
from ecgfm.config import ConfigError
from ecgfm.data.preprocessing import Preprocessing
from ecgfm.encoder import Encoder  # the loaded-encoder type (also `ecgfm.export.Encoder`)
from ecgfm.experiment import Experiment
from ecgfm.interop.keys import CheckpointKeyError, check_state_dict

SPEC_FILE = "ecgfm_encoder.json"
FORMAT_VERSION = 1
READABLE_FORMAT_VERSIONS = (1,)  # what `read_spec` accepts
LAYOUTS = ("orbax", "safetensors")
HF_CONFIG, HF_WEIGHTS = "config.json", "model.safetensors"


class EncoderFormatError(ValueError):
    """An encoder folder that cannot be used as it is; the message names it and the problem."""

    def __init__(self, path: str | pathlib.Path, problem: str):
        self.path, self.problem = pathlib.Path(path), problem
        super().__init__(f"{path}: {problem}")


class EncoderNotFoundError(EncoderFormatError, FileNotFoundError):
    """The folder is missing, or holds no encoder (no spec file)."""


def _on_one_device(tree: Any) -> Any:
    """`tree`'s abstract leaves, all placed whole on this process's first device."""
    device = jax.local_devices()[0]
    sharding = NamedSharding(jax.make_mesh((1,), ("data",), devices=[device]), PartitionSpec())
    return checkpoint.abstract_like(tree, jax.tree.map(lambda _: sharding, tree))


def _abstract_encoder(exp: Experiment, num_classes: int) -> dict[str, Any]:
    """Abstract `{"params", "model_state"}` of the encoder of the model `exp` trains."""
    model = nnx.eval_shape(
        lambda: exp.objective.build_model(exp.model, num_classes, nnx.Rngs(params=0))
    )
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    return {
        "params": nnx.to_pure_dict(params)["encoder"],
        "model_state": nnx.to_pure_dict(model_state).get("encoder", {}),
    }


def export_encoder(
    workdir: str | pathlib.Path, out_dir: str | pathlib.Path, *, layout: str = "orbax"
) -> pathlib.Path:
    """Write the latest checkpoint's encoder (head dropped) with its spec and model card.

    `layout`: "orbax" (`encoder/` arrays + `ecgfm_encoder.json`) or "safetensors" (the Hugging
    Face layout); see `write_encoder`.

    Only the encoder's arrays and the step are read from the checkpoint (not the head or the
    optimizer's moments), onto this process's first device.
    """

    workdir, out_dir = pathlib.Path(workdir), pathlib.Path(out_dir)
    run_files = [workdir / "config.json", workdir / "data_spec.json"]
    if not workdir.is_dir() or not all(f.is_file() for f in run_files):
        raise checkpoint.NoCheckpointError(
            f"{workdir} is not the workdir of a training run that has started (no "
            f"{'folder' if not workdir.is_dir() else 'config.json and data_spec.json'}); "
            "train first: ecgfm pretrain --config CONFIG --workdir WORKDIR"
        )
    try:
        config = ConfigDict(json.loads(run_files[0].read_text()))
        data_spec = json.loads(run_files[1].read_text())
    except ValueError as err:
        raise ConfigError(f"{workdir}: config.json or data_spec.json is not JSON ({err})") from None
    exp = Experiment.from_config(config)
    encoder = _abstract_encoder(exp, len(data_spec["label_names"]))
    target = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": {"encoder": encoder["params"]},
    }
    if jax.tree.leaves(encoder["model_state"]):
        target["model_state"] = {"encoder": encoder["model_state"]}
    try:
        # The newest step that reads back as saved (checksums) and finite; damaged ones skipped.
        state = checkpoint.restore_state(
            workdir / checkpoint.CHECKPOINT_DIR, _on_one_device(target), partial=True
        )
    except checkpoint.NoCheckpointError:
        raise checkpoint.NoCheckpointError(
            f"{workdir} holds no finished checkpoint yet (train longer, or until the first "
            "train.checkpoint_every step), so there is nothing to export"
        ) from None
    spec = {
        "format_version": FORMAT_VERSION,
        **exp.model.to_dict(),
        "preprocessing": data_spec["preprocessing"],
        "label_names": data_spec["label_names"],
        "training_data": {
            **data_spec.get("data", {"source": exp.data.source}),
            "num_train_exams": data_spec.get("num_train_exams"),
            "num_val_exams": data_spec.get("num_val_exams"),
        },
        "trained_steps": int(state["step"]),
        "objective": exp.objective_name,
    }
    params = state["params"]["encoder"]
    model_state = state.get("model_state", {}).get("encoder", encoder["model_state"])
    return write_encoder(out_dir, params, model_state, spec, layout=layout)


def _save_replacing(path: pathlib.Path, tree: Any) -> None:
    # Orbax refuses an existing destination: write beside the old arrays, then swap, so that
    # exporting again (after more training, or a rerun of the demo) replaces them.
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    checkpoint.save_tree(partial, tree)
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)


def write_encoder(
    out_dir: str | pathlib.Path,
    params: Any,
    model_state: Any,
    spec: dict,
    *,
    head_params: Any = None,
    layout: str = "orbax",
) -> pathlib.Path:
    """Write an encoder folder: `encoder/` arrays, `ecgfm_encoder.json` and the model card.

    `layout="safetensors"` writes the Hugging Face layout instead (`config.json`,
    `model.safetensors`, README.md with a metadata header); `load_encoder` reads both.

    `params`/`model_state` are the encoder's pure dicts (`nnx.to_pure_dict`), `spec` the JSON
    that `load_encoder` builds the architecture from. `head_params`, when given, are the
    parameters of the family's head with `spec["head"]["num_classes"]` outputs (an imported
    model's own classifier), written to `head/` so that `Encoder.predict` reproduces the
    original's outputs; training never reads them.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if head_params is not None and "head" not in spec:
        raise ValueError("head_params given without spec['head'] (num_classes, activation)")
    if layout == "safetensors":
        return _write_safetensors(out_dir, params, model_state, spec, head_params)
    _save_replacing(out_dir / "encoder", {"params": params, "model_state": model_state})
    if head_params is not None:
        _save_replacing(out_dir / "head", {"params": head_params})
    else:
        shutil.rmtree(out_dir / "head", ignore_errors=True)
    (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    (out_dir / "README.md").write_text(model_card(spec))
    return out_dir


def model_card(spec: dict) -> str:
    """The README.md of an encoder folder: what it is, its input contract, source, licence."""
    pre = spec["preprocessing"]
    source = spec.get("source") or {}
    steps = spec.get("trained_steps")
    trained = f", {steps} steps" if steps is not None else ""
    lines = [f"# ecgfm encoder: {spec.get('title') or spec['model']}", ""]
    if spec.get("summary"):
        lines += [spec["summary"], ""]
    lines += [
        f"- Architecture: `{spec['model']}` (`ecgfm.models.MODELS`).",
        f"- Objective: {spec.get('objective')}{trained}.",
        f"- Training data: {spec.get('training_data')}.",
    ]
    labels = spec.get("label_names") or []
    if labels:
        lines.append(f"- Labels ({len(labels)}): {', '.join(labels)}.")
    lines += [
        f"- Input: {Preprocessing.from_dict(pre).describe() if pre else 'raw millivolts'}.",
        f"- Hyperparameters: `{json.dumps(spec['hparams'])}`.",
    ]
    if spec.get("license"):
        lines.append(f"- Licence: {spec['license']}.")
    if source:
        lines += ["", "## Source", ""]
        lines += [f"- {key}: {value}" for key, value in source.items()]
    notes = spec.get("preprocessing_notes") or []
    if notes:
        lines += ["", "## Preprocessing contract", ""]
        lines += [f"- {note}" for note in notes]
    head = spec.get("head")
    if head:
        lines += [
            "",
            "## The original classifier",
            "",
            f"`encoder.predict(signal, sampling_rate)` gives the original head's "
            f"{head['num_classes']} outputs ({head.get('activation', 'none')} applied): "
            f"{head.get('meaning', '')}",
        ]
    for key in ("parity", "metrics"):
        if spec.get(key):
            lines += ["", f"## {key.capitalize()}", "", f"{spec[key]}"]
    rate = pre["sampling_rate"] if pre else "..."
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import ecgfm",
        'encoder = ecgfm.load_encoder("this/directory")',
        f"embedding_BD = encoder(signal_BTC, sampling_rate={rate})",
        "```",
        "",
        "Input at another sampling rate, length or lead count is refused (ValueError); prepare "
        "it with `encoder.preprocessing` first.",
        "",
    ]
    return "\n".join(lines)


def _read_json(file: pathlib.Path, folder: pathlib.Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise EncoderFormatError(folder, f"{file.name} does not read as JSON ({err})") from None


def read_spec(path: str | pathlib.Path) -> dict:
    """The spec of an encoder folder (`ecgfm_encoder.json`, or the HF layout's config.json),
    checked by `check_spec`; `EncoderNotFoundError` when the folder holds neither."""
    path = pathlib.Path(path)
    if (path / SPEC_FILE).is_file():
        spec = _read_json(path / SPEC_FILE, path)
    elif (path / HF_CONFIG).is_file() and (path / HF_WEIGHTS).is_file():
        config = _read_json(path / HF_CONFIG, path)
        spec = config.get("ecgfm") if isinstance(config, dict) else None
        if not isinstance(spec, dict):
            raise EncoderFormatError(path, f"{HF_CONFIG} has no 'ecgfm' entry (the spec)")
    else:
        raise EncoderNotFoundError(
            path,
            f"{'no such folder' if not path.exists() else 'not an exported ecgfm encoder'} (no "
            f"{SPEC_FILE}, nor {HF_CONFIG} + {HF_WEIGHTS}); to use a published checkpoint, "
            "`ecgfm import` it first",
        )
    check_spec(spec, path)
    return spec


def check_spec(spec: Any, path: str | pathlib.Path) -> None:
    """Raises `EncoderFormatError` naming `path` unless `spec` is one this ecgfm can serve: a
    readable `format_version`, a valid `preprocessing` spec, a known model family with
    hyperparameters it takes, label names, and a well-formed `head` if any."""

    def refuse(problem: str) -> NoReturn:
        raise EncoderFormatError(path, problem)

    if not isinstance(spec, dict):
        refuse(f"its spec is a JSON {type(spec).__name__}, not an object")
    readable = ", ".join(map(str, READABLE_FORMAT_VERSIONS))
    version = spec.get("format_version")
    if version is None:
        refuse(f"its spec has no format_version; this ecgfm reads format_version {readable} "
               "(folders written by `ecgfm export` or `ecgfm import`)")  # fmt: skip
    if isinstance(version, bool) or version not in READABLE_FORMAT_VERSIONS:
        refuse(f"format_version {version!r} is not one this ecgfm reads ({readable}); a newer "
               "ecgfm wrote it? Upgrade ecgfm to load it")  # fmt: skip
    pre = spec.get("preprocessing")
    if not pre:
        refuse("its spec has no preprocessing: without the input contract (sampling rate, "
               "length, leads, filters) no input could be checked against what the encoder "
               "expects; re-export it with `ecgfm export` or `ecgfm import`")  # fmt: skip
    try:
        Preprocessing.from_dict(pre)
    except (TypeError, ValueError, AttributeError) as err:
        refuse(f"its preprocessing spec is invalid ({err})")
    name = spec.get("model")
    if not isinstance(name, str) or name not in models.MODELS:
        known = ", ".join(sorted(models.MODELS))
        refuse(f"model {name!r} is not a family this ecgfm knows ({known})")
    if not isinstance(spec.get("hparams"), dict):
        refuse(f"its spec has no hparams object for {name}")
    try:
        models.make_config(name, spec["hparams"])
    except (TypeError, ValueError) as err:
        refuse(f"its hparams do not fit {name} ({err})")
    labels = spec.get("label_names", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        refuse("its label_names are not a list of strings")
    head = spec.get("head")
    if head is not None:
        classes = head.get("num_classes") if isinstance(head, dict) else None
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            refuse(f"its head has num_classes {classes!r}, expected a positive integer")


def is_safetensors_folder(path: str | pathlib.Path) -> bool:
    """Whether `path` is an encoder in the Hugging Face layout (not the Orbax one)."""
    path = pathlib.Path(path)
    return not (path / SPEC_FILE).is_file() and (path / HF_WEIGHTS).is_file()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= _flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


def _fill(target: Any, flat: dict[str, np.ndarray], source: str, prefix: str) -> Any:
    """`target`'s structure with each leaf taken from `flat` by its dotted path; checks all."""
    expected = {k: tuple(v.shape) for k, v in _flatten(target, prefix).items()}
    mine = {k: v for k, v in flat.items() if k.startswith(prefix)}
    check_state_dict(mine, expected, source)
    for key, leaf in _flatten(target, prefix).items():
        if np.dtype(mine[key].dtype) != np.dtype(leaf.dtype):
            raise ValueError(f"{source}: {key} is {mine[key].dtype}, expected {leaf.dtype}")

    def fill(tree: Any, pre: str) -> Any:
        return {
            k: fill(v, f"{pre}{k}.") if isinstance(v, dict) else mine[f"{pre}{k}"]
            for k, v in tree.items()
        }

    return fill(target, prefix)


def _write_safetensors(
    out_dir: pathlib.Path, params: Any, model_state: Any, spec: dict, head_params: Any
) -> pathlib.Path:
    from safetensors.numpy import save_file

    tree = {"encoder": {"params": params, "model_state": model_state}}
    if head_params is not None:
        tree["head"] = {"params": head_params}
    flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in _flatten(tree).items()}
    partial = out_dir / (HF_WEIGHTS + ".partial")
    save_file(flat, str(partial), metadata={"format": "np", "library": "ecgfm"})
    partial.replace(out_dir / HF_WEIGHTS)
    config = {"library_name": "ecgfm", "model_type": spec["model"], "ecgfm": spec}
    (out_dir / HF_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    front = [
        "---",
        "library_name: ecgfm",
        f"license: {_hf_license(spec.get('license'))}",
        "tags: [ecg, electrocardiogram, jax, flax, ecgfm]",
        "---",
        "",
    ]
    card = model_card(spec) + (
        "\nThis folder is in the Hugging Face layout (`config.json`, `model.safetensors`): "
        "`ecgfm.load_encoder` reads it without running any code from it. To publish it:\n\n"
        "```python\nfrom huggingface_hub import HfApi\n"
        'HfApi().upload_folder(folder_path="this/directory", repo_id="you/name")\n```\n'
    )
    (out_dir / "README.md").write_text("\n".join(front) + card)
    return out_dir


def _hf_license(text: str | None) -> str:
    """The Hub's licence identifier for a licence named in a spec (else "other")."""
    known = {"mit": "mit", "apache-2.0": "apache-2.0", "cc-by-4.0": "cc-by-4.0",
             "cc-by-nc-4.0": "cc-by-nc-4.0", "cc-by-nc-sa-4.0": "cc-by-nc-sa-4.0"}  # fmt: skip
    # "MIT (bakqui/ST-MEM, ...)" → "mit"; "CC BY-NC 4.0 (code: ...)" → "cc-by-nc-4.0"
    name = (text or "").split("(")[0].split(";")[0].strip().lower().rstrip(",")
    return known.get(name.replace(" ", "-"), "other")


def _read_arrays(path: pathlib.Path, target: Any, head_target: Any = None) -> tuple[Any, Any]:
    """(encoder `{"params", "model_state"}`, head `{"params"}` or None) read onto targets,
    refused (`EncoderFormatError`) if they do not read as the spec's architecture or hold
    NaN/Inf."""
    try:
        if is_safetensors_folder(path):
            from safetensors.numpy import load_file

            flat = load_file(str(path / HF_WEIGHTS))
            encoder = _fill(target, flat, str(path / HF_WEIGHTS), "encoder.")
            encoder = jax.tree.map(lambda a, t: jax.device_put(a, t.sharding), encoder, target)
            head = None
            if head_target is not None and any(k.startswith("head.") for k in flat):
                head = _fill(head_target, flat, str(path / HF_WEIGHTS), "head.")
        else:
            if not (path / "encoder").is_dir():
                raise EncoderFormatError(path, "it has no encoder/ folder (the weights)")
            encoder = checkpoint.restore_tree(path / "encoder", target)
            head = None
            if head_target is not None and (path / "head").is_dir():
                head = checkpoint.restore_tree(path / "head", head_target)
    except (EncoderFormatError, CheckpointKeyError):
        raise  # they name the file and list every wrong key already
    except Exception as err:  # Orbax, tensorstore and safetensors raise many types
        problem = checkpoint.brief_error(err)
        raise EncoderFormatError(
            path, f"its weights do not read as the architecture its spec describes ({problem})"
        ) from err
    bad = checkpoint.non_finite_arrays({"encoder": encoder, "head": head or {}})
    if bad:
        raise EncoderFormatError(
            path, f"{len(bad)} weight array(s) hold NaN/Inf ({checkpoint.listing(bad)}): every "
            "embedding would be NaN",
        )  # fmt: skip
    return encoder, head


def _restore_encoder(path: pathlib.Path, target: Any) -> tuple[Any, Any]:
    read_spec(path)  # refuses what load_encoder refuses
    restored, _ = _read_arrays(path, target)
    return restored["params"], restored["model_state"]


def load_encoder(path: str | pathlib.Path) -> Encoder:
    """The encoder exported to `path`, ready to embed input prepared per its preprocessing.

    `path` is an `ecgfm export`/`ecgfm import` folder in either layout (Orbax, or Hugging
    Face `config.json` + `model.safetensors`); neither runs code from the folder. A folder this
    ecgfm cannot serve exactly as written (see `check_spec`; weights that do not read or hold
    NaN/Inf) raises `EncoderFormatError` naming it.
    """
    path = pathlib.Path(path)
    spec = read_spec(path)
    head_spec = spec.get("head")

    def build():
        if head_spec:
            return models.build_model(
                spec["model"], spec["hparams"], head_spec["num_classes"], rngs=nnx.Rngs(0)
            )
        return models.build_encoder(spec["model"], spec["hparams"], rngs=nnx.Rngs(0))

    try:
        abstract = nnx.eval_shape(build)
    except Exception as err:  # hyperparameters a family's code cannot build (any error type)
        problem = checkpoint.brief_error(err)
        raise EncoderFormatError(
            path, f"its hparams do not build a {spec['model']} ({problem})"
        ) from err
    encoder_abstract = abstract.encoder if head_spec else abstract
    graphdef, params, model_state = nnx.split(encoder_abstract, nnx.Param, ...)
    target = {"params": nnx.to_pure_dict(params), "model_state": nnx.to_pure_dict(model_state)}
    head_target = None
    if head_spec:
        head_graphdef, head_params = nnx.split(abstract.head, nnx.Param)
        head_target = _on_one_device({"params": nnx.to_pure_dict(head_params)})
    restored, head = _read_arrays(path, _on_one_device(target), head_target)
    module = nnx.merge(graphdef, restored["params"], restored["model_state"])
    head_module = None
    if head is not None:
        head_module = nnx.merge(head_graphdef, head["params"])
    return Encoder(module, spec, head_module, source=str(path.resolve()))


def read_encoder_arrays(path: str | pathlib.Path) -> tuple[dict, Any, Any, Any]:
    """(spec, encoder params, encoder model_state, head params or None) of an encoder folder,
    as host arrays: what `write_encoder` takes, e.g. to convert between layouts."""
    loaded = load_encoder(path)
    _, params, model_state = nnx.split(loaded.module, nnx.Param, ...)
    to_host = functools.partial(jax.tree.map, np.asarray)
    head = None
    if loaded.head is not None:
        head = to_host(nnx.to_pure_dict(nnx.state(loaded.head, nnx.Param)))
    return (
        loaded.config,
        to_host(nnx.to_pure_dict(params)),
        to_host(nnx.to_pure_dict(model_state)),
        head,
    )


def convert_encoder(
    src: str | pathlib.Path, out_dir: str | pathlib.Path, *, layout: str
) -> pathlib.Path:
    """Rewrite the encoder folder `src` (either layout) into `out_dir` in `layout`."""
    spec, params, model_state, head = read_encoder_arrays(src)
    return write_encoder(out_dir, params, model_state, spec, head_params=head, layout=layout)


def read_encoder_state(path: pathlib.Path, params: Any, model_state: Any) -> tuple[Any, Any]:
    """`params`/`model_state` of a Classifier with the encoder parts read from an export.

    The export is read straight onto the shardings of the arrays it replaces (the run's mesh,
    every process's devices), so each process reads only the shards it holds.
    """
    encoder = {"params": params["encoder"], "model_state": model_state.get("encoder", {})}
    target = checkpoint.abstract_like(encoder, jax.tree.map(lambda x: x.sharding, encoder))
    enc_params, enc_state = _restore_encoder(path, target)
    if "encoder" in model_state:
        model_state = model_state | {"encoder": enc_state}
    return params | {"encoder": enc_params}, model_state
