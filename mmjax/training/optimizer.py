"""The optimizer: AdamW with linear warm-up, cosine decay, gradient clipping and a decay mask.

    lr(step) = peak · step / warmup                                          step < warmup
             = end + (peak − end) · ½ (1 + cos(π (step − warmup) / (total − warmup)))   after

    g ← g · min(1, clip / ||g||₂)                        (global-norm clipping)
    θ ← θ − lr · ( m̂ / (sqrt(v̂) + ε) + λ · mask · θ )   (AdamW, Loshchilov & Hutter, 2019)

Weight decay pulls weights towards zero; it is applied only to matmul and convolution kernels.
Biases, LayerNorm scales, embedding tables, the class token and the CLIP temperature are not
decayed: shrinking a LayerNorm scale or the temperature is never what one means by regularisation
(CLIP, big_vision and open_clip all exclude them).
"""

from __future__ import annotations

from typing import Any

import jax
import optax


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


def make_optimizer(
    schedule: optax.Schedule,
    *,
    weight_decay: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-6,
    grad_clip_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """Gradient clipping (optional), then AdamW with the kernel-only decay mask."""
    parts = []
    if grad_clip_norm:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    parts.append(
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask)
    )
    return optax.chain(*parts)
