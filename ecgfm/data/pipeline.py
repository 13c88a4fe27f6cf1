"""grain input pipelines: shuffled, sharded, resumable training batches and padded eval batches.

Batch contract (what the trainer codes against), host-local numpy arrays, b = global batch
size // process count::

    signal      [b, T, C] float32   prepared as the source's `preprocessing` says
    labels      [b, K]    float32   in {0, 1}
    label_mask  [b, K]    float32   1 = label known
    mask        [b]       float32   1 = real example, 0 = padding (all ones in training)
    record_id   [b]       str       numpy unicode; drop it before `jax.jit`

Pair sources (`PatientPairSource`) add `signal_b` (and `record_id_b`).

Training order: epoch e is a permutation of the whole source drawn from (seed, e), the same
in every process; process p of P takes positions p, p + P, p + 2P, ... of it, so processes
see disjoint shards whose union is the epoch (N mod P records of each epoch, different ones
each epoch, are left out so that every process yields the same number of batches). The crop
and augmentation of an example draw from a generator seeded by (seed, epoch, record index),
so they do not depend on the process count, the worker count or where a run was resumed.
The iterator's `get_state()` / `set_state()` resume exactly, also in a new process.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Protocol

import grain
import jax
import numpy as np

from ecgfm.data.preprocessing import center_crop_or_pad
from ecgfm.data.sources import Element, Source

STRING_KEYS = ("record_id", "record_id_b", "patient_id")


class Augment(Protocol):
    """A picklable transform of one training element, given that element's own generator."""

    def __call__(self, element: Element, rng: np.random.Generator) -> Element: ...


def random_crop(signal_TC: np.ndarray, window: int, rng: np.random.Generator) -> np.ndarray:
    """`[T, C]` → `[window, C]` starting at a uniform offset; shorter signals are centred in 0s."""
    num_samples = signal_TC.shape[0]
    if num_samples <= window:
        return center_crop_or_pad(signal_TC, window)
    start = int(rng.integers(num_samples - window + 1))
    return signal_TC[start : start + window]


def _signal_keys(element: Element) -> list[str]:
    return [k for k in element if k == "signal" or k.startswith("signal_")]


def stack_elements(elements: Sequence[Element]) -> dict[str, np.ndarray]:
    """Stacks elements into a batch; signals of unequal length raise, naming the fix."""
    batch: dict[str, np.ndarray] = {}
    for key in elements[0]:
        values = [e[key] for e in elements]
        if key in STRING_KEYS:
            batch[key] = np.asarray(values, dtype=np.str_)
            continue
        shapes = {np.shape(v) for v in values}
        if len(shapes) > 1:
            raise ValueError(
                f"cannot batch {key!r} of shapes {sorted(shapes)}: pass `window` (samples) "
                "or use a preprocessing spec with a fixed num_samples"
            )
        batch[key] = np.stack(values).astype(np.float32)
    return batch


def _resolve_processes(
    global_batch_size: int, process_index: int | None, process_count: int | None
) -> tuple[int, int, int]:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the "
            f"process count {process_count}"
        )
    return process_index, process_count, global_batch_size // process_count


class _TrainElement:
    """Stream position of one process → its element of the shuffled, sharded epochs."""

    def __init__(
        self,
        source: Source,
        seed: int,
        process_index: int,
        process_count: int,
        window: int | None,
        augment: Augment | None,
    ):
        self.source = source
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.window = window
        self.augment = augment
        self.per_process = len(source) // process_count
        self._cached_order: tuple[int, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cached_order": None}

    def record_index(self, position: int) -> tuple[int, int]:
        """(epoch, source index) of this process's stream position."""
        epoch, k = divmod(position, self.per_process)
        # grain's prefetch threads share this object: read and replace the (epoch, order)
        # pair as one value, so a thread still in epoch e never indexes epoch e+1's order.
        cached = self._cached_order
        if cached is None or cached[0] != epoch:
            cached = (
                epoch,
                np.random.default_rng([self.seed, epoch]).permutation(len(self.source)),
            )
            self._cached_order = cached
        return epoch, int(cached[1][k * self.process_count + self.process_index])

    def __call__(self, position: int) -> Element:
        epoch, index = self.record_index(position)
        element = dict(self.source[index])
        rng = np.random.default_rng([self.seed, epoch, index])
        if self.window is not None:
            for key in _signal_keys(element):
                element[key] = random_crop(element[key], self.window, rng)
        if self.augment is not None:
            element = self.augment(element, rng)
        element["mask"] = np.float32(1.0)
        return element


def _iterate(
    dataset: grain.MapDataset, batch_size: int, worker_count: int
) -> grain.DatasetIterator:
    batched = dataset.batch(batch_size, drop_remainder=True, batch_fn=stack_elements)
    iter_dataset = batched.to_iter_dataset()
    if worker_count > 0:
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count)
        )
    return iter(iter_dataset)


