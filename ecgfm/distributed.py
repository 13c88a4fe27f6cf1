"""Multi-process start-up and turning each host's batch into one global array.

One process per host (TPU VM worker, SLURM task, or a local process in tests). Each process
reads its own slice of the global batch; `global_batch` assembles the slices into arrays
sharded over the mesh's data axes without copying data between hosts.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from ml_collections import ConfigDict

log = logging.getLogger(__name__)


def initialize(config: ConfigDict) -> None:
    """Join the process group described by `config.distributed` or the environment.

    Explicit `coordinator_address` / `num_processes` / `process_id` (config, or the
    `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` variables) win; with
    `auto=True`, or on a SLURM job / TPU pod / MPI launch with more than one task, JAX
    auto-detects them. A single process with none of these skips initialisation.
    """
    dist = config.get("distributed", ConfigDict())
    address = dist.get("coordinator_address") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        num_processes = dist.get("num_processes") or int(os.environ["JAX_NUM_PROCESSES"])
        process_id = dist.get("process_id")
        if process_id is None or process_id < 0:  # unset in the config
            process_id = int(os.environ["JAX_PROCESS_ID"])
        log.info("joining %s as process %d of %d", address, process_id, num_processes)
        jax.distributed.initialize(
            address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=dist.get("timeout_s", 300),
        )
    elif dist.get("auto", False) or _launched_with_many_tasks():
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
