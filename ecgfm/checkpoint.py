"""Checkpoints (the only module that imports Orbax): train state and data iterator together.

A training checkpoint is one Orbax step directory holding three items: `state` (parameters,
model state such as batch statistics, optimizer state, step, RNG key — a plain pytree), `data`
(each process's grain iterator position as JSON) and `checksum` (what the other two must read
back as). Saving is asynchronous; Orbax writes every item into a temporary directory and renames
it when all are complete, so a process killed mid-save leaves no step behind, and a step on disk
always carries its checksum: the checksum is an item of the same commit, not a file added after.

Integrity. `save` checksums the state on its devices before Orbax copies it out: every array's
elements, as 32-bit words, are mixed with their position and summed modulo 2^32 in two
independent lanes (64 bits per array, `content_checksums`). Integer sums are exact in any
order, so a state saved on 8 devices and restored on 1 checksums the same, and under several
processes each sums its own shards inside one jitted reduction. The same pass checks that every
array is finite: a state holding NaN/Inf is refused (`NonFiniteStateError`) and nothing is
written. The iterator position is hashed (SHA-256, one digest per process). On restore the
arrays read are checksummed again, and the position is compared before it is applied; a
mismatch, or a non-finite array, is damage (`CheckpointDamagedError`), handled like a step whose
files do not read at all. Cost (`benchmarks/checkpoint_checksum.py --rounds 3`, 2026-12-07, the
shared 2-core CPU at load ≈ 4–6): for the 19.3 M numbers of `code15_resnet`'s state (6.4 M
parameters, AdamW moments) the checksum takes 0.30 s (median), Orbax's save alone 0.50 s, the
whole `Checkpointer.save` 0.71 s; it runs at checkpoint steps only. A step without a `checksum`
item was written by an ecgfm from before it was added (Orbax's step metadata lists no such
item): it restores with a warning that it is unverified. One that lacks the item although its
metadata lists it is damaged.

Nothing here deletes a checkpoint that failed to restore. A step that fails while an older one
restores (its files were damaged) is moved to `<directory>/corrupt/<step>` with a warning. When
steps exist but none restores, `CheckpointDamagedError` says so if every one is damaged, else
the state they hold does not fit this config (say, a changed model width) and
`CheckpointMismatchError` says so; either way every step stays where it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"  # inside a run's workdir
_STATE, _DATA, _CHECKSUM = "state", "data", "checksum"
CORRUPT_DIR = "corrupt"
CHECKSUM_ALGORITHM = "ecgfm-sum32x2-v1"  # what `content_checksums` computes; bump on change
_STEP_METADATA = "_CHECKPOINT_METADATA"  # Orbax's per-step metadata file


class CheckpointMismatchError(RuntimeError):
    """A directory holds checkpoints, but none restores onto the state this config builds."""


class CheckpointDamagedError(RuntimeError):
    """A step's content differs from the checksum saved with it, or holds NaN/Inf."""


class NoCheckpointError(FileNotFoundError):
    """A checkpoint directory (or a run's workdir) holds no finished checkpoint."""


class NonFiniteStateError(FloatingPointError):
    """`Checkpointer.save` was given a state with NaN/Inf arrays; nothing was written."""


