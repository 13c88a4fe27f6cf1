"""Shareable encoders: `export_encoder` writes one, `load_encoder` gives back a callable.

An exported encoder directory holds `encoder/` (Orbax arrays: parameters and batch statistics,
no pickle, no head), `ecgfm_encoder.json` (model family and hyperparameters, the preprocessing
spec, label vocabulary, training data summary) and a model card `README.md`.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from ecgfm import checkpoint, models
from ecgfm.data.preprocessing import Preprocessing
from ecgfm.experiment import Experiment

SPEC_FILE = "ecgfm_encoder.json"
FORMAT_VERSION = 1


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


def export_encoder(workdir: str | pathlib.Path, out_dir: str | pathlib.Path) -> pathlib.Path:
    """Write the latest checkpoint's encoder (head dropped) with its spec and model card.

    Only the encoder's arrays and the step are read from the checkpoint (not the head or the
    optimizer's moments), onto this process's first device.
    """

    workdir, out_dir = pathlib.Path(workdir), pathlib.Path(out_dir)
    config = ConfigDict(json.loads((workdir / "config.json").read_text()))
    exp = Experiment.from_config(config)
    data_spec = json.loads((workdir / "data_spec.json").read_text())
    encoder = _abstract_encoder(exp, len(data_spec["label_names"]))
    target = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "params": {"encoder": encoder["params"]},
    }
    if jax.tree.leaves(encoder["model_state"]):
        target["model_state"] = {"encoder": encoder["model_state"]}
    state = checkpoint.restore_state(
        workdir / checkpoint.CHECKPOINT_DIR, _on_one_device(target), partial=True
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    # Orbax refuses an existing destination: write beside the old arrays, then swap, so that
    # exporting again (after more training, or a rerun of the demo) replaces them.
    partial, arrays = out_dir / "encoder.partial", out_dir / "encoder"
    shutil.rmtree(partial, ignore_errors=True)
    checkpoint.save_tree(
        partial,
        {
            "params": state["params"]["encoder"],
            "model_state": state.get("model_state", {}).get("encoder", encoder["model_state"]),
        },
    )
    shutil.rmtree(arrays, ignore_errors=True)
    partial.rename(arrays)
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
    (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    (out_dir / "README.md").write_text(_model_card(spec))
    return out_dir


def _model_card(spec: dict) -> str:
    pre = spec["preprocessing"]
    return f"""# ecgfm encoder: {spec["model"]}

- Objective: {spec["objective"]}, {spec["trained_steps"]} steps.
- Training data: {spec["training_data"]}.
- Labels seen in training ({len(spec["label_names"])}): {", ".join(spec["label_names"])}.
- Input: {Preprocessing.from_dict(pre).describe() if pre else "raw millivolts"}.
- Hyperparameters: `{json.dumps(spec["hparams"])}`.

```python
import ecgfm
encoder = ecgfm.load_encoder("this/directory")
embedding_BD = encoder(signal_BTC, sampling_rate={pre["sampling_rate"] if pre else "..."})
```

Input at another sampling rate, length or lead count is refused (ValueError); prepare it with
`encoder.preprocessing` first. The classification head was dropped.
"""


class Encoder:
    """A loaded encoder: `encoder(signal, sampling_rate)` gives embeddings `[B, D]`."""

    def __init__(self, module: nnx.Module, spec: dict):
        self.module = module
        self.config = spec
        pre = spec.get("preprocessing")
        self.preprocessing = Preprocessing.from_dict(pre) if pre else None
        self.label_names = tuple(spec.get("label_names", ()))
        # What `ecgfm.models.build_encoder` needs to build the same, untrained, architecture.
        self.architecture = {"model": spec["model"], "config": dict(spec["hparams"])}
        self._run = nnx.jit(lambda m, x: m(x, train=False))

    def _encode(self, signal: np.ndarray, sampling_rate: float) -> tuple[Any, bool]:
        signal = np.asarray(signal, np.float32)
        if self.preprocessing is not None:
            self.preprocessing.check_compatible(signal, sampling_rate)
        if signal.ndim not in (2, 3):
            raise ValueError(f"expected [T, C] or [B, T, C] input, got shape {signal.shape}")
        if not np.isfinite(signal).all():
            # NaN in one sample would make the whole embedding NaN, silently.
            bad = np.argwhere(~np.isfinite(signal))
            raise ValueError(
                f"input has {len(bad)} NaN/Inf values (first at index {tuple(bad[0].tolist())}); "
                "the encoder needs finite millivolts: fill or drop the gaps first"
            )
        single = signal.ndim == 2
        out = self._run(self.module, jnp.asarray(signal[None] if single else signal))
        return out, single

    def embed(self, signal: np.ndarray, sampling_rate: float) -> np.ndarray:
        """`[B, D]` embeddings of `[B, T, C]` input (`[D]` for one `[T, C]` signal)."""
        out, single = self._encode(signal, sampling_rate)
        embedding = np.asarray(out.embedding_BD)
        return embedding[0] if single else embedding

    def features(self, signal: np.ndarray, sampling_rate: float) -> np.ndarray:
        """`[B, N, D]` per-time-step features (`[N, D]` for one `[T, C]` signal)."""
        out, single = self._encode(signal, sampling_rate)
        features = np.asarray(out.features_BND)
        return features[0] if single else features

    __call__ = embed


def read_spec(path: str | pathlib.Path) -> dict:
    """The `ecgfm_encoder.json` of an exported encoder."""
    path = pathlib.Path(path)
    spec_path = path / SPEC_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"{path} is not an exported ecgfm encoder (no {SPEC_FILE})")
    return json.loads(spec_path.read_text())


def _restore_encoder(path: pathlib.Path, target: Any) -> tuple[Any, Any]:
    restored = checkpoint.restore_tree(path / "encoder", target)
    return restored["params"], restored["model_state"]


def load_encoder(path: str | pathlib.Path) -> Encoder:
    """The encoder exported to `path`, ready to embed input prepared per its preprocessing."""
    path = pathlib.Path(path)
    spec = read_spec(path)
    abstract = nnx.eval_shape(
        lambda: models.build_encoder(spec["model"], spec["hparams"], rngs=nnx.Rngs(0))
    )
    graphdef, params, model_state = nnx.split(abstract, nnx.Param, ...)
    target = {"params": nnx.to_pure_dict(params), "model_state": nnx.to_pure_dict(model_state)}
    params, model_state = _restore_encoder(path, _on_one_device(target))
    return Encoder(nnx.merge(graphdef, params, model_state), spec)


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
