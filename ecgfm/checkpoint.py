"""Checkpoints (the only module that imports Orbax): train state and data iterator together.

A training checkpoint is one Orbax step directory holding two items: `state` (parameters,
model state such as batch statistics, optimizer state, step, RNG key — a plain pytree) and
`data` (each process's grain iterator position as JSON). Saving is asynchronous; Orbax writes
into a temporary directory and renames it when complete, so a process killed mid-save leaves
no step behind.

Nothing here deletes a checkpoint that failed to restore. A step that fails while an older one
restores (its files were damaged) is moved to `<directory>/corrupt/<step>` with a warning. When
steps exist but none restores, the state they hold does not fit this config (say, a changed
model width): `CheckpointMismatchError` says so and every step stays where it was.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"  # inside a run's workdir
_STATE, _DATA = "state", "data"
CORRUPT_DIR = "corrupt"


class CheckpointMismatchError(RuntimeError):
    """A directory holds checkpoints, but none restores onto the state this config builds."""


class _IteratorState:
    """Presents any iterator with dict `get_state`/`set_state` to grain's checkpoint handler.

    grain's handler stores the bytes of `get_state()` for iterators that are not grain datasets;
    ours may wrap a grain iterator, so we JSON-encode the state ourselves.
    """

    def __init__(self, iterator: Any):
        self.iterator = iterator

    def get_state(self) -> bytes:
        return json.dumps(self.iterator.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        self.iterator.set_state(json.loads(state.decode()))

    def start_prefetch(self) -> None:
        if hasattr(self.iterator, "start_prefetch"):
            self.iterator.start_prefetch()


def _restore(
    manager: ocp.CheckpointManager,
    step: int,
    target: Any,
    data_iterator: Any = None,
    *,
    partial: bool = False,
) -> Any:
    """The `state` item of `step` laid out as `target` says; repositions `data_iterator`."""
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
        args[_DATA] = grain.checkpoint.CheckpointRestore(_IteratorState(data_iterator))
    return manager.restore(step, args=ocp.args.Composite(**args))[_STATE]


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
        """Start saving `state` and the iterator position (None: no data stream) at `step`."""
        args = {_STATE: ocp.args.StandardSave(state)}
        if data_iterator is not None:
            args[_DATA] = grain.checkpoint.CheckpointSave(_IteratorState(data_iterator))
        self._manager.save(step, args=ocp.args.Composite(**args), force=True)

    def restore_latest(self, target: Any, data_iterator: Any) -> tuple[Any, int] | None:
        """(state, step) from the newest step that restores; None when the directory is empty.

        `target` is the state's abstract pytree whose leaves are `jax.ShapeDtypeStruct`s with a
        sharding: the state is laid out on the current mesh whatever mesh saved it. The iterator
        is repositioned in place. Newer steps that failed are moved to `corrupt/` once an older
        one has restored; if none restores, raises `CheckpointMismatchError` (from the newest
        step's error) and moves nothing.
        """
        failed: list[tuple[int, Exception]] = []
        for step in reversed(self.all_steps()):
            try:
                state = _restore(self._manager, step, target, data_iterator)
            except Exception as err:  # Orbax and tensorstore raise many types for bad files
                log.warning(
                    "checkpoint step %d in %s does not restore (%s: %s); trying an older step",
                    step, self.directory, type(err).__name__, err,
                )  # fmt: skip
                failed.append((step, err))
                continue
            for bad_step, _ in failed:
                self._move_aside(bad_step)
            return state, step
        if failed:
            step, err = failed[0]
            raise CheckpointMismatchError(
                f"none of the checkpoints in {self.directory} (steps "
                f"{', '.join(str(s) for s, _ in failed)}) restores onto the state this config "
                f"builds; the newest, step {step}, fails with {type(err).__name__}: {err}. The "
                "workdir's checkpoints do not match this config (a changed model, optimizer or "
                "number of classes?): rerun with the config the run was started with (see "
                "config.json in the workdir), or train in a new --workdir. Nothing was deleted."
            ) from err
        return None

    def _move_aside(self, step: int) -> None:
        destination = self.directory / CORRUPT_DIR / str(step)
        if jax.process_index() == 0:  # the directory is shared: one process moves it
            destination.parent.mkdir(parents=True, exist_ok=True)
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
    """The `state` item of the newest checkpoint under a workdir's checkpoint directory `path`.

    With `partial`, `target` may hold a part of the state (e.g. only the encoder's parameters):
    only those arrays are read.
    """
    path = pathlib.Path(path).absolute()
    handlers = {_STATE: ocp.PyTreeCheckpointHandler()} if partial else None
    manager = ocp.CheckpointManager(
        path, options=ocp.CheckpointManagerOptions(read_only=True), item_handlers=handlers
    )
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {path}")
        return _restore(manager, step, target, partial=partial)
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
