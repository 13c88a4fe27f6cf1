"""Multi-process start-up and turning each host's batch into one global array.

One process per host (TPU VM worker, SLURM task, or a local process in tests). Each process
reads its own slice of the global batch; `global_batch` assembles the slices into arrays
sharded over the mesh's data axes without copying data between hosts.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How the processes of a run find each other (`config.distributed`).

    Attributes:
      coordinator_address: host:port of process 0; "" = from `JAX_COORDINATOR_ADDRESS`, or
        auto-detection, or a single process.
      num_processes, process_id: with an address; 0 / -1 = from `JAX_NUM_PROCESSES` /
        `JAX_PROCESS_ID`.
      auto: let JAX detect the cluster (TPU pods, SLURM, MPI) even with one task.
      timeout_s: how long to wait for the other processes.
    """

    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    auto: bool = False
    timeout_s: int = 300


def initialize(dist: DistributedConfig) -> None:
    """Join the process group described by `dist` or the environment.

    Explicit `coordinator_address` / `num_processes` / `process_id` (config, or the
    `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` variables) win; with
    `auto=True`, or on a SLURM job / TPU pod / MPI launch with more than one task, JAX
    auto-detects them. A single process with none of these skips initialisation, as does a
    process that already joined (a second run in the same process).
    """
    if jax.distributed.is_initialized():
        return
    address = dist.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        num_processes = dist.num_processes or int(os.environ["JAX_NUM_PROCESSES"])
        process_id = dist.process_id
        if process_id < 0:  # unset in the config
            process_id = int(os.environ["JAX_PROCESS_ID"])
        log.info("joining %s as process %d of %d", address, process_id, num_processes)
        jax.distributed.initialize(
            address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=dist.timeout_s,
        )
    elif dist.auto or _launched_with_many_tasks():
        log.info("jax.distributed.initialize() with auto-detected cluster")
        jax.distributed.initialize()


def _launched_with_many_tasks() -> bool:
    if "SLURM_JOB_ID" in os.environ:
        return int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if "OMPI_COMM_WORLD_SIZE" in os.environ:
        return int(os.environ["OMPI_COMM_WORLD_SIZE"]) > 1
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def global_batch(
    local_batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding
) -> dict[str, jax.Array]:
    """One global array per field from this process's rows (leading axis = batch)."""
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def is_main_process() -> bool:
    """True on the process that writes logs, metrics and exports."""
    return jax.process_index() == 0
