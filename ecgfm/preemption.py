"""Preemption: SIGTERM (or JAX's preemption service on several hosts) checkpoints and stops."""

from __future__ import annotations

import logging
import pathlib
import signal
from typing import Any

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

# What a preempted run exits with (128 + SIGTERM, as a shell reports a process SIGTERM ended):
# its last step is checkpointed and rerunning the same command continues it.
PREEMPTED_EXIT_CODE = 143


class Preempted(Exception):
    """The run stopped early on SIGTERM (preemption) after checkpointing `step`."""

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, step: int, workdir: pathlib.Path):
        super().__init__(
            f"preempted at step {step}: checkpointed in {workdir}; rerun the same command to "
            "continue"
        )
        self.step = step
        self.workdir = workdir


class Preemption:
    """While entered, SIGTERM is a request to checkpoint and stop at the next step boundary.

    The previous handler comes back on exit, so a notebook or test process that trained is
    still terminated by SIGTERM afterwards.
    """

    def __init__(self):
        self.requested = False
        self._multiprocess = jax.process_count() > 1
        self._previous: Any = None

    def __enter__(self) -> Preemption:
        if not self._multiprocess:  # with several processes JAX's preemption service listens
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        del signum, frame
        log.warning("SIGTERM: will checkpoint and stop at the next step boundary")
        self.requested = True

    def reached(self, step: int) -> bool:
        if self._multiprocess:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested
