"""grain input pipelines: shuffled, sharded, resumable training batches and padded eval batches.

Batch contract (what the trainer codes against), host-local numpy arrays, b = global batch
size // process count, W the window (samples)::

    signal        [b, W, C] int16 counts (built datasets) or float32 values
    signal_scale  [b]       float32   value = signal · signal_scale (`decode_signals` on device)
    valid_range   [b, 2]    int32     [start, stop) of the real samples; the rest is zero padding
    labels        [b, K]    float32   in {0, 1}
    label_mask    [b, K]    float32   1 = label known
    mask          [b]       float32   1 = real example, 0 = padding (all ones in training)
    record_id     [b]       str       numpy unicode; drop it before `jax.jit` (`device_fields`)

Pair sources (`PatientPairSource`) add `signal_b`, `signal_b_scale` (and `record_id_b`).
Records become windows by one rule (`ecgfm.data.windows.placement`): training crops at a drawn
position, evaluation in the middle; shorter records are centred in zeros.

Training order: one endless stream, epoch e being a permutation of the whole source drawn
from (seed, e); global batch s is stream positions [s·B, (s+1)·B), and process p of P reads
rows [p·b, (p+1)·b) of it. So processes read disjoint shards whose union is the epoch, and
the global batch (each row's record and crop) is the same whatever P is: crop positions are
drawn for the whole global batch from (seed, s). A host augmentation draws from a generator
seeded by (seed, epoch, record index). Nothing depends on the process count, the worker count
or where a run was resumed; the iterator's `get_state()` / `set_state()` resume exactly, also
in a new process.

The host does little per exam: one batched read of the stored bytes, one copy of each
window's int16 counts into the batch (in shared memory when worker processes prepare
batches, so no copy crosses processes).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, Protocol

import grain
import jax
import numpy as np

from ecgfm.data import windows
from ecgfm.data.sources import Element, Source, signal_mv

STRING_KEYS = ("record_id", "record_id_b", "patient_id")
SIGNAL_KEYS = ("signal", "signal_b")
# Read-ahead per process: batches in flight and the threads preparing them (numpy and
# array_record release the GIL while copying and reading).
PREFETCH_BATCHES = 4
PREFETCH_THREADS = 2


class Augment(Protocol):
    """A picklable transform of one decoded training element, given its own generator."""

    def __call__(self, element: Element, rng: np.random.Generator) -> Element: ...


def device_fields(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch without its string fields (record ids), which cannot go to devices."""
    return {k: v for k, v in batch.items() if k not in STRING_KEYS}


def _new_array(shape: tuple[int, ...], dtype: Any, shared: bool) -> np.ndarray:
    """A zero-filled array (new shared memory is zero-filled too)."""
    if shared:  # grain passes it to the consuming process by name, without pickling the bytes
        return grain.multiprocessing.SharedMemoryArray(shape, dtype=dtype)
    return np.zeros(shape, dtype)


def assemble_batch(
    elements: Sequence[Element],
    window: int | None,
    positions: Sequence[float | None] | None = None,
    *,
    shared_memory: bool = False,
) -> dict[str, np.ndarray]:
    """Elements → one batch; each signal placed in `window` samples at its row's position.

    With `window` None every signal must have the same length (no padding). Signals keep
    their dtype (int16 counts stay int16) and are copied once, into the batch.
    """
    positions = positions if positions is not None else [None] * len(elements)
    batch: dict[str, np.ndarray] = {}
    for key in elements[0]:
        values = [e[key] for e in elements]
        if key in STRING_KEYS:
            batch[key] = np.asarray(values, dtype=np.str_)
        elif key in SIGNAL_KEYS:
            batch[key], valid = _place_signals(values, window, positions, key, shared_memory)
            if key == "signal":
                batch["valid_range"] = valid
        else:
            batch[key] = np.asarray(values, dtype=np.float32)
    return batch


def _place_signals(
    signals: Sequence[np.ndarray],
    window: int | None,
    positions: Sequence[float | None],
    key: str,
    shared_memory: bool,
) -> tuple[np.ndarray, np.ndarray]:
    lengths = {len(s) for s in signals}
    if window is None:
        if len(lengths) > 1:
            raise ValueError(
                f"cannot batch {key!r} of lengths {sorted(lengths)}: give a window (samples), "
                "e.g. data.preprocessing.num_samples"
            )
        window = lengths.pop()
    dtypes = {s.dtype for s in signals}
    dtype = dtypes.pop() if len(dtypes) == 1 else np.float32
    out_BWC = _new_array((len(signals), window, signals[0].shape[1]), dtype, shared_memory)
    valid_B2 = np.zeros((len(signals), 2), np.int32)
    for row, (signal_TC, position) in enumerate(zip(signals, positions, strict=True)):
        where = windows.placement(len(signal_TC), window, position)
        out_BWC[row, where.window_start : where.window_start + where.length] = signal_TC[
            where.source_start : where.source_start + where.length
        ]
        valid_B2[row] = where.valid
    return out_BWC, valid_B2


