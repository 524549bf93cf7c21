"""The device mesh and how arrays are laid out on it.

One program runs on 1 CPU, 8 GPUs or a TPU pod: `jax.jit` compiles the train step for a `Mesh` of
devices with named axes, and `NamedSharding`s say which array dimension is split over which axis.
Here the mesh has one axis, `data`, over every device (in every process):

    batch arrays  [batch, ...]   split along `data`: each device holds batch / num_devices rows
    parameters    replicated:    every device holds all of them; XLA inserts the all-reduce of the
                                 gradients that data parallelism needs.

Multi-host: each process loads only its own rows of the global batch and
`jax.make_array_from_process_local_data` stitches the per-process pieces into one global array.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_data: int = -1, devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis `data` over `num_data` devices (-1: all of them).

    `jax.sharding.Mesh` gives axes of the Auto type: XLA propagates shardings through the step
    from the ones we pin on its inputs and outputs.
    """
    devices = list(jax.devices()) if devices is None else list(devices)
    if num_data == -1:
        num_data = len(devices)
    if num_data < 1 or num_data > len(devices) or len(devices) % num_data:
        raise ValueError(
            f"config.mesh.data={num_data} does not fit the {len(devices)} available devices: "
            "use -1 (all devices) or a divisor of the device count"
        )
    return Mesh(np.asarray(devices[:num_data]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the `data` axis; other dimensions whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the data axis and over the processes."""
    num = mesh.shape[DATA_AXIS]
    if global_batch_size % num or global_batch_size % jax.process_count():
        raise ValueError(
            f"config.batch_size={global_batch_size} is not divisible by the {num} devices of the "
            f"data axis (and {jax.process_count()} processes): choose a multiple of {num}"
        )


def to_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of the batch (NumPy) -> global `jax.Array`s sharded over `data`."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def tree_shardings(tree: Any, sharding: NamedSharding) -> Any:
    """The same sharding for every leaf of `tree` (a pytree of shardings, as jit expects)."""
    return jax.tree.map(lambda _: sharding, tree)
