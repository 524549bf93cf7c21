"""The optimizer: AdamW with linear warm-up, cosine decay, gradient clipping and a decay mask.

    lr(step) = peak · step / warmup                                          step < warmup
             = end + (peak − end) · ½ (1 + cos(π (step − warmup) / (total − warmup)))   after

    g ← g · min(1, clip / ||g||₂)                        (global-norm clipping)
    θ ← θ − lr · ( m̂ / (sqrt(v̂) + ε) + λ · mask · θ )   (AdamW, Loshchilov & Hutter, 2019)

Weight decay pulls weights towards zero; it is applied only to matmul and convolution kernels.
Biases, LayerNorm scales, embedding tables, the class token and the CLIP temperature are not
decayed: shrinking a LayerNorm scale or the temperature is never what one means by regularisation
(CLIP, big_vision and open_clip all exclude them).

Learning-rate multipliers (`config.optimizer.lr_mults`, as big_vision's `lr_mults`): pairs
(regex, m); the update of every parameter whose name (see `mmjax.training.freeze`) a regex
matches, first match winning, is multiplied by m: that parameter learns at m · lr(step). Adam's
step is about lr in each parameter's own units whatever its gradient's scale, so a parameter that
must travel far in few steps (a table of attention-logit biases that starts at zero and must
reach several units to make a head look one way) needs a larger rate than the weights around it.

Skipping non-finite steps (`config.optimizer.skip_nonfinite_steps = N`, off by default): one bad
batch can give NaN or Inf gradients, and one such update turns every parameter into NaN. With
N > 0 the whole chain is wrapped in `optax.apply_if_finite`: on a step whose gradients hold a NaN
or an Inf the update is zero and the optimizer state is kept as it was (Adam's moments and its
step count included), so the step leaves no trace but a counter in the state. optax would accept
the update after a given number of consecutive bad steps; here it never does: the training loop
counts the bad steps and stops the run after N in a row (a run that diverges cannot be skipped
back to health), so the parameters in memory and in every checkpoint stay finite.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

from mmjax.training.freeze import compile_patterns, param_names


def make_schedule(
    learning_rate: float, warmup_steps: int, total_steps: int, end_learning_rate: float = 0.0
) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate`, then cosine decay to `end_learning_rate`."""
    if total_steps <= warmup_steps:
        raise ValueError(
            f"config.num_steps={total_steps} must exceed config.optimizer.warmup_steps={warmup_steps}"
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=end_learning_rate,
    )


def weight_decay_mask(params: Any) -> Any:
    """True for the leaves that are decayed: those named `kernel` (Dense and Conv weights)."""

    def is_kernel(path, _):
        return getattr(path[-1], "key", None) == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def learning_rate_multipliers(params: Any, lr_mults: Sequence[tuple[str, float]]) -> Any:
    """A tree shaped like `params`: the multiplier of the first (regex, m) of `lr_mults` whose regex
    matches the parameter's name (`re.search`), 1.0 where none does.

    Raises a ValueError naming a pattern that matches no parameter (a typo would otherwise leave
    every rate unchanged without a word).
    """
    for item in lr_mults:
        if (not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], str)
                or not isinstance(item[1], (int, float))):
            raise ValueError(
                "config.optimizer.lr_mults must be a tuple of (regex, multiplier) pairs, e.g. "
                f"(('relative_position_bias', 10.0),); entry {item!r} of {tuple(lr_mults)!r} is not one"
            )
    names = param_names(params)
    regexes = compile_patterns(names, [pattern for pattern, _ in lr_mults], "config.optimizer.lr_mults")
    compiled = [(regex, float(m)) for regex, (_, m) in zip(regexes, lr_mults)]
    multipliers = [next((m for regex, m in compiled if regex.search(name)), 1.0) for name in names]
    return jax.tree.unflatten(jax.tree.structure(params), multipliers)


def scale_by_learning_rate_multipliers(lr_mults: Sequence[tuple[str, float]]) -> optax.GradientTransformation:
    """Multiplies each parameter's update by its multiplier (`learning_rate_multipliers`)."""

    def init(params):
        learning_rate_multipliers(params, lr_mults)  # fails here, at the start, on a bad pattern
        return optax.EmptyState()

    def update(updates, state, params=None):
        multipliers = learning_rate_multipliers(updates, lr_mults)
        return jax.tree.map(lambda u, m: u if m == 1.0 else u * m, updates, multipliers), state

    return optax.GradientTransformation(init, update)


def make_optimizer(
    schedule: optax.Schedule,
    *,
    weight_decay: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-6,
    grad_clip_norm: float | None = 1.0,
    skip_nonfinite_steps: int = 0,
    lr_mults: Sequence[tuple[str, float]] = (),
) -> optax.GradientTransformation:
    """Gradient clipping (optional), then AdamW with the kernel-only decay mask, then the
    learning-rate multipliers (only when there are some: the state of an optimizer without them
    keeps its structure, so earlier checkpoints still restore).

    `skip_nonfinite_steps` > 0 makes a step with NaN/Inf gradients a no-op (see the module
    docstring); the number itself is the loop's limit of consecutive such steps.
    """
    if skip_nonfinite_steps < 0:
        raise ValueError(
            f"config.optimizer.skip_nonfinite_steps must be 0 (off) or a positive number of "
            f"consecutive steps; got {skip_nonfinite_steps}"
        )
    parts = []
    if grad_clip_norm:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    parts.append(
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask)
    )
    if lr_mults:
        parts.append(scale_by_learning_rate_multipliers(lr_mults))
    optimizer = optax.chain(*parts)
    if skip_nonfinite_steps:
        # The counter saturates at the int32 maximum, so "more than the maximum" never happens:
        # the non-finite update is never applied, and stopping is left to the loop.
        optimizer = optax.apply_if_finite(optimizer, max_consecutive_errors=np.iinfo(np.int32).max)
    return optimizer


def skipped_step_counts(opt_state: Any) -> tuple[jax.Array, jax.Array] | None:
    """(consecutive, total) steps skipped for non-finite gradients; None when skipping is off.

    Both are int32 scalars of the optimizer state, so they are saved in checkpoints: a resumed
    run goes on counting. The state is found where it is nested, too: with frozen parameters the
    optimizer is the "train" part of a `multi_transform` (see `freeze`), and only that part skips.
    """
    found = [
        node for node in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, optax.ApplyIfFiniteState))
        if isinstance(node, optax.ApplyIfFiniteState)
    ]
    if found:
        return found[0].notfinite_count, found[0].total_notfinite
    return None
