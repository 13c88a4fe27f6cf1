"""Frozen-encoder embeddings of dataset records, cached on disk.

Pooling: an encoder's `embedding_BD` (each encoder documents it; the CNNs average their last
stage's features over time, the ViT its tokens), computed with `train=False`: dropout and any
masking off, BatchNorm on its running statistics (`ecgfm.encoder.POOLING`). Inputs are the
records' windows (`windows.record_windows`: the record preprocessed whole, then cut), each
one encoder input, whatever length the encoder was pretrained on.

The cache is one `.npz` per key, the SHA-256 of: the checkpoint hash, the preprocessing spec,
the dataset id (dataset, resolved root, files' sampling rate), window and stride in samples,
and the pooling. It holds every record embedded so far under that key; a request embeds only
the records missing from it and rewrites the file atomically (a unique temporary file, then
a rename: concurrent runs do not corrupt it, the last one's file wins). Record signals under
a root are assumed not to change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ecgfm.atomic import replace_atomically, write_text_atomically
from ecgfm.data.pipeline import pad_rows
from ecgfm.data.record import EcgFormatError, OnError, SkipLog, handle_bad_record
from ecgfm.encoder import POOLING, Encoder
from ecgfm.transfer.windows import Windowing, record_windows

log = logging.getLogger(__name__)

_CACHE_FORMAT = 1


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
    encoder: Encoder, dataset_id: str, window: tuple[int, int] | None
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


def _load_cache(path: pathlib.Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path) as f:
        ids, emb, owner = f["record_ids"], f["embeddings_WD"], f["record_of_window_W"]
    return {str(r): emb[owner == n] for n, r in enumerate(ids)}


def _save_cache(path: pathlib.Path, per_record: Mapping[str, np.ndarray], key: dict) -> None:
    ids = sorted(per_record)
    arrays = {
        "record_ids": np.array(ids),
        "embeddings_WD": np.concatenate([per_record[r] for r in ids]),
        "record_of_window_W": np.concatenate(
            [np.full(len(per_record[r]), n) for n, r in enumerate(ids)]
        ),
    }
    replace_atomically(path, lambda f: np.savez(f, **arrays))
    write_text_atomically(
        path.with_suffix(".json"), json.dumps(key, indent=2, sort_keys=True) + "\n"
    )


def embed_records(
    encoders: Mapping[str, Encoder],
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
    `batch_size` (a last, smaller batch padded to the next power of two: few compilations).
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
    encoder: Encoder, inputs: Mapping[str, np.ndarray], batch_size: int
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
            embedded = encoder.embed_inputs(batch)[: len(chunk)]
            for (record_id, w), vector in zip(chunk, embedded, strict=True):
                out[record_id][w] = vector
    return {r: np.stack(v) for r, v in out.items()}
