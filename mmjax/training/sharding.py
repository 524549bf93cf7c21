"""The device mesh and how arrays are laid out on it: one table of rules, three parallelisms.

One program runs on 1 CPU, 8 GPUs or a TPU pod: `jax.jit` compiles the train step for a `Mesh` of
devices with three named axes, and `NamedSharding`s say which array dimension is split over which
axis. The mesh shape comes from the config (`config.mesh.data`, `.fsdp`, `.tensor`; their product
is the device count, one of them may be -1 = "the rest"):

    data     data parallel: each group of devices along it sees different examples and holds a
             full replica of whatever is not sharded over the other axes.
    fsdp     fully sharded data parallel (ZeRO-3): also splits the batch, and in addition splits
             every large parameter and its optimizer state; XLA all-gathers a layer's weights
             just before they are used and reduce-scatters their gradients.
    tensor   tensor (Megatron) parallel: attention heads and the MLP hidden units are split, so
             each device computes part of every layer on the same examples.

Modules never name mesh axes. They name the *logical* axes of their parameters and activations
once (`nn.with_logical_partitioning(init, ("embed", "mlp"))` on a kernel [width, mlp_dim],
`nn.with_logical_constraint(x, ("batch", "length", "act_embed"))` on an activation), and one table,
`LOGICAL_AXIS_RULES`, maps logical axes to mesh axes (maxtext's "logical axis rules"):

    batch      -> (data, fsdp)   examples are split over both data-parallel axes
    embed      -> fsdp           parameter rows/columns of the model width: FSDP shards these
    heads, mlp -> tensor         Megatron splits: column-parallel in, row-parallel out
    vocab      -> tensor         token tables and output projections
    everything else (layers, kv = head_dim, length, act_embed, norms, biases) is not split

So DP 8, FSDP 8 and DP 2 × FSDP 2 × TP 2 are three mesh shapes in a config, not three code paths:
with `fsdp = tensor = 1` the rules shard nothing but the batch, which is plain data parallelism.

A dimension that the mesh axes do not divide evenly (a vocabulary of 257 over tensor = 2) is left
whole rather than padded: `mesh_sharding` checks each dimension. Parameters without a logical
annotation (LayerNorm scales, biases, the CLIP temperature) are replicated: they are small.

Multi-host: each process loads only its own rows of the global batch and
`jax.make_array_from_process_local_data` stitches the per-process pieces into one global array;
`jax.make_mesh` orders devices so that the last (tensor) axis stays within a host.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
TENSOR_AXIS = "tensor"
MESH_AXES = (DATA_AXIS, FSDP_AXIS, TENSOR_AXIS)
# The axes the batch dimension is split over (both are data parallel).
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# --8<-- [start:rules]
# Logical axis -> mesh axis (or axes, or None = not split). The first rule for a name wins.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", FSDP_AXIS),
    ("heads", TENSOR_AXIS),
    ("mlp", TENSOR_AXIS),
    ("vocab", TENSOR_AXIS),
    ("kv", None),
    ("layers", None),
    ("length", None),
    ("act_embed", None),
)
# --8<-- [end:rules]


def mesh_shape(mesh_config: int | Mapping, num_devices: int) -> dict[str, int]:
    """{"data": d, "fsdp": f, "tensor": t} from `config.mesh`, with a -1 filled in.

    `mesh_config` is a mapping with any of the three axes (missing ones are 1), or an int, which
    means `{"data": n}`. The product must divide `num_devices`; the mesh then uses the first
    product-many devices (a smaller mesh than the machine is for tests and debugging).
    """
    if isinstance(mesh_config, int):
        mesh_config = {DATA_AXIS: mesh_config}
    unknown = sorted(set(mesh_config) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"config.mesh has unknown axis {unknown}; the axes are {list(MESH_AXES)}")
    sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
    fill = [axis for axis, size in sizes.items() if size == -1]
    if len(fill) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1; got {sizes}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        sizes[fill[0]] = num_devices // fixed if fixed and num_devices % fixed == 0 else 0
    for axis, size in sizes.items():
        if size < 1 or num_devices % math.prod(sizes.values()):
            raise ValueError(
                f"config.mesh.{axis}={mesh_config.get(axis, 1)} does not fit the {num_devices} "
                f"available devices (mesh {sizes}): the product of data, fsdp and tensor must "
                "divide the device count; use -1 on one axis for 'all remaining devices'"
            )
    return sizes


def make_mesh(mesh_config: int | Mapping = -1, devices: list | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh of `config.mesh` (see `mesh_shape`).

    The axes are of the Auto type: XLA propagates shardings through the step from the ones we pin
    on its inputs and outputs and from the logical constraints inside the model.
    """
    devices = list(jax.devices()) if devices is None else list(devices)
    sizes = mesh_shape(mesh_config, len(devices))
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    count = math.prod(shape)
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if count == jax.device_count() and devices == list(jax.devices()):
        # Lets JAX order the devices for the physical topology (ICI rings on TPU, hosts last).
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types)
    return Mesh(np.asarray(devices[:count]).reshape(shape), MESH_AXES, axis_types=axis_types)