def _read(source: Source, indices: Sequence[int]) -> list[Element]:
    """Elements of `indices`, in one batched read where the source offers `__getitems__`."""
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        return [dict(e) for e in getitems(list(indices))]
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


def _decoded(element: Element) -> Element:
    """The element with float32 signals (scale 1), for host-side augmentation."""
    for key in SIGNAL_KEYS:
        if key in element:
            element[key] = signal_mv(element, key)
            element[f"{key}_scale"] = np.float32(1.0)
    return element


class _TrainBatch:
    """Batch number of one process → its batch of the shuffled, sharded epochs.

    Whole batches (not elements) are the grain elements, so a batch is one batched source read
    and one copy of each window into the batch array.
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
        shared_memory: bool,
    ):
        self.source = source
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.batch_size = batch_size
        self.window = window
        self.augment = augment
        self.shared_memory = shared_memory
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

    def _positions(self, step: int) -> np.ndarray:
        """Crop positions in [0, 1) of this process's rows, drawn for the global batch."""
        global_positions = np.random.default_rng([self.seed, step, 1]).random(
            self.batch_size * self.process_count
        )
        first = self.process_index * self.batch_size
        return global_positions[first : first + self.batch_size]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        first = step * self.batch_size
        where = [self.record_index(p) for p in range(first, first + self.batch_size)]
        elements = _read(self.source, [index for _, index in where])
        if self.augment is not None:
            elements = [self._augmented(e, epoch, index) for e, (epoch, index) in zip(
                elements, where, strict=True)]  # fmt: skip
        for element in elements:
            element["mask"] = np.float32(1.0)
        return assemble_batch(
            elements, self.window, self._positions(step).tolist(), shared_memory=self.shared_memory
        )

    def _augmented(self, element: Element, epoch: int, index: int) -> Element:
        rng = np.random.default_rng([self.seed, epoch, index])
        element = _decoded(element)
        if self.window is not None:  # the augmentation sees one window of the record
            for key in SIGNAL_KEYS:
                if key in element:
                    element[key] = windows.fit(element[key], self.window, rng.random())
        return dict(self.augment(element, rng))


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
    (the source and `augment` must pickle; absl flags must be parsed first:
    `absl.flags.FLAGS.mark_as_parsed()`, or grain 0.2's workers crash reading one).
    """
    process_index, process_count, local_batch = _resolve_processes(
        global_batch_size, process_index, process_count
    )
    if len(source) == 0:
        raise ValueError("the source has no records")
    transform = _TrainBatch(
        source, seed, process_index, process_count, local_batch, window, augment, worker_count > 0
    )
    num_batches = (
        sys.maxsize // local_batch
        if num_epochs is None
        else num_epochs * len(source) // global_batch_size
    )
    return _iterate(grain.MapDataset.range(num_batches).map(transform), worker_count)


def padded_rows(num_records: int, first: int, size: int) -> tuple[list[int], np.ndarray]:
    """Rows [first, first + size) of a padded evaluation pass over `num_records` records.

    (the record index of each row, `mask [size]` float32): rows past the end repeat record 0
    (shape-correct) with mask 0, so every batch has the same shape and compiles once.
    """
    rows = np.arange(first, first + size)
    mask = (rows < num_records).astype(np.float32)
    return np.where(rows < num_records, rows, 0).tolist(), mask


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
        indices, mask = padded_rows(len(self.source), first, self.local_batch)
        elements = _read(self.source, indices)
        for element, real in zip(elements, mask, strict=True):
            element["mask"] = real
            if not real:  # padding: labels unknown, ids empty
                element["labels"] = np.zeros_like(element["labels"])
                element["label_mask"] = np.zeros_like(element["label_mask"])
                for key in STRING_KEYS:
                    if key in element:
                        element[key] = ""
        return assemble_batch(elements, self.window)


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
    every process yields ceil(N / G) batches. Records longer than `window` are cut in the
    middle, shorter ones centred in zeros (`valid_range` says where).
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


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """`array` with zero rows appended up to `rows`: evaluation batches keep one shape, so they
    compile once, and a mask (or the row count) says which rows are real."""
    missing = rows - len(array)
    if missing < 0:
        raise ValueError(f"{len(array)} rows do not fit in {rows}")
    if missing == 0:
        return array
    return np.concatenate([array, np.zeros((missing, *array.shape[1:]), array.dtype)])
