"""The train state: everything that changes during training, as one pytree.

    TrainState(step [], params {...}, opt_state (...), rng key)

It is a `flax.struct` dataclass, so `jax.jit` can take and return it, Orbax can save and restore
it, and its arrays can carry shardings. The step donates it (`donate_argnums`): XLA writes the new
parameters into the old buffers instead of holding two copies.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # base key; the step's dropout key is fold_in(rng, step)


def create_train_state(
    task: Any, optimizer: optax.GradientTransformation, rng: jax.Array, example_batch: dict
) -> TrainState:
    """Initialises parameters from `example_batch`'s shapes and the optimizer state.

    `task.init` returns parameters boxed with their logical axis names (`nn.LogicallyPartitioned`,
    read by `sharding.param_shardings`); the state holds plain arrays: the names have done their
    job once the shardings are known, and plain arrays keep checkpoints and optimizers simple.
    """
    init_rng, train_rng = jax.random.split(rng)
    params = nn.meta.unbox(task.init(init_rng, example_batch))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(train_rng),
    )


def count_params(params: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
