"""The compiled train step: forward, backward, optimizer update, in one XLA program.

    grads = ∇_θ loss(θ, batch)
    θ, opt_state = optimizer.update(grads, opt_state, θ)

The step is a pure function `(state, batch) -> (state, metrics)` compiled once with `jax.jit` for
the mesh: the state is laid out by the logical axis rules (see `sharding`), the batch is split over
the data-parallel axes, and the state is donated so its buffers are reused. Metrics stay on the device; the loop fetches them
only every `log_every` steps, so the host never waits for the device inside the loop.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mmjax.training import sharding as shd
from mmjax.training.freeze import trained_only
from mmjax.training.state import TrainState


def split_microbatches(batch: dict, num_microbatches: int) -> dict:
    """[batch, ...] -> [num_microbatches, batch / num_microbatches, ...], strided.

    Microbatch i holds rows i, i + k, i + 2k, ... (k = num_microbatches) rather than a contiguous
    block: the batch is split over the devices in contiguous blocks, so a strided microbatch takes
    an equal share of every device's rows, and every device works on every microbatch.
    """
    def split(x):
        return x.reshape(x.shape[0] // num_microbatches, num_microbatches, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def merge_microbatches(tree: Any) -> Any:
    """Inverse of `split_microbatches`: [k, batch / k, ...] -> [batch, ...] in the original order."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), tree)


def loss_and_grads(task: Any, params: Any, batch: dict, rng: jax.Array, num_microbatches: int = 1):
    """(loss, metrics), ∇ loss for the whole batch, computed `num_microbatches` rows at a time.

    Gradient accumulation keeps the activation memory of one microbatch while the update is that
    of the whole batch. How depends on the loss:

    - Per-example losses (a mean over examples: VQA, captioning) are means of microbatch means,
      so the gradients are averaged over a `lax.scan` of microbatches.
    - Contrastive losses couple every example with every other (the negatives), so a microbatch
      alone has the wrong loss. A task with such a loss provides `features(params, batch, rng)`
      (the embeddings, [batch, ...]) and `loss_from_features(params, features)`, and the
      gradient is assembled in two passes (Gao et al. 2021, "gradient cache"; open_clip's
      `--accum-freq`):

          1. f = features(θ, microbatch_i) for every i, without gradients      (forward only)
          2. L(θ, f) on the whole batch; ∂L/∂f and the direct ∂L/∂θ (temperature, bias)
          3. for each microbatch: ∇θ += vjp(features(·, microbatch_i))(∂L/∂f_i)   (forward + backward)

      which is exactly ∇θ L(θ, features(θ, batch)) for about 1.3x the compute of one big step.
    - A task whose loss couples examples but that offers no features (ALBEF's hard negatives,
      CoCa's contrastive term) is refused: silently training on microbatch negatives would change
      the objective.
    """
    if num_microbatches == 1:
        return jax.value_and_grad(task.loss, has_aux=True)(params, batch, rng, True)
    micro = split_microbatches(batch, num_microbatches)
    rngs = jax.random.split(rng, num_microbatches)

    if hasattr(task, "features"):
        # --8<-- [start:grad_cache]
        # Pass 1: the features of every microbatch (no gradient is kept).
        def embed(_, inputs):
            mb, r = inputs
            return None, task.features(params, mb, r, True)

        _, features = jax.lax.scan(embed, None, (micro, rngs))
        # Pass 2: the loss on the whole batch, its gradient w.r.t. the features and the parameters.
        (loss, metrics), (direct_grads, feature_grads) = jax.value_and_grad(
            task.loss_from_features, argnums=(0, 1), has_aux=True
        )(params, merge_microbatches(features))
        feature_grads = split_microbatches(feature_grads, num_microbatches)

        # Pass 3: back-propagate each microbatch's share of ∂L/∂f through the towers.
        def backprop(grads, inputs):
            mb, r, cotangent = inputs
            _, vjp = jax.vjp(lambda p: task.features(p, mb, r, True), params)
            return jax.tree.map(jnp.add, grads, vjp(cotangent)[0]), None

        grads, _ = jax.lax.scan(backprop, direct_grads, (micro, rngs, feature_grads))
        # --8<-- [end:grad_cache]
        return (loss, metrics), grads

    if not getattr(task, "per_example_loss", False):
        raise ValueError(
            f"config.grad_accum_steps={num_microbatches} but {type(task).__name__}'s loss couples the "
            "examples of a batch (contrastive negatives) and the task does not provide "
            "`features`/`loss_from_features` for exact accumulation: use grad_accum_steps=1"
        )

    def microbatch_loss_and_grads(mb, r):
        (loss, metrics), grads = jax.value_and_grad(task.loss, has_aux=True)(params, mb, r, True)
        return loss, metrics, grads

    def accumulate(carry, inputs):
        return jax.tree.map(jnp.add, carry, microbatch_loss_and_grads(*inputs)), None

    # The running sums start at zeros shaped like one microbatch's (loss, metrics, grads).
    shapes = jax.eval_shape(microbatch_loss_and_grads, jax.tree.map(lambda x: x[0], micro), rngs[0])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(accumulate, zeros, (micro, rngs))
    loss, metrics, grads = jax.tree.map(lambda x: x / num_microbatches, total)
    return (loss, metrics), grads


def make_train_step(
    task: Any,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    state_shardings: Any,
    num_microbatches: int = 1,
    freeze: Sequence[str] | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Builds the jitted step for `mesh`. `state_shardings` is a TrainState of NamedShardings;
    `num_microbatches` > 1 accumulates gradients over that many slices of the batch; `freeze`
    (config.freeze) names the frozen parameters, left out of the logged gradient norm."""

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        (loss, metrics), grads = loss_and_grads(task, state.params, batch, rng, num_microbatches)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if hasattr(task, "update_moving_averages"):
            # Parameters that are running averages (a VQ-VAE's EMA codebook) are not trained by
            # the optimizer (setup freezes them) but set here from the batch, after the update.
            params, average_metrics = task.update_moving_averages(params, batch, jax.random.fold_in(rng, 1))
            metrics = {**metrics, **average_metrics}
        metrics = dict(
            metrics,
            loss=loss,
            # The trained parameters' norm, the one clipping sees. Reading the frozen gradients
            # too would misreport it and keep XLA from pruning their backward pass (LiT's saving).
            grad_norm=optax.global_norm(trained_only(grads, freeze)),
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
