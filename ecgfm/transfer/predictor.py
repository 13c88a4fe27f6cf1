"""A trained transfer model on disk (encoder + head), and predictions from it for any dataset.

A head folder holds `ecgfm_head.json` (what the head is: "linear_probe", "attention" or
"linear"; the label names in output order; the task, windowing and aggregation it was trained
under; the per-class thresholds fitted on validation; the SHA-256 of the encoder weights it
was trained on) and `head.npz` (its arrays, read without pickle). A fine-tuned model's encoder
changed too: it is written beside the head as an encoder folder (`encoder/`, the `ecgfm
export` layout), and the head names that encoder's hash. `Predictor.load(encoder, head)`
refuses an encoder whose weights are not the ones the head was trained on.

`Predictor.predict(records)` scores records as the study did: each record cut into the
protocol's evaluation windows, window logits aggregated per record (max, or mean of
probabilities), sigmoid. `write_predictions` writes one CSV row per exam (its id, one
probability column per class in the model's label order) and a JSON sidecar with the model
card, for blinded scoring of a withheld test set (CODE-II-test).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecgfm.data.record import EcgFormatError, EcgRecord, OnError, SkipLog, handle_bad_record
from ecgfm.encoder import Encoder
from ecgfm.transfer.windows import (
    Windowing,
    aggregate_window_logits,
    record_windows,
    sigmoid,
)

HEAD_FILE = "ecgfm_head.json"
ARRAYS_FILE = "head.npz"
KINDS = ("linear_probe", "linear", "attention")
HEAD_FORMAT = 1


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= _flatten(value, name + "/")
        else:
            out[name] = value if hasattr(value, "shape") else np.asarray(value)
    return out


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def save_head(
    out_dir: str | pathlib.Path,
    *,
    kind: str,
    arrays: Mapping[str, Any],
    encoder: Encoder,
    label_names: Sequence[str],
    task: Mapping[str, Any],
    thresholds: Sequence[float] | None,
    provenance: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Writes a head folder for `encoder` (whose weights the head was trained with)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / ARRAYS_FILE, **_flatten(arrays))
    spec = {
        "format_version": HEAD_FORMAT,
        "kind": kind,
        "label_names": list(label_names),
        "encoder_hash": encoder.checkpoint_hash,
        "encoder_architecture": encoder.architecture,
        "preprocessing": encoder.preprocessing.to_dict(),
        "task": dict(task),
        "thresholds": None if thresholds is None else [float(t) for t in thresholds],
        "provenance": dict(provenance or {}),
    }
    (out_dir / HEAD_FILE).write_text(json.dumps(spec, indent=2, default=float) + "\n")
    return out_dir


def save_probe(out_dir: str | pathlib.Path, probe: Any, **kwargs: Any) -> pathlib.Path:
    """A fitted `probe.LinearProbe` as a head folder (`save_head`'s keywords)."""
    arrays = {
        "mean_D": probe.mean_D,
        "scale_D": probe.scale_D,
        "weight_DK": probe.weight_DK,
        "bias_K": probe.bias_K,
    }
    provenance = {"l2": probe.l2, **kwargs.pop("provenance", {})}
    return save_head(out_dir, kind="linear_probe", arrays=arrays, provenance=provenance, **kwargs)


def save_trained(
    out_dir: str | pathlib.Path,
    state: Mapping[str, Any],
    *,
    kind: str,
    encoder: Encoder,
    encoder_dir: str | pathlib.Path | None = None,
    **kwargs: Any,
) -> pathlib.Path:
    """A trained classifier's host `state` (`{"params", "model_state"}`) as a head folder.

    A fine-tuned encoder (its weights changed) is written to `encoder_dir` and the head names
    it; with `encoder_dir` None the encoder was frozen and the head names `encoder`.
    """
    from ecgfm.export import load_encoder, write_encoder

    out_dir = pathlib.Path(out_dir)
    if encoder_dir is not None:
        spec = dict(encoder.config) | {
            "fine_tuned_from": {"path": encoder.source, "hash": encoder.checkpoint_hash},
            "fine_tuned_on": kwargs.get("task", {}).get("name"),
        }
        spec.pop("head", None)
        folder = write_encoder(
            encoder_dir,
            state["params"]["encoder"],
            state.get("model_state", {}).get("encoder", {}),
            spec,
        )
        encoder = load_encoder(folder)
    head = {"params": state["params"]["head"], "model_state": state["model_state"].get("head", {})}
    return save_head(out_dir, kind=kind, arrays=head, encoder=encoder, **kwargs)


@dataclasses.dataclass
class Predictor:
    """An encoder and a head that scores records as the study did."""

    encoder: Encoder
    spec: dict[str, Any]
    arrays: dict[str, Any]

    @classmethod
    def load(cls, encoder: str | pathlib.Path | Encoder, head: str | pathlib.Path) -> Predictor:
        """Reads a head folder and checks it was trained on `encoder`'s weights."""
        from ecgfm.export import load_encoder

        head = pathlib.Path(head)
        if not (head / HEAD_FILE).is_file():
            raise FileNotFoundError(f"{head} is not a head folder (no {HEAD_FILE})")
        spec = json.loads((head / HEAD_FILE).read_text())
        if spec.get("kind") not in KINDS:
            raise ValueError(f"{head / HEAD_FILE}: unknown kind {spec.get('kind')!r}")
        if not isinstance(encoder, Encoder):
            encoder = load_encoder(encoder)
        if encoder.checkpoint_hash != spec["encoder_hash"]:
            raise ValueError(
                f"{head} was trained on encoder weights {spec['encoder_hash'][:12]}…, but "
                f"{encoder.source} holds {encoder.checkpoint_hash[:12]}…: pass the encoder the "
                "head was trained with (a fine-tuned model's is in its encoder/ folder)"
            )
        with np.load(head / ARRAYS_FILE, allow_pickle=False) as f:
            arrays = _unflatten({k: f[k] for k in f.files})
        return cls(encoder, spec, arrays)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.spec["label_names"])

    @property
    def windowing(self) -> Windowing:
        return Windowing(**self.spec["task"]["windowing"])

    def _window_logits(self):
        """`inputs [B, T, C]` → `[B, K]` logits, jitted."""
        kind = self.spec["kind"]
        if kind == "linear_probe":
            a = {k: jnp.asarray(v, jnp.float32) for k, v in self.arrays.items()}
            module = self.encoder.module

            @nnx.jit
            def run(m, x):
                embedding = m(x, train=False).embedding_BD
                return ((embedding - a["mean_D"]) / a["scale_D"]) @ a["weight_DK"] + a["bias_K"]

            return lambda x: run(module, x)
        from ecgfm.models import ModelSpec

        model = ModelSpec.create(
            self.encoder.architecture["model"], self.encoder.architecture["config"]
        )
        classifier = nnx.eval_shape(
            lambda: model.build_classifier(len(self.label_names), nnx.Rngs(0), head=kind)
        )
        graphdef, params, rest = nnx.split(classifier.head, nnx.Param, ...)
        target = {"params": nnx.to_pure_dict(params), "model_state": nnx.to_pure_dict(rest)}
        matched = _match(target, self.arrays, "head.npz")
        matched = {key: matched.get(key, {}) for key in target}
        head_state = jax.tree.map(lambda t, v: jnp.asarray(v, t.dtype), target, matched)
        head = nnx.merge(graphdef, head_state["params"], head_state["model_state"])
        encoder = self.encoder.module

        @nnx.jit
        def run_trained(e, h, x):
            return h(e(x, train=False), train=False)

        return lambda x: run_trained(encoder, head, x)

    def predict(
        self,
        records: Iterable[EcgRecord],
        *,
        batch_size: int = 256,
        on_error: OnError = "raise",
        skip_log: SkipLog | None = None,
    ) -> tuple[list[str], np.ndarray]:
        """(record ids, `[N, K]` probabilities) of `records`, windows aggregated per record."""
        windowing = self.windowing
        pre = self.encoder.preprocessing
        window = windowing.samples(pre.sampling_rate, train=False)
        aggregation = "max" if windowing.aggregation == "max" else "mean"
        run = self._window_logits()
        skip_log = SkipLog() if skip_log is None else skip_log
        ids: list[str] = []
        inputs: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        for record in records:
            try:
                windows = record_windows(record.signal, record.sampling_rate, pre, window)
            except (EcgFormatError, ValueError) as err:
                handle_bad_record(
                    err
                    if isinstance(err, EcgFormatError)
                    else EcgFormatError(record.record_id, str(err)),
                    on_error,
                    skip_log,
                )
                continue
            owners.append(np.full(len(windows), len(ids)))
            ids.append(record.record_id)
            inputs.append(windows)
        if not ids:
            return [], np.zeros((0, len(self.label_names)))
        windows_WTC = np.concatenate(inputs)
        logits = []
        for start in range(0, len(windows_WTC), batch_size):
            chunk = windows_WTC[start : start + batch_size]
            size = min(batch_size, 1 << (len(chunk) - 1).bit_length())
            padded = np.zeros((size, *chunk.shape[1:]), np.float32)
            padded[: len(chunk)] = chunk
            logits.append(np.asarray(run(jnp.asarray(padded)))[: len(chunk)])
        record_logits = aggregate_window_logits(
            np.concatenate(logits), np.concatenate(owners), len(ids), aggregation
        )
        return ids, sigmoid(record_logits)

    def model_card(self) -> dict[str, Any]:
        """What predictions were made with: encoder, head, labels, protocol, versions."""
        from ecgfm.transfer.study import versions

        return {
            "encoder": self.encoder.describe() | {"spec": self.encoder.config},
            "head": {k: v for k, v in self.spec.items() if k != "format_version"},
            "label_names": list(self.label_names),
            "scores": "probabilities: sigmoid of the record logits (windows aggregated as "
            f"'{self.windowing.aggregation}')",
            "versions": versions(),
        }


