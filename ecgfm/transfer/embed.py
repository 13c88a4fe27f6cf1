"""Frozen-encoder embeddings of dataset records, cached on disk.

Pooling: an encoder's `embedding_BD` (each encoder documents it; the CNNs average their last
stage's features over time, the ViT its tokens), computed with `train=False`: dropout and any
masking off, BatchNorm on its running statistics. A record is preprocessed whole by the
encoder's `Preprocessing` with its length left free (resampling, filters and per-record
normalisation see all 10 s), then cut into windows (`protocol.cut_windows`); each window is
one encoder input. With whole-record windowing the spec's own crop/pad is applied instead.

The cache is one `.npz` per key, the SHA-256 of: the checkpoint hash, the preprocessing spec,
the dataset id (dataset, resolved root, files' sampling rate), window and stride in samples,
and the pooling. It holds every record embedded so far under that key; a request embeds only
the records missing from it and rewrites the file atomically (a unique temporary file, then
a rename: concurrent runs do not corrupt it, the last one's file wins). Record signals under
a root are assumed not to change.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from ecgfm.data.pipeline import pad_rows
from ecgfm.data.preprocessing import Preprocessing
from ecgfm.data.record import EcgFormatError, OnError, SkipLog, handle_bad_record
from ecgfm.models import build_encoder
from ecgfm.transfer.protocol import Windowing, cut_windows

log = logging.getLogger(__name__)

POOLING = "encoder embedding_BD, train=False (dropout and masking off, BatchNorm running stats)"
_CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class FrozenEncoder:
    """An encoder reduced to what transfer needs: inputs → embeddings, plus its identity.

    Attributes:
      embed: `[B, T, C]` float32 → `[B, D]` embeddings, deterministic (`train=False`).
      preprocessing: the spec its inputs must follow.
      checkpoint_hash: SHA-256 identifying the weights (cache keys, results).
      checkpoint_path: where the weights came from, or a description ("random init, seed 0").
      architecture: {"model": family name, "config": hyperparameters} when known, so that a
        randomly initialised twin can be built for the baseline.
    """

    embed: Callable[[np.ndarray], np.ndarray]
    preprocessing: Preprocessing
    checkpoint_hash: str
    checkpoint_path: str
    architecture: Mapping[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        """JSON identity of the checkpoint, as results record it."""
        return {
            "path": self.checkpoint_path,
            "hash": self.checkpoint_hash,
            "architecture": None if self.architecture is None else dict(self.architecture),
            "pooling": POOLING,
        }


def hash_module(module: nnx.Module) -> str:
    """SHA-256 of an NNX module's state: every variable's path, dtype, shape and bytes."""
    digest = hashlib.sha256()
    leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.state(module))
    for path, leaf in leaves:
        array = np.asarray(leaf)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def hash_path(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a directory's relative file names and contents (sorted)."""
    path = pathlib.Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no checkpoint files at {path}")
    for file in files:
        digest.update(file.relative_to(path if path.is_dir() else path.parent).as_posix().encode())
        with file.open("rb") as f:
            for block in iter(functools.partial(f.read, 1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def from_module(
    encoder: nnx.Module,
    preprocessing: Preprocessing,
    *,
    checkpoint_path: str = "in-memory module",
    architecture: Mapping[str, Any] | None = None,
) -> FrozenEncoder:
    """Wraps an NNX encoder (`__call__(signal_BTC, *, train) -> EncoderOutput`), jitted."""
    graphdef, state = nnx.split(encoder)

    @jax.jit
    def embed_fn(state: Any, signal_BTC: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(signal_BTC, train=False).embedding_BD

    return FrozenEncoder(
        embed=lambda signal_BTC: np.asarray(embed_fn(state, signal_BTC), dtype=np.float32),
        preprocessing=preprocessing,
        checkpoint_hash=hash_module(encoder),
        checkpoint_path=checkpoint_path,
        architecture=architecture,
    )


def from_export(path: str | os.PathLike) -> FrozenEncoder:
    """An encoder written by `ecgfm export` (see `ecgfm.export.load_encoder`)."""
    from ecgfm.export import load_encoder

    loaded = load_encoder(path)
    return from_module(
        loaded.module,
        loaded.preprocessing,
        checkpoint_path=str(pathlib.Path(path).resolve()),
        architecture=loaded.architecture,
    )


def random_encoder(
    model: str, config: Mapping[str, Any] | None, preprocessing: Preprocessing, *, seed: int
) -> FrozenEncoder:
    """A randomly initialised encoder of family `model`: the baseline pretraining must beat."""
    encoder = build_encoder(model, config, rngs=nnx.Rngs(seed))
    return from_module(
        encoder,
        preprocessing,
        checkpoint_path=f"random init (seed {seed})",
        architecture={"model": model, "config": dict(config or {})},
    )


def random_twin(encoder: FrozenEncoder, *, seed: int) -> FrozenEncoder:
    """The same architecture and preprocessing as `encoder`, randomly initialised."""
    if encoder.architecture is None:
        raise ValueError(
            f"{encoder.checkpoint_path}: architecture unknown, cannot build a random baseline"
        )
    return random_encoder(
        encoder.architecture["model"],
        encoder.architecture.get("config"),
        encoder.preprocessing,
        seed=seed,
    )


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """Window embeddings: row i belongs to `record_ids[record_of_window_W[i]]`.

    `num_cached`/`num_computed` count records read from the cache / embedded now; `skipped`
    lists (where, why) for unreadable records left out (with `on_error="skip"`).
    """

    record_ids: list[str]
    embeddings_WD: np.ndarray
    record_of_window_W: np.ndarray
    num_cached: int
    num_computed: int
    skipped: list[tuple[str, str]]
    cache_file: str | None


def cache_key(
    encoder: FrozenEncoder, dataset_id: str, window: tuple[int, int] | None
) -> tuple[str, dict[str, Any]]:
    """(hex key, what it hashes) for one encoder × preprocessing × dataset × windowing."""
    contents = {
        "format": _CACHE_FORMAT,
        "checkpoint_hash": encoder.checkpoint_hash,
        "preprocessing": encoder.preprocessing.to_dict(),
        "dataset": dataset_id,
        "window_samples": None if window is None else window[0],
        "stride_samples": None if window is None else window[1],
        "pooling": POOLING,
    }
    text = json.dumps(contents, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32], contents


def record_windows(
    signal_TC: np.ndarray,
    sampling_rate: float,
    preprocessing: Preprocessing,
    window: tuple[int, int] | None,
) -> np.ndarray:
    """`[W, T', C']` encoder inputs of one raw `[T, 12]` record (see the module docstring)."""
    if window is None:
        return preprocessing(signal_TC, sampling_rate)[None]
    length, stride = window
    if preprocessing.num_samples is not None and preprocessing.num_samples != length:
        raise ValueError(
            f"the encoder takes {preprocessing.num_samples} samples but windows are {length} "
            f"({preprocessing.describe()}): choose window_s = num_samples / sampling_rate, or "
            "whole-record windowing"
        )
    whole = dataclasses.replace(preprocessing, num_samples=None)
    return cut_windows(whole(signal_TC, sampling_rate), length, stride)


def _load_cache(path: pathlib.Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path) as f:
        ids, emb, owner = f["record_ids"], f["embeddings_WD"], f["record_of_window_W"]
    return {str(r): emb[owner == n] for n, r in enumerate(ids)}


def _replace_atomically(path: pathlib.Path, write: Callable[[Any], None], suffix: str) -> None:
    """Writes through `write(file)` to a unique temporary file beside `path`, then renames it.

    Concurrent runs filling the same cache each write their own file; the last rename wins
    and a reader never sees a partial file.
    """
    with tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f"{path.stem}.", suffix=f"{suffix}.tmp", delete=False
    ) as f:
        try:
            write(f)
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.replace(f.name, path)


def _save_cache(path: pathlib.Path, per_record: Mapping[str, np.ndarray], key: dict) -> None:
    ids = sorted(per_record)
    arrays = {
        "record_ids": np.array(ids),
        "embeddings_WD": np.concatenate([per_record[r] for r in ids]),
        "record_of_window_W": np.concatenate(
            [np.full(len(per_record[r]), n) for n, r in enumerate(ids)]
        ),
    }
    _replace_atomically(path, lambda f: np.savez(f, **arrays), ".npz")
    text = (json.dumps(key, indent=2, sort_keys=True) + "\n").encode()
    _replace_atomically(path.with_suffix(".json"), lambda f: f.write(text), ".json")


def embed_records(
    encoders: Mapping[str, FrozenEncoder],
    read: Callable[[str], Any],
    record_ids: Sequence[str],
    *,
    dataset_id: str,
    windowing: Windowing,
    train: bool,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    chunk_records: int = 512,
    on_error: OnError = "raise",
) -> dict[str, Embeddings]:
    """Per encoder, embeddings of every window of `record_ids` (`read(id) -> EcgRecord`).

    Each record is read once for all encoders; windows follow `windowing` (training or
    evaluation stride) at each encoder's sampling rate. Records are processed `chunk_records`
    at a time so memory holds one chunk's inputs, and the encoder sees batches of
    `batch_size` (or of the next power of two below it), so it compiles once or twice.
    """
    unique_ids = list(dict.fromkeys(record_ids))
    windows = {
        name: windowing.samples(e.preprocessing.sampling_rate, train)
        for name, e in encoders.items()
    }
    cached: dict[str, dict[str, np.ndarray]] = {name: {} for name in encoders}
    cache_files: dict[str, pathlib.Path | None] = dict.fromkeys(encoders)
    keys: dict[str, dict[str, Any]] = {}
    if cache_dir is not None:
        pathlib.Path(cache_dir).mkdir(parents=True, exist_ok=True)
        for name, e in encoders.items():
            key, keys[name] = cache_key(e, dataset_id, windows[name])
            cache_files[name] = pathlib.Path(cache_dir) / f"embeddings-{key}.npz"
            cached[name] = _load_cache(cache_files[name])
    missing = {name: [r for r in unique_ids if r not in cached[name]] for name in encoders}
    missing_sets = {name: set(m) for name, m in missing.items()}
    to_read = [r for r in unique_ids if any(r in m for m in missing_sets.values())]
    skip_log = SkipLog()
    computed = {name: 0 for name in encoders}
    for start in range(0, len(to_read), chunk_records):
        records = {}
        for record_id in to_read[start : start + chunk_records]:
            try:
                records[record_id] = read(record_id)
            except EcgFormatError as err:
                handle_bad_record(err, on_error, skip_log)
        for name, e in encoders.items():
            wanted = missing_sets[name]
            inputs = {
                r: record_windows(x.signal, x.sampling_rate, e.preprocessing, windows[name])
                for r, x in records.items()
                if r in wanted
            }
            cached[name].update(_embed_inputs(e, inputs, batch_size))
            computed[name] += len(inputs)
    out = {}
    for name in encoders:
        if cache_files[name] is not None and computed[name]:
            _save_cache(cache_files[name], cached[name], keys[name])
        kept = [r for r in unique_ids if r in cached[name]]
        out[name] = Embeddings(
            record_ids=kept,
            embeddings_WD=np.concatenate([cached[name][r] for r in kept]).astype(np.float32),
            record_of_window_W=np.concatenate(
                [np.full(len(cached[name][r]), n, dtype=np.int64) for n, r in enumerate(kept)]
            ),
            num_cached=len(unique_ids) - len(missing[name]),
            num_computed=computed[name],
            skipped=list(skip_log.skipped),
            cache_file=None if cache_files[name] is None else str(cache_files[name]),
        )
        log.info(
            "%s: embedded %d records, %d from cache", name, computed[name], out[name].num_cached
        )
    return out


def _embed_inputs(
    encoder: FrozenEncoder, inputs: Mapping[str, np.ndarray], batch_size: int
) -> dict[str, np.ndarray]:
    """Record id → `[W, D]`; windows of equal shape are batched together."""
    by_shape: dict[tuple[int, ...], list[tuple[str, int]]] = {}
    for record_id, windows in inputs.items():
        for w in range(len(windows)):
            by_shape.setdefault(windows.shape[1:], []).append((record_id, w))
    out: dict[str, list[np.ndarray | None]] = {r: [None] * len(x) for r, x in inputs.items()}
    for members in by_shape.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            size = min(batch_size, 1 << (len(chunk) - 1).bit_length())
            batch = pad_rows(np.stack([inputs[r][w] for r, w in chunk]).astype(np.float32), size)
            embedded = encoder.embed(batch)[: len(chunk)]
            for (record_id, w), vector in zip(chunk, embedded, strict=True):
                out[record_id][w] = vector
    return {r: np.stack(v) for r, v in out.items()}