# ---------------------------------------------------------------------------------------------
# Content checksums


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's finaliser: every input bit flips each output bit with probability ~1/2."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
    """`x`'s bits as uint32 words (one per element; two for 64-bit types)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf_checksum(x: Any) -> jax.Array:
    """uint32[2]: the checksum of one array.

    Lane 0 weights each word by an odd number (2i + 1): a change of any single word changes
    it, always. Lane 1 sums the mixed word and position, so that compensating changes of
    several words are caught too (but for a chance of 2^-32).
    """
    words = _words(jnp.asarray(x))
    position = jnp.arange(words.size, dtype=jnp.uint32).reshape(words.shape)
    lane0 = jnp.sum(words * (position * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
    lane1 = jnp.sum(_fmix32(words ^ (position * jnp.uint32(0x9E3779B9))), dtype=jnp.uint32)
    return jnp.stack([lane0, lane1])


def _leaf_finite(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    inexact = jnp.issubdtype(x.dtype, jnp.inexact)
    return jnp.all(jnp.isfinite(x)) if inexact else jnp.bool_(True)


@jax.jit
def _summaries(tree: Any) -> tuple[Any, Any]:
    # One pass over the state: XLA fuses the two maps' reads of each array.
    return jax.tree.map(_leaf_checksum, tree), jax.tree.map(_leaf_finite, tree)


@jax.jit
def _finite(tree: Any) -> Any:
    return jax.tree.map(_leaf_finite, tree)


def _host(x: jax.Array) -> np.ndarray:
    # A replicated result: under several processes, this process's copy.
    return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


def _leaf_name(path: tuple) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def content_checksums(tree: Any) -> tuple[dict[str, str], list[str]]:
    """({array path: 16 hex digits}, paths of arrays holding NaN/Inf) of a pytree of arrays.

    Computed where the arrays live (one jitted reduction; sharded arrays are never gathered);
    the same for any device layout of the same values.
    """
    sums, finite = _summaries(tree)
    checksums = {
        _leaf_name(path): "".join(f"{int(w):08x}" for w in _host(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(sums)[0]
    }
    return checksums, _not_finite(finite)


def non_finite_arrays(tree: Any) -> list[str]:
    """Paths of the arrays of `tree` that hold NaN/Inf (checked where they live)."""
    return _not_finite(_finite(tree))


def _not_finite(finite: Any) -> list[str]:
    """Paths of the False leaves of a pytree of `_leaf_finite` flags."""
    flags = jax.tree_util.tree_flatten_with_path(finite)[0]
    return [_leaf_name(path) for path, flag in flags if not bool(_host(flag))]


def brief_error(err: BaseException, limit: int = 300) -> str:
    """`Type: first line` of an error, cut to `limit` characters (Orbax's and tensorstore's
    messages carry whole pytrees and JSON specs)."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(err).__name__}: {text[:limit]}{'…' if len(text) > limit else ''}"


def listing(names: list[str], limit: int = 5) -> str:
    """The first `limit` names, comma-separated, and how many more there are."""
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _position_digests(position: bytes) -> list[str]:
    """SHA-256 of each process's iterator position, in process order (a collective)."""
    digest = hashlib.sha256(position).digest()
    if jax.process_count() == 1:
        return [digest.hex()]
    gathered = multihost_utils.process_allgather(np.frombuffer(digest, np.uint8))
    return [bytes(row.tolist()).hex() for row in np.asarray(gathered)]


