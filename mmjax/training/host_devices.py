"""CPU hosts: one XLA device per core, so a CPU trains data-parallel over its cores.

XLA:CPU presents a whole machine as one device and splits each operation over the cores. For the
small operations of a small model that split costs more than it gains: every matmul, LayerNorm
and softmax ends at a barrier, and the cores idle whenever one of them waits. Splitting the host
into one device per core instead gives every core its own share of the batch and its own
sequence of single-threaded operations, with one synchronisation per step (the gradient
all-reduce that data parallelism needs anyway). Nothing else changes: `jit` with shardings keeps
the program's meaning global, so the loss, the metrics and every batch-wide operation (the
contrastive similarity matrix, hard-negative mining) are the same function of the same global
batch; only the order of floating-point sums differs.

Measured on a 2-core CPU (BENCHMARKS.md, alternating runs): clip_tiny's train step 357 -> 291 ms,
clip_small's 2.81 -> 2.59 s, clip_s16's 10.6 -> 9.2 s.

It has to be decided before JAX creates its CPU backend (`jax_num_cpu_devices` and XLA's flags
are read once, then), so entry points call `split_cpu_host` first thing, from their
`--cpu_devices` flag. An explicit `--xla_force_host_platform_device_count` in XLA_FLAGS (the test
suite forces 8 devices) is left alone. On a GPU or TPU host this changes only JAX's CPU backend,
which training does not use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import jax

from mmjax.training.sharding import BATCH_AXES, mesh_shape

# Auto: the flag's default. One device per core, fitted to the batch.
AUTO = -1
# Auto splits hosts of up to this many cores. Each device runs on one core, so on a larger host
# the split would have to be as many devices as cores (each holding a copy of a data-parallel
# state) to use them all; it has been measured on 2 cores only, and larger hosts keep XLA's one
# device over every core unless --cpu_devices says otherwise.
MAX_AUTO_CORES = 8


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def config_fits(config, num_processes: int = 1) -> Callable[[int], bool]:
    """Whether n CPU devices per process suit `config`: its mesh (`config.mesh`) spans all of
    them, and each microbatch (`config.grad_accum_steps`) splits evenly over the batch shards."""
    def fits(n: int) -> bool:
        try:
            sizes = mesh_shape(config.mesh, n * num_processes)
        except ValueError:
            return False
        shards = math.prod(sizes[axis] for axis in BATCH_AXES)
        return (math.prod(sizes.values()) == n * num_processes
                and config.batch_size % (config.get("grad_accum_steps", 1) * shards) == 0)
    return fits


def cpu_device_count(requested: int, batch_size: int, cores: int | None = None,
                     fits: Callable[[int], bool] | None = None) -> int:
    """How many CPU devices to make.

    requested: AUTO (-1) for one per core on hosts of up to MAX_AUTO_CORES cores, fitted to the
      batch: the largest count <= cores that divides `batch_size` (every device gets the same
      number of rows) and that `fits` accepts (see `config_fits`); 0 or 1 for XLA's default, one
      device over every core; n > 1 for exactly n (the batch must split evenly).
    """
    cores = available_cores() if cores is None else cores
    if requested == AUTO:
        if cores > MAX_AUTO_CORES:
            return 1
        return max(d for d in range(1, max(cores, 1) + 1)
                   if batch_size % d == 0 and (d == 1 or fits is None or fits(d)))
    if requested < AUTO:
        raise ValueError(f"--cpu_devices must be -1 (one per core), 0/1 (one device) or a count > 1; got {requested}")
    if requested > 1 and batch_size % requested:
        raise ValueError(
            f"--cpu_devices={requested} does not divide config.batch_size={batch_size}: every device "
            f"takes the same number of rows. Use a divisor of {batch_size}, or -1 to pick one"
        )
    return max(requested, 1)


def split_cpu_host(num_devices: int) -> bool:
    """Makes JAX's CPU backend `num_devices` devices of one core each; returns whether it did.

    Call before any JAX computation. Does nothing for num_devices <= 1, or when XLA_FLAGS already
    forces a device count (that setting wins, as the user gave it).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if num_devices <= 1 or "xla_force_host_platform_device_count" in flags:
        return False
    jax.config.update("jax_num_cpu_devices", num_devices)
    # Each device is one core: its operations run on the calling thread instead of being split
    # over a pool that the other device is using (measured: 1-3% faster than with the pool).
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    return True


def split_for_config(config, requested: int, num_processes: int = 1) -> bool:
    """`split_cpu_host` with the count `requested` (the --cpu_devices value) fitted to this
    process's share of `config.batch_size`, its mesh and its microbatches; returns whether it split."""
    return split_cpu_host(cpu_device_count(requested, config.batch_size // num_processes,
                                           fits=config_fits(config, num_processes)))


def define_flags(default: int = AUTO):
    """Defines --cpu_devices (absl) for an entry point; returns `apply(config, num_processes)`,
    which splits the host for this process's share of `config.batch_size` (see `split_cpu_host`).
    num_processes None (a cluster that JAX detects: TPU pods, GPU clusters) leaves it alone."""
    from absl import flags

    cpu_devices = flags.DEFINE_integer(
        "cpu_devices", default,
        "CPU devices to split this host into: -1 one per core (fitted to the batch), 0 or 1 one "
        "device over every core (XLA's default), n exactly n. Only JAX's CPU backend is affected.")

    def apply(config, num_processes: int | None = 1) -> None:
        if num_processes is not None:
            split_for_config(config, cpu_devices.value, num_processes)

    return apply
