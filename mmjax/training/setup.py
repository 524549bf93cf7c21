"""Everything the train step needs, built from a config: task, optimizer, sharded state, step.

Kept apart from the loop so that tests, benchmarks and ahead-of-time compilation (`jax.jit(...)
.lower()` on abstract inputs) can build the exact step the loop runs without touching any data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from mmjax.models.clip import build_clip
from mmjax.training import sharding as shd
from mmjax.training.optimizer import make_optimizer, make_schedule
from mmjax.training.state import create_train_state
from mmjax.training.step import make_train_step
from mmjax.training.tasks import ContrastiveTask


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(sort_keys=True, indent=2)


def build_task(config: ml_collections.ConfigDict) -> ContrastiveTask:
    return ContrastiveTask(build_clip(config.model))


def example_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one batch (for initialisation and ahead-of-time compilation)."""
    size = config.data.image_size
    return {
        "images": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
        "token_ids": jax.ShapeDtypeStruct((batch_size, config.data.text_len), jnp.int32),
    }


def setup_training(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """Task, schedule, optimizer, the abstract (sharded) state and the compiled step.

    Returns (task, schedule, init_fn, abstract_state, train_step), where `init_fn()` creates the
    state directly on the mesh with its final shardings.
    """
    task = build_task(config)
    schedule = make_schedule(
        config.optimizer.learning_rate,
        config.optimizer.warmup_steps,
        config.num_steps,
        config.optimizer.end_learning_rate,
    )
    optimizer = make_optimizer(
        schedule,
        weight_decay=config.optimizer.weight_decay,
        b1=config.optimizer.b1,
        b2=config.optimizer.b2,
        eps=config.optimizer.eps,
        grad_clip_norm=config.optimizer.grad_clip_norm,
    )
    shd.check_batch_size(config.batch_size, mesh)
    batch_spec = example_batch(config, config.batch_size)

    def init_fn_inner(rng):
        batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_spec.items()}
        return create_train_state(task, optimizer, rng, batch)

    rng = jax.random.key(config.seed)
    abstract = jax.eval_shape(init_fn_inner, rng)
    state_shardings = shd.tree_shardings(abstract, shd.replicated(mesh))
    abstract_state = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract, state_shardings
    )
    init_fn = lambda: jax.jit(init_fn_inner, out_shardings=state_shardings)(rng)  # noqa: E731
    train_step = make_train_step(task, optimizer, schedule, mesh, state_shardings)
    return task, schedule, init_fn, abstract_state, train_step
