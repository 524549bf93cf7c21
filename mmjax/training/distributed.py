"""Multi-host start-up: join the processes of one run before JAX touches a device.

A run on a TPU pod slice or on several GPU hosts is one program started once per host. Each
process sees only its own (local) devices until `jax.distributed.initialize` connects it to a
coordinator (process 0's address); from then on `jax.devices()` lists every device of every
process, one mesh spans them all, and collectives (the gradient all-reduce, FSDP's all-gathers)
cross hosts. Everything else in mmjax is written for that global view: each process loads its
own rows of the batch, process 0 alone writes metrics and reports, and Orbax writes checkpoints
from all processes together.

How the processes find each other, in order of precedence:

    flags            --coordinator_address=host:port --num_processes=N --process_id=i
    environment      JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
    auto-detection   --distributed alone: JAX reads the cluster's own variables (Cloud TPU
                     metadata, SLURM, Open MPI, Kubernetes); nothing to pass on a TPU VM pod
    none of these    a single process: nothing to initialise

On CPU the cross-process collectives go through gloo, so two local processes with forced host
devices are a faithful (slow) model of two hosts; the multi-host test runs exactly that.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax


def distributed_settings(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: dict | None = None,
) -> dict | None:
    """The explicit settings from flags, falling back to the environment (None: not given)."""
    environ = os.environ if environ is None else environ
    address = coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS")
    count = num_processes if num_processes is not None else environ.get("JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else environ.get("JAX_PROCESS_ID")
    given = {"coordinator_address": address, "num_processes": count, "process_id": index}
    if all(v is None for v in given.values()):
        return None
    missing = [name for name, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"multi-process settings are incomplete: {', '.join(missing)} not given. Pass all of "
            "--coordinator_address, --num_processes and --process_id (or JAX_COORDINATOR_ADDRESS, "
            "JAX_NUM_PROCESSES, JAX_PROCESS_ID), or only --distributed on a cluster JAX detects"
        )
    count, index = int(count), int(index)
    if not 0 <= index < count:
        raise ValueError(f"process_id={index} must be in [0, num_processes={count})")
    return {"coordinator_address": address, "num_processes": count, "process_id": index}


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto_detect: bool = False,
    prepare: Callable[[int | None], None] | None = None,
) -> None:
    """Joins this process to the run (see the module docstring); call before any other JAX call.

    prepare: called first, with the number of processes (1 for a single process, None when
      auto-detection will find it), for settings that must precede JAX's backends (see
      `host_devices.split_cpu_host`).
    """
    settings = distributed_settings(coordinator_address, num_processes, process_id)
    if prepare is not None:
        prepare(settings["num_processes"] if settings else (None if auto_detect else 1))
    if settings is not None:
        jax.distributed.initialize(**settings)
    elif auto_detect:
        jax.distributed.initialize()
    else:
        return
    print(f"Process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local "
          f"of {jax.device_count()} devices.")


def define_flags():
    """Defines --coordinator_address, --num_processes, --process_id and --distributed (absl) for
    an entry point; returns a function that joins the run from their values (its `prepare`
    argument as in `initialize`)."""
    from absl import flags

    coordinator = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    num_processes = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
    process_id = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
    auto = flags.DEFINE_bool("distributed", False, "Detect the cluster (TPU pod, SLURM, ...) and join it.")
    return lambda prepare=None: initialize(
        coordinator.value, num_processes.value, process_id.value, auto.value, prepare)
