"""Checkpoints (the only module that imports Orbax): train state and data iterator together.

A training checkpoint is one Orbax step directory holding two items: `state` (parameters,
model state such as batch statistics, optimizer state, step, RNG key — a plain pytree) and
`data` (each process's grain iterator position as JSON). Saving is asynchronous; Orbax writes
into a temporary directory and renames it when complete, so a process killed mid-save leaves
no step behind. A finalized step whose files are damaged fails to restore: we warn, delete it
and fall back to the previous step.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

log = logging.getLogger(__name__)

_STATE, _DATA = "state", "data"


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


class Checkpointer:
    """Saves every `save_every` steps (or when forced), keeps the latest `keep` steps."""

    def __init__(
        self, directory: str | pathlib.Path, *, save_every: int, keep: int, async_save: bool = True
    ):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=checkpoint_managers.FixedIntervalPolicy(save_every),
            preservation_policy=checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        """Finalized steps on disk, oldest first (unfinished temporary saves are not listed)."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any, *, force: bool = False) -> bool:
        """Start saving `state` and the iterator position at `step` if due (or `force`)."""
        args = {_STATE: ocp.args.StandardSave(state)}
        if data_iterator is not None:
            args[_DATA] = grain.checkpoint.CheckpointSave(_IteratorState(data_iterator))
        return self._manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore_latest(self, target: Any, data_iterator: Any) -> tuple[Any, int] | None:
        """(state, step) from the newest step that restores; damaged steps are deleted.

        `target` is the state's abstract pytree whose leaves are `jax.ShapeDtypeStruct`s with a
        sharding: the state is laid out on the current mesh whatever mesh saved it. The iterator
        is repositioned in place. None when no step restores.
        """
        for step in reversed(self.all_steps()):
            try:
                state = self._restore(step, target, data_iterator)
            except Exception as err:
                log.warning(
                    "checkpoint step %d in %s does not restore (%s: %s); deleting it and "
                    "falling back to the previous step",
                    step, self.directory, type(err).__name__, err,
                )  # fmt: skip
                self._manager.delete(step)
                continue
            return state, step
        return None

    def _restore(self, step: int, target: Any, data_iterator: Any) -> Any:
        args = {_STATE: ocp.args.StandardRestore(target)}
        if data_iterator is not None:
            args[_DATA] = grain.checkpoint.CheckpointRestore(_IteratorState(data_iterator))
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        return restored[_STATE]

    def wait_until_finished(self) -> None:
        """Block until the last asynchronous save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.close()


def restore_state(path: str | pathlib.Path, target: Any) -> Any:
    """The `state` item of the newest checkpoint under a workdir's checkpoint directory `path`."""
    path = pathlib.Path(path).absolute()
    manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {path}")
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
    restored = manager.restore(step, args=args)
    manager.close()
    return restored[_STATE]


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
