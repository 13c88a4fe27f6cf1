"""grain input pipelines: shuffled, sharded, resumable training batches and padded eval batches.

Batch contract (what the trainer codes against), host-local numpy arrays, b = global batch
size // process count::

    signal      [b, T, C] float32   prepared as the source's `preprocessing` says
    labels      [b, K]    float32   in {0, 1}
    label_mask  [b, K]    float32   1 = label known
    mask        [b]       float32   1 = real example, 0 = padding (all ones in training)
    record_id   [b]       str       numpy unicode; drop it before `jax.jit`

Pair sources (`PatientPairSource`) add `signal_b` (and `record_id_b`).

Training order: one endless stream, epoch e being a permutation of the whole source drawn
from (seed, e); global batch s is stream positions [s·B, (s+1)·B), and process p of P reads
rows [p·b, (p+1)·b) of it. So processes read disjoint shards whose union is the epoch, and
the global batch (each row's record, crop and dropout key) is the same whatever P is. The crop
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

from ecgfm.data.preprocessing import center_crop_or_pad, valid_range
from ecgfm.data.sources import Element, ScaledCounts, Source

STRING_KEYS = ("record_id", "record_id_b", "patient_id")
# Read-ahead per process: batches in flight and the threads preparing them (numpy and
# array_record release the GIL while copying and decompressing).
PREFETCH_BATCHES = 4
PREFETCH_THREADS = 2


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


def stack_elements(
    elements: Sequence[Element], *, window: int | None = None
) -> dict[str, np.ndarray]:
    """Stacks elements into a batch; signals of unequal length raise, naming the fix.

    With `window`, signals of at most `window` samples are centred in zeros as they are copied
    into the batch (as `center_crop_or_pad` would, without a copy per element).
    """
    batch: dict[str, np.ndarray] = {}
    for key in elements[0]:
        values = [e[key] for e in elements]
        if key in STRING_KEYS:
            batch[key] = np.asarray(values, dtype=np.str_)
            continue
        if window is not None and (key == "signal" or key.startswith("signal_")):
            batch[key] = _pad_into_batch(values, window)
            continue
        shapes = {np.shape(v) for v in values}
        if len(shapes) > 1:
            raise ValueError(
                f"cannot batch {key!r} of shapes {sorted(shapes)}: pass `window` (samples) "
                "or use a preprocessing spec with a fixed num_samples"
            )
        batch[key] = np.stack(values, dtype=np.float32)
    return batch


def _pad_into_batch(signals: Sequence[np.ndarray], window: int) -> np.ndarray:
    """`[T_i, C]` signals with T_i <= window → `[B, window, C]` float32, each centred in zeros."""
    lengths = {len(s) for s in signals}
    if max(lengths) > window:
        raise ValueError(f"cannot batch signals of {max(lengths)} samples into window {window}")
    out_BTC = np.zeros((len(signals), window, *signals[0].shape[1:]), np.float32)
    for row_TC, signal_TC in zip(out_BTC, signals, strict=True):
        start, stop = valid_range(len(signal_TC), window)
        if isinstance(signal_TC, ScaledCounts):
            signal_TC.decode_into(row_TC[start:stop])
        else:
            row_TC[start:stop] = signal_TC
    return out_BTC


def _read(source: Source, indices: Sequence[int], undecoded: bool = False) -> list[Element]:
    """Elements of `indices`, in one batched read where the source offers `__getitems__`.

    `undecoded` lets signals stay `ScaledCounts` where the source can (decoded when stacked).
    """
    getitems = getattr(source, "getitems_undecoded" if undecoded else "__getitems__", None)
    if getitems is None:
        getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        return [dict(e) for e in getitems(indices)]
    return [dict(source[i]) for i in indices]


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


class _TrainBatch:
    """Batch number of one process → its batch of the shuffled, sharded epochs.

    Whole batches (not elements) are the grain elements, so a batch is one batched source read
    and one copy of each signal into the batch array.
    """

    def __init__(
        self,
        source: Source,
        seed: int,
        process_index: int,
        process_count: int,
        batch_size: int,
        window: int | None,
        augment: Augment | None,
    ):
        self.source = source
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.batch_size = batch_size
        self.window = window
        self.augment = augment
        self._orders: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_orders": {}}

    def _order(self, epoch: int) -> np.ndarray:
        # grain's prefetch threads share this object and a batch may straddle two epochs:
        # keep the last two orders, replacing the dict as one value so no thread sees it half
        # updated.
        orders = self._orders
        if epoch not in orders:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
            orders = {e: o for e, o in orders.items() if e >= epoch - 1} | {epoch: order}
            self._orders = orders
        return orders[epoch]

    def record_index(self, position: int) -> tuple[int, int]:
        """(epoch, source index) of this process's stream position.

        Process p's rows of global batch s are rows [p·b, (p+1)·b) of the batch a single
        process would read: the global batch, and so each row's dropout key, does not depend on
        how many processes read it.
        """
        step, row = divmod(position, self.batch_size)
        stream = (step * self.process_count + self.process_index) * self.batch_size + row
        epoch, k = divmod(stream, len(self.source))
        return epoch, int(self._order(epoch)[k])

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        first = step * self.batch_size
        where = [self.record_index(p) for p in range(first, first + self.batch_size)]
        # Without an augmentation, signals may stay int16 counts until copied into the batch.
        undecoded = self.window is not None and self.augment is None
        elements = _read(self.source, [index for _, index in where], undecoded)
        for row, (epoch, index) in enumerate(where):
            element = elements[row]
            if self.window is not None or self.augment is not None:
                rng = np.random.default_rng([self.seed, epoch, index])
                element = self._crop_and_augment(element, rng)
            element["mask"] = np.float32(1.0)
            elements[row] = element
        return stack_elements(elements, window=self.window)

    def _crop_and_augment(self, element: Element, rng: np.random.Generator) -> Element:
        if self.window is not None:
            for key in _signal_keys(element):
                if len(element[key]) > self.window:
                    element[key] = random_crop(element[key], self.window, rng)
                elif self.augment is not None:
                    # The augmentation sees the padded window; otherwise stacking pads.
                    element[key] = center_crop_or_pad(element[key], self.window)
        return element if self.augment is None else dict(self.augment(element, rng))


def _iterate(dataset: grain.MapDataset, worker_count: int) -> grain.DatasetIterator:
    # grain's default read-ahead (16 threads, 500 elements) would hold 500 batches (6 GB of
    # 64 x 4096 x 12 float32) whenever the consumer is slower than the reader.
    options = grain.ReadOptions(num_threads=PREFETCH_THREADS, prefetch_buffer_size=PREFETCH_BATCHES)
    iter_dataset = dataset.to_iter_dataset(options)
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
    transform = _TrainBatch(
        source, seed, process_index, process_count, local_batch, window, augment
    )
    if len(source) == 0:
        raise ValueError("the source has no records")
    num_batches = (
        sys.maxsize // local_batch
        if num_epochs is None
        else num_epochs * len(source) // global_batch_size
    )
    return _iterate(grain.MapDataset.range(num_batches).map(transform), worker_count)


class _EvalBatch:
    """Process-local batch number → its rows of the global batch, padded past the end."""

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

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        first = step * self.global_batch + self.process_index * self.local_batch
        indices = range(first, first + self.local_batch)
        real = [index < len(self.source) for index in indices]
        # Padding repeats record 0 (shape-correct) with its labels and mask zeroed.
        elements = _read(
            self.source,
            [index if ok else 0 for index, ok in zip(indices, real, strict=True)],
            undecoded=self.window is not None,
        )
        for element, ok in zip(elements, real, strict=True):
            if self.window is not None:
                for key in _signal_keys(element):
                    # The middle window, as `center_crop_or_pad` cuts it; shorter ones are
                    # centred in zeros when stacked.
                    start = max(len(element[key]) - self.window, 0) // 2
                    element[key] = element[key][start : start + self.window]
            element["mask"] = np.float32(ok)
            if not ok:
                element["labels"] = np.zeros_like(element["labels"])
                element["label_mask"] = np.zeros_like(element["label_mask"])
                for key in STRING_KEYS:
                    if key in element:
                        element[key] = ""
        return stack_elements(elements, window=self.window)


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
    batches = _EvalBatch(source, window, process_index, local_batch, global_batch_size)
    return _iterate(grain.MapDataset.range(num_steps).map(batches), worker_count)


def steps_per_epoch(num_records: int, global_batch_size: int, process_count: int = 1) -> int:
    """Training batches per epoch of `make_train_iterator` (batches may straddle two epochs)."""
    return (num_records // process_count) // (global_batch_size // process_count)
