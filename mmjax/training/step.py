"""The compiled train step: forward, backward, optimizer update, in one XLA program.

    grads = ∇_θ loss(θ, batch)
    θ, opt_state = optimizer.update(grads, opt_state, θ)

The step is a pure function `(state, batch) -> (state, metrics)` compiled once with `jax.jit` for
the mesh: the state is laid out by the logical axis rules (see `sharding`), the batch is split over
the data-parallel axes, and the state is donated so its buffers are reused. Metrics stay on the device; the loop fetches them
only every `log_every` steps, so the host never waits for the device inside the loop.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh

from mmjax.training import sharding as shd
from mmjax.training.state import TrainState


def make_train_step(
    task: Any,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    state_shardings: Any,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Builds the jitted step for `mesh`. `state_shardings` is a TrainState of NamedShardings."""

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        (loss, metrics), grads = jax.value_and_grad(task.loss, has_aux=True)(
            state.params, batch, rng, True
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(
            metrics,
            loss=loss,
            grad_norm=optax.global_norm(grads),
            learning_rate=schedule(state.step),
        )
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, shd.batch_sharding(mesh)),
        out_shardings=(state_shardings, shd.replicated(mesh)),
        donate_argnums=(0,),
    )
    return MeshContext(jitted, mesh, shd.LOGICAL_AXIS_RULES)


class MeshContext:
    """A jitted function that is traced, lowered and called with its mesh and axis rules in context.

    Inside the model, `nn.with_logical_constraint` turns logical activation axes into sharding
    constraints only when rules and a mesh are set, and `jax.shard_map` without an explicit mesh
    (the sharded contrastive losses) takes the context mesh. `jax.set_mesh` cannot be entered
    inside a trace, so it wraps the call.
    """

    def __init__(self, fn: Callable, mesh: Mesh, rules: tuple):
        self.fn, self.mesh, self.rules = fn, mesh, rules

    def __call__(self, *args):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self.fn(*args)

    def lower(self, *args):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self.fn.lower(*args)