def make_train_iterator(
    source: Source,
    *,
    global_batch_size: int,
    seed: int,
    window: int | None = None,
    augment: Augment | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    num_epochs: int | None = None,
) -> grain.DatasetIterator:
    """Shuffled, process-sharded, cropped, batched training stream (endless if num_epochs None).

    Each process yields its host-local `global_batch_size // process_count` rows; batches run
    across epoch boundaries. `worker_count > 0` prepares batches in spawned worker processes
    (the source and `augment` must pickle; absl flags must be parsed, see shared/STACK.md).
    """
    process_index, process_count, local_batch = _resolve_processes(
        global_batch_size, process_index, process_count
    )
    transform = _TrainElement(source, seed, process_index, process_count, window, augment)
    if transform.per_process == 0:
        raise ValueError(f"source has {len(source)} records, fewer than {process_count} processes")
    length = sys.maxsize if num_epochs is None else num_epochs * transform.per_process
    dataset = grain.MapDataset.range(length).map(transform)
    return _iterate(dataset, local_batch, worker_count)


class _EvalElement:
    """Process-local position → its record of the global batch, or padding past the end."""

    def __init__(
        self,
        source: Source,
        window: int | None,
        process_index: int,
        local_batch: int,
        global_batch: int,
    ):
        self.source = source
        self.window = window
        self.process_index = process_index
        self.local_batch = local_batch
        self.global_batch = global_batch

    def __call__(self, position: int) -> Element:
        step, row = divmod(position, self.local_batch)
        index = step * self.global_batch + self.process_index * self.local_batch + row
        real = index < len(self.source)
        # Padding repeats record 0 (shape-correct) with its labels and mask zeroed.
        element = dict(self.source[index if real else 0])
        if self.window is not None:
            for key in _signal_keys(element):
                element[key] = center_crop_or_pad(element[key], self.window)
        element["mask"] = np.float32(real)
        if not real:
            element["labels"] = np.zeros_like(element["labels"])
            element["label_mask"] = np.zeros_like(element["label_mask"])
            for key in STRING_KEYS:
                if key in element:
                    element[key] = ""
        return element


def make_eval_iterator(
    source: Source,
    *,
    global_batch_size: int,
    window: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
) -> grain.DatasetIterator:
    """Every record exactly once, in source order; the last batch is padded with `mask` 0.

    Global batch s holds records [s·G, (s+1)·G); process p gets rows [p·b, (p+1)·b) of it, so
    every process yields ceil(N / G) batches. Signals longer than `window` are centre-cropped.
    """
    process_index, process_count, local_batch = _resolve_processes(
        global_batch_size, process_index, process_count
    )
    num_steps = -(-len(source) // global_batch_size)
    element = _EvalElement(source, window, process_index, local_batch, global_batch_size)
    dataset = grain.MapDataset.range(num_steps * local_batch).map(element)
    return _iterate(dataset, local_batch, worker_count)


def steps_per_epoch(num_records: int, global_batch_size: int, process_count: int = 1) -> int:
    """Training batches per epoch of `make_train_iterator` (batches may straddle two epochs)."""
    return (num_records // process_count) // (global_batch_size // process_count)