def _match(target: Any, arrays: Any, where: str) -> Any:
    """`arrays` in `target`'s structure; every key and shape checked."""
    flat_target, flat_arrays = _flatten(target), _flatten(arrays)
    missing = sorted(set(flat_target) - set(flat_arrays))
    unexpected = sorted(set(flat_arrays) - set(flat_target))
    shapes = sorted(
        k
        for k in set(flat_target) & set(flat_arrays)
        if tuple(flat_target[k].shape) != tuple(flat_arrays[k].shape)
    )
    if missing or unexpected or shapes:
        raise ValueError(f"{where}: missing {missing}, unexpected {unexpected}, shapes {shapes}")
    return _unflatten({k: flat_arrays[k] for k in flat_target})


def open_dataset(path: str | pathlib.Path, *, on_error: OnError = "raise") -> tuple[Any, str]:
    """(reader, id column name) of a dataset folder in any layout ecgfm reads.

    CODE-15%/CODE-II (`exams.csv`, ids `exam_id`), the CODE test set (`ecg_tracings.hdf5`,
    the row), PTB-XL (`ptbxl_database.csv`, `ecg_id`; the 500 Hz files where shipped), CPSC
    2018 (`A*.mat`) or the PhysioNet/CinC Challenge layout (`*.hea`).
    """
    from ecgfm.data.challenge import ChallengeDataset
    from ecgfm.data.code import CodeDataset
    from ecgfm.data.code_test import TRACINGS_FILE, CodeTestSet
    from ecgfm.data.cpsc2018 import Cpsc2018
    from ecgfm.data.ptbxl import PtbXl

    root = pathlib.Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a dataset folder")
    if (root / "exams.csv").is_file():
        return CodeDataset(root, on_error=on_error), "exam_id"
    if (root / TRACINGS_FILE).is_file():
        return CodeTestSet(root, on_error=on_error), "exam_id"
    if (root / "ptbxl_database.csv").is_file():
        rate = 500 if (root / "records500").is_dir() else 100
        return PtbXl(root, sampling_rate=rate, on_error=on_error), "ecg_id"
    if any(root.glob("A*.mat")) and (root / "REFERENCE.csv").is_file():
        return Cpsc2018(root, on_error=on_error), "record_id"
    if any(root.glob("*.hea")):
        return ChallengeDataset(root, check_codes=False, on_error=on_error), "record_id"
    raise ValueError(
        f"{root}: no dataset layout recognised (exams.csv, ecg_tracings.hdf5, "
        "ptbxl_database.csv, A*.mat + REFERENCE.csv, or *.hea)"
    )


def write_predictions(
    predictor: Predictor,
    records: Iterable[EcgRecord],
    out_csv: str | pathlib.Path,
    *,
    id_column: str = "exam_id",
    data: str = "",
    on_error: OnError = "raise",
) -> dict[str, Any]:
    """Writes `out_csv` (id, one probability column per class) and `<out_csv>.json`."""
    out_csv = pathlib.Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    skip_log = SkipLog()
    ids, probabilities = predictor.predict(records, on_error=on_error, skip_log=skip_log)
    with out_csv.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([id_column, *predictor.label_names])
        for record_id, row in zip(ids, probabilities, strict=True):
            writer.writerow([record_id, *(f"{p:.6g}" for p in row)])
    sidecar = {
        "predictions": str(out_csv),
        "data": data,
        "num_exams": len(ids),
        "columns": [id_column, *predictor.label_names],
        "skipped": [{"where": w, "reason": r} for w, r in skip_log.skipped],
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model_card": predictor.model_card(),
    }
    json_path = out_csv.with_suffix(out_csv.suffix + ".json")
    json_path.write_text(json.dumps(sidecar, indent=2, default=float) + "\n")
    return sidecar | {"sidecar": str(json_path)}
