"""Everything the train step needs, built from a config: task, optimizer, sharded state, step.

Kept apart from the loop so that tests, benchmarks and ahead-of-time compilation (`jax.jit(...)
.lower()` on abstract inputs) can build the exact step the loop runs without touching any data.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mmjax.training import sharding as shd
from mmjax.training.freeze import as_patterns, freeze_parameters
from mmjax.training.optimizer import make_optimizer, make_schedule
from mmjax.training.pretrained import load_pretrained
from mmjax.training.state import create_train_state
from mmjax.training.step import make_train_step


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(sort_keys=True, indent=2)


def _zeros(batch_spec: dict) -> dict:
    return {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_spec.items()}


def build_task(config: ml_collections.ConfigDict) -> Any:
    """The task named by `config.task` (a class with `from_config`, e.g. ContrastiveTask)."""
    if "task" not in config or not hasattr(config.task, "from_config"):
        raise ValueError(
            "config.task must name a task class, e.g. `config.task = ContrastiveTask` "
            f"(from mmjax.training.tasks); got {config.get('task')!r}"
        )
    return config.task.from_config(config)


def setup_training(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """Task, schedule, optimizer, the abstract (sharded) state and the compiled step.

    Returns (task, schedule, init_fn, abstract_state, train_step), where `init_fn()` creates the
    state directly on the mesh with its final shardings (and the pre-trained subtrees of
    `config.init_from`, if any).
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
        skip_nonfinite_steps=config.optimizer.get("skip_nonfinite_steps", 0),
        lr_mults=tuple(tuple(item) for item in config.optimizer.get("lr_mults", ())),
    )
    # Parameters matched by the regexes of config.freeze (e.g. LiT's "^image_encoder/") get zero
    # updates and no optimizer state; the optimizer above sees only the others (see `freeze`).
    # A task's `untrained_params` (regexes like config.freeze) are frozen too: moving averages
    # that the step sets with `task.update_moving_averages` (a VQ-VAE's codebook), or a stage
    # trained by another run (the text-to-image prior's image tokenizer).
    freeze = as_patterns(config.get("freeze")) + tuple(getattr(task, "untrained_params", ()))
    optimizer = freeze_parameters(optimizer, freeze)
    shd.check_batch_size(config.batch_size, mesh)
    num_microbatches = config.get("grad_accum_steps", 1)
    if num_microbatches < 1 or config.batch_size % (num_microbatches * shd.num_batch_shards(mesh)):
        raise ValueError(
            f"config.grad_accum_steps={num_microbatches} must be >= 1 and split config.batch_size="
            f"{config.batch_size} into microbatches that still divide over the "
            f"{shd.num_batch_shards(mesh)} batch shards of the mesh"
        )
    batch_spec = task.example_batch(config, config.batch_size)

    def init_fn_inner(rng):
        return create_train_state(task, optimizer, rng, _zeros(batch_spec))

    rng = jax.random.key(config.seed)
    abstract = jax.eval_shape(init_fn_inner, rng)
    # The parameters' logical axis names (from the modules' annotations) and the rules give
    # each parameter its sharding; the optimizer state follows the parameters it mirrors.
    boxed_params = jax.eval_shape(task.init, rng, batch_spec)
    params_shardings = shd.param_shardings(boxed_params, mesh)
    state_shardings = abstract.replace(
        step=shd.replicated(mesh),
        params=params_shardings,
        opt_state=shd.optimizer_state_shardings(abstract.opt_state, abstract.params, params_shardings, mesh),
        rng=shd.replicated(mesh),
    )
    abstract_state = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract, state_shardings
    )
    init_from = config.get("init_from")

    def init_fn():
        state = jax.jit(init_fn_inner, out_shardings=state_shardings)(rng)
        # config.init_from: subtrees from another run's checkpoint replace the fresh ones (see
        # `pretrained`). init_fn runs only for a new run; a resumed one restores its own weights.
        if init_from:
            state = state.replace(params=load_pretrained(
                state.params, abstract_state.params, init_from["workdir"], init_from["subtrees"],
                init_from.get("step"),
            ))
        return state

    train_step = make_train_step(
        task, optimizer, schedule, mesh, state_shardings, num_microbatches, freeze
    )
    return task, schedule, init_fn, abstract_state, train_step