def _all_processes(ok: bool) -> bool:
    """Whether `ok` holds on every process (so that all take the same branch)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


# ---------------------------------------------------------------------------------------------
# The iterator position, as grain's checkpoint handler sees it


class _Position:
    """An iterator position fixed when the save starts (grain's handler asks for bytes)."""

    def __init__(self, position: bytes):
        self.position = position

    def get_state(self) -> bytes:
        return self.position


class _IteratorState:
    """Presents any iterator with dict `get_state`/`set_state` to grain's checkpoint handler.

    grain's handler stores the bytes of `get_state()` for iterators that are not grain datasets;
    ours may wrap a grain iterator, so we JSON-encode the state ourselves. On restore the bytes
    are compared with the digest saved beside them before the iterator moves.
    """

    def __init__(self, iterator: Any, expected_digest: str | None = None, where: str = ""):
        self.iterator = iterator
        self.expected_digest = expected_digest
        self.where = where

    def get_state(self) -> bytes:
        return json.dumps(self.iterator.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        digest = hashlib.sha256(state).hexdigest()
        if self.expected_digest is not None and digest != self.expected_digest:
            shown = state[:120].decode(errors="replace")
            raise CheckpointDamagedError(
                f"{self.where}: the data iterator position {shown!r} is not the one saved (its "
                "SHA-256 differs from the checksum): the file was changed after it was written"
            )
        self.iterator.set_state(json.loads(state.decode()))

    def start_prefetch(self) -> None:
        if hasattr(self.iterator, "start_prefetch"):
            self.iterator.start_prefetch()


# ---------------------------------------------------------------------------------------------
# Restoring one step


def _saved_checksum(manager: ocp.CheckpointManager, step_dir: pathlib.Path, step: int) -> Any:
    """The step's checksum record; None for a step an older ecgfm wrote (no such item)."""
    if (step_dir / _CHECKSUM).is_dir():
        only_checksum = ocp.args.Composite(**{_CHECKSUM: ocp.args.JsonRestore()})
        record = manager.restore(step, args=only_checksum)[_CHECKSUM]
        if not isinstance(record, dict) or record.get("algorithm") != CHECKSUM_ALGORITHM:
            algorithm = record.get("algorithm") if isinstance(record, dict) else None
            raise CheckpointDamagedError(
                f"{step_dir}: its checksum record is unreadable or of an unknown algorithm "
                f"({algorithm!r}; this ecgfm computes {CHECKSUM_ALGORITHM!r})"
            )
        return record
    try:
        metadata = json.loads((step_dir / _STEP_METADATA).read_text())
        listed = _CHECKSUM in metadata.get("item_handlers", {})
    except (OSError, ValueError, AttributeError):
        listed = True  # unreadable metadata: no evidence this step predates checksums
    if listed:
        raise CheckpointDamagedError(f"{step_dir}: its checksum item is missing")
    log.warning(
        "checkpoint %s has no checksum (written by an older ecgfm): restoring it unverified",
        step_dir,
    )
    return None


def _verify(state: Any, record: Any, step_dir: pathlib.Path) -> None:
    checksums, non_finite = content_checksums(state)
    if record is not None:
        saved = record.get("state") or {}
        changed = [name for name, value in checksums.items() if saved.get(name) != value]
        if changed:
            raise CheckpointDamagedError(
                f"{step_dir}: {len(changed)} array(s) read back differ from the checksum saved "
                f"with them ({listing(changed)}): the files were changed after they were written"
            )
    if non_finite:
        raise CheckpointDamagedError(
            f"{step_dir}: {len(non_finite)} array(s) hold NaN/Inf ({listing(non_finite)})"
        )


def _restore(
    manager: ocp.CheckpointManager,
    step_dir: pathlib.Path,
    step: int,
    target: Any,
    data_iterator: Any = None,
    *,
    partial: bool = False,
) -> Any:
    """The `state` item of `step` laid out as `target` says, verified against its checksum;
    repositions `data_iterator` (after checking the position)."""
    record = _saved_checksum(manager, step_dir, step)
    if partial:
        state_args = ocp.args.PyTreeRestore(
            target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        )
    else:
        state_args = ocp.args.StandardRestore(target)
    args = {_STATE: state_args}
    if data_iterator is not None:
        expected = None
        if record is not None:
            digests = record.get("data") or []
            if len(digests) != jax.process_count():
                raise CheckpointDamagedError(
                    f"{step_dir}: its checksum lists {len(digests)} iterator position(s), this "
                    f"run has {jax.process_count()} process(es)"
                )
            expected = digests[jax.process_index()]
        iterator = _IteratorState(data_iterator, expected, str(step_dir / _DATA))
        args[_DATA] = grain.checkpoint.CheckpointRestore(iterator)
    state = manager.restore(step, args=ocp.args.Composite(**args))[_STATE]
    _verify(state, record, step_dir)
    return state


def _none_restores(directory: pathlib.Path, failed: list[tuple[int, Exception]]) -> Exception:
    """The error for a directory whose steps `failed` (newest first) all failed to restore."""
    steps = ", ".join(str(s) for s, _ in failed)
    step, err = failed[0]
    if all(isinstance(e, CheckpointDamagedError) for _, e in failed):
        return CheckpointDamagedError(
            f"every checkpoint in {directory} (steps {steps}) is damaged; the newest: {err}. "
            "Nothing was moved or deleted: move the directory away to start the run again."
        )
    return CheckpointMismatchError(
        f"none of the checkpoints in {directory} (steps {steps}) restores onto the state this "
        f"config builds; the newest, step {step}, fails with {brief_error(err)}. The "
        "workdir's checkpoints do not match this config (a changed model, optimizer or number "
        "of classes?): rerun with the config the run was started with (see config.json in the "
        "workdir), or train in a new --workdir. Nothing was deleted."
    )


def _try_restore(restore: Any, directory: pathlib.Path, step: int) -> tuple[Any, Exception | None]:
    """(state, None) or (None, error); every process fails if any does."""
    try:
        state, error = restore(), None
    except Exception as err:  # Orbax and tensorstore raise many types for bad files
        state, error = None, err
    if not _all_processes(error is None) and error is None:
        where = directory / str(step)
        state, error = None, CheckpointDamagedError(f"{where}: another process failed to read it")
    if error is not None:
        log.warning(
            "checkpoint step %d in %s does not restore (%s); trying an older step",
            step, directory, brief_error(error, limit=1000),
        )  # fmt: skip
    return state, error


# ---------------------------------------------------------------------------------------------
# A run's checkpoints


class Checkpointer:
    """Saves the steps it is given (the caller decides when), keeps the latest `keep`."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        """Finalized steps on disk, oldest first (unfinished temporary saves are not listed)."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        """Start saving `state`, the iterator position (None: no data stream) and their checksum
        at `step`; raises `NonFiniteStateError` (writing nothing) if an array holds NaN/Inf."""
        checksums, non_finite = content_checksums(state)
        if non_finite:
            raise NonFiniteStateError(
                f"not checkpointing step {step} in {self.directory}: {len(non_finite)} array(s) "
                f"of the state hold NaN/Inf ({listing(non_finite)}); nothing was written, the "
                "newest checkpoint is the last finite state"
            )
        record: dict[str, Any] = {"algorithm": CHECKSUM_ALGORITHM, "state": checksums}
        args = {_STATE: ocp.args.StandardSave(state)}
        if data_iterator is not None:
            position = json.dumps(data_iterator.get_state()).encode()
            args[_DATA] = grain.checkpoint.CheckpointSave(_Position(position))
            record["data"] = _position_digests(position)
        args[_CHECKSUM] = ocp.args.JsonSave(record)
        self._manager.save(step, args=ocp.args.Composite(**args), force=True)

    def restore_latest(self, target: Any, data_iterator: Any) -> tuple[Any, int] | None:
        """(state, step) from the newest step that restores; None when the directory is empty.

        `target` is the state's abstract pytree whose leaves are `jax.ShapeDtypeStruct`s with a
        sharding: the state is laid out on the current mesh whatever mesh saved it. The iterator
        is repositioned in place. A step restores when Orbax reads it onto `target` and what it
        read matches the checksum saved with it and is finite. Newer steps that failed are moved
        to `corrupt/` once an older one has restored; if none restores, raises
        `CheckpointDamagedError` (all damaged) or `CheckpointMismatchError` and moves nothing.
        """
        failed: list[tuple[int, Exception]] = []
        for step in reversed(self.all_steps()):
            step_dir = self.directory / str(step)
            state, error = _try_restore(
                lambda: _restore(self._manager, step_dir, step, target, data_iterator),  # noqa: B023
                self.directory, step,
            )  # fmt: skip
            if error is not None:
                failed.append((step, error))
                continue
            for bad_step, _ in failed:
                self._move_aside(bad_step)
            return state, step
        if failed:
            raise _none_restores(self.directory, failed) from failed[0][1]
        return None

    def _move_aside(self, step: int) -> None:
        destination = self.directory / CORRUPT_DIR / str(step)
        if jax.process_index() == 0:  # the directory is shared: one process moves it
            destination.parent.mkdir(parents=True, exist_ok=True)
            attempt = 1
            while destination.exists():  # the same step damaged again after being redone
                destination = self.directory / CORRUPT_DIR / f"{step}.{attempt}"
                attempt += 1
            (self.directory / str(step)).rename(destination)
            log.warning("moved checkpoint step %d that does not restore to %s", step, destination)
        multihost_utils.sync_global_devices(f"checkpoint step {step} moved aside")
        self._manager.reload()

    def wait_until_finished(self) -> None:
        """Block until the last asynchronous save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.close()


def restore_state(path: str | pathlib.Path, target: Any, *, partial: bool = False) -> Any:
    """The `state` item of the newest intact checkpoint under a checkpoint directory `path`.

    With `partial`, `target` may hold a part of the state (e.g. only the encoder's parameters):
    only those arrays are read, and only they are verified. Damaged newer steps are skipped with
    a warning but never moved (the directory may be another run's). Raises `NoCheckpointError`
    when there is no finished step, and as `Checkpointer.restore_latest` when none restores.
    """
    path = pathlib.Path(path).absolute()
    if not path.is_dir():
        raise NoCheckpointError(f"no checkpoint directory at {path}")
    handlers = None  # Orbax picks each item's handler from the restore arguments
    if partial:
        handlers = {_STATE: ocp.PyTreeCheckpointHandler(), _CHECKSUM: ocp.JsonCheckpointHandler()}
    manager = ocp.CheckpointManager(
        path, options=ocp.CheckpointManagerOptions(read_only=True), item_handlers=handlers
    )
    try:
        failed: list[tuple[int, Exception]] = []
        for step in sorted(manager.all_steps(), reverse=True):
            state, error = _try_restore(
                lambda: _restore(manager, path / str(step), step, target, partial=partial),  # noqa: B023
                path, step,
            )  # fmt: skip
            if error is None:
                return state
            failed.append((step, error))
        if failed:
            raise _none_restores(path, failed) from failed[0][1]
        raise NoCheckpointError(f"no finished checkpoint under {path}")
    finally:
        manager.close()


def save_tree(path: str | pathlib.Path, tree: Any) -> None:
    """Write a pytree of arrays to the new directory `path` (Orbax format, no pickle)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(pathlib.Path(path).absolute(), tree)


def restore_tree(path: str | pathlib.Path, target: Any) -> Any:
    """Read a `save_tree` pytree onto `target` (abstract leaves; a sharding places them)."""
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(pathlib.Path(path).absolute(), target)


def abstract_like(tree: Any, shardings: Any) -> Any:
    """`jax.ShapeDtypeStruct` leaves carrying the given shardings, as Orbax targets need."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
