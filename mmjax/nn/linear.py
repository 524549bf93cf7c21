"""Linear maps in a low-precision compute dtype, accumulated in float32, with their gradients.

Every projection of a tower (q, k, v and out, the MLP, the patch embedding) contracts the last
axes of its input with the first axes of its kernel:

    y[..., n] = sum_k x[..., k] W[k, n]          x [..., K], W [K, N]   (K, N may be several axes)

In float32 that is one `dot_general`, as before. In bfloat16 (mixed precision: the towers' `dtype`)
`tensordot` below asks for the product in float32 and rounds it once to bfloat16, and writes the
backward pass by hand so that its two products are asked for the same way:

    forward   y  = x · W          bf16 x bf16 -> f32, rounded to bf16
    backward  dx = g · Wᵀ         bf16 x bf16 -> f32, rounded to bf16       (g: dL/dy in bf16)
              dW = xᵀ · g         bf16 x bf16 -> f32, rounded to bf16 (the kernel's compute copy;
                                  its float32 parameter receives it)

On a TPU or GPU this is what a bfloat16 matmul does anyway (the MXU and tensor cores accumulate in
float32). On a CPU it decides where the matmul runs. XLA:CPU (jaxlib 0.10) hands a dot to
YNNPACK's bfloat16 kernels, which use the AMX tiles of Intel Xeons from Sapphire Rapids on, only
when both operands are bfloat16 *and the result is float32*; a bfloat16 -> bfloat16 dot is first
converted to float32 (XLA's FloatNormalization pass) and runs at the float32 rate
(xla/backends/cpu/ynn_support.cc, `IsDotSupportedByYnn`; BENCHMARKS.md has the measurements).
JAX's own derivative of a float32-output dot would read the float32 cotangent, so its backward
products would be converted too; the hand-written one reads g in bfloat16.

YNNPACK also needs the contracted axis last in the left operand: x · W and g · Wᵀ qualify, but
xᵀ · g contracts the rows (the batch and sequence) of both operands, and XLA folds any transpose
into the dot's dimension numbers, so dW still runs at the float32 rate. Measured on a 2-core Xeon
with AMX, the ViT-S/16 CLIP step in bfloat16 takes 6.2 s with this file against 8.7 s without
(float32: 7.9 s).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def tensordot(x: Array, kernel: Array, axes: int = 1) -> Array:
    """Contracts the last `axes` axes of x with the first `axes` axes of `kernel`.

    Args:
      x: [..., K_1, ..., K_axes] in the compute dtype.
      kernel: [K_1, ..., K_axes, N_1, ...] in the compute dtype.

    Returns:
      [..., N_1, ...] in x's dtype. For a dtype narrower than float32 the products are accumulated
      in float32 and rounded once, forward and backward (see the module docstring).
    """
    contracting = (tuple(range(x.ndim - axes, x.ndim)), tuple(range(axes)))
    if jnp.dtype(x.dtype).itemsize >= 4:
        return lax.dot_general(x, kernel, (contracting, ((), ())))
    lead, trail = x.shape[: x.ndim - axes], kernel.shape[axes:]
    inner = math.prod(kernel.shape[:axes])
    y = _low_precision_matmul(x.reshape(-1, inner), kernel.reshape(inner, -1))
    return y.reshape(*lead, *trail)


def dot_general(x: Array, kernel: Array, dimension_numbers, precision=None, preferred_element_type=None) -> Array:
    """`lax.dot_general` for `nn.Dense(dot_general=...)`: a Dense layer's contraction (the last
    axis of x with the first of the kernel) goes through `tensordot`, anything else unchanged."""
    dense = (((x.ndim - 1,), (0,)), ((), ()))
    if dimension_numbers == dense and precision is None and preferred_element_type is None:
        return tensordot(x, kernel, 1)
    return lax.dot_general(x, kernel, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)


@jax.custom_vjp
def _low_precision_matmul(x: Array, kernel: Array) -> Array:
    """x [M, K] · kernel [K, N] -> [M, N] in x's dtype, accumulated in float32."""
    return jnp.matmul(x, kernel, preferred_element_type=jnp.float32).astype(x.dtype)


def _forward(x: Array, kernel: Array):
    return _low_precision_matmul(x, kernel), (x, kernel)


def _backward(saved, grad):
    x, kernel = saved
    grad = grad.astype(x.dtype)
    dx = jnp.einsum("mn,kn->mk", grad, kernel, preferred_element_type=jnp.float32).astype(x.dtype)
    dkernel = jnp.einsum("mk,mn->kn", x, grad, preferred_element_type=jnp.float32).astype(kernel.dtype)
    return dx, dkernel


_low_precision_matmul.defvjp(_forward, _backward)