def num_batch_shards(mesh: Mesh) -> int:
    """How many ways the batch is split: data × fsdp."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES if axis in mesh.shape)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over data × fsdp; other dimensions whole."""
    return NamedSharding(mesh, P(tuple(a for a in BATCH_AXES if a in mesh.shape)))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the batch shards and over the processes."""
    num = num_batch_shards(mesh)
    if global_batch_size % num or global_batch_size % jax.process_count():
        raise ValueError(
            f"config.batch_size={global_batch_size} is not divisible by the {num} devices of the "
            f"data and fsdp axes (and {jax.process_count()} processes): choose a multiple of {num}"
        )


def to_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of the batch (NumPy) -> global `jax.Array`s sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def mesh_sharding(
    logical_axes: P | tuple | None, shape: tuple[int, ...], mesh: Mesh,
    rules: tuple = LOGICAL_AXIS_RULES,
) -> NamedSharding:
    """The NamedSharding the rules give an array of `shape` with these logical axis names.

    A dimension whose size the assigned mesh axes do not divide is left unsplit.
    """
    if not logical_axes:
        return replicated(mesh)
    spec = nn.logical_to_mesh_axes(tuple(logical_axes), rules)
    parts = []
    for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        names = tuple(a for a in names if a in mesh.shape and mesh.shape[a] > 1)
        ways = math.prod(mesh.shape[a] for a in names)
        parts.append(names if names and size % ways == 0 else None)
    # Trailing Nones are dropped so a replicated array's spec reads P(), as jit reports it.
    while parts and parts[-1] is None:
        parts.pop()
    return NamedSharding(mesh, P(*[p[0] if p and len(p) == 1 else p for p in parts]))


def param_shardings(boxed_params: Any, mesh: Mesh, rules: tuple = LOGICAL_AXIS_RULES) -> Any:
    """Shardings for a parameter tree from its logical annotations.

    `boxed_params` is what `model.init` returns (abstract, from `jax.eval_shape`, is enough):
    annotated leaves are `nn.LogicallyPartitioned` boxes holding their axis names; plain leaves
    are replicated. Returns the unboxed tree's structure, one NamedSharding per leaf.
    """
    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            return mesh_sharding(leaf.names, leaf.value.shape, mesh, rules)
        return replicated(mesh)

    return jax.tree.map(one, boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def optimizer_state_shardings(abstract_opt_state: Any, abstract_params: Any, params_shardings: Any,
                              mesh: Mesh) -> Any:
    """Optimizer state laid out like the parameters it mirrors, the rest replicated.

    Adam's m and v (and any wrapper's per-parameter trees: masked, multi-transform, skipped
    steps) are found by path: a state leaf whose path ends with a parameter's path and has its
    shape gets that parameter's sharding, so FSDP shards the optimizer state along with the
    weights. Step counters and other scalars are replicated.
    """
    by_name = {
        _name(path): (tuple(leaf.shape), sharding)
        for (path, leaf), sharding in zip(
            jax.tree_util.tree_leaves_with_path(abstract_params), jax.tree.leaves(params_shardings)
        )
    }

    def one(path, leaf):
        parts = _name(path).split("/")
        for start in range(len(parts)):  # the longest suffix of the path that names a parameter
            match = by_name.get("/".join(parts[start:]))
            if match is not None and match[0] == tuple(leaf.shape):
                return match[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def _name(path: tuple) -> str:
    """A pytree path as "a/b/kernel"."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def describe(shardings: Any) -> dict[str, str]:
    """{"params/a/b/kernel": "P(None, 'fsdp', 'tensor')"}: a readable map of a state's layout."""
    return {_name(path): str(s.spec) for path, s in jax.tree_util.tree_leaves_with_path(shardings)}
