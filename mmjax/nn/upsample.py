"""Nearest-neighbour doubling followed by a 3x3 convolution, computed without the doubled input.

VQGAN's decoders (and ours, `mmjax.models.vq.ConvDecoder`) upsample by repeating each pixel 2 x 2
and then convolving with a 3 x 3 kernel W ('SAME' zero padding):

    u[2i + a, 2j + b] = x[i, j]                     a, b ∈ {0, 1}    x [batch, h, w, c_in]
    y = conv3x3(u, W) + bias                                          y [batch, 2h, 2w, c_out]

Every output pixel of one phase (a, b) (its row parity a, its column parity b) sees the same
2 x 2 window of x, because its three kernel rows fall on only two rows of x: for a = 0 the rows
2i − 1, 2i, 2i + 1 of u are the rows i − 1, i, i of x; for a = 1, the rows 2i, 2i + 1, 2i + 2
are i, i, i + 1. Summing the kernel taps that land on the same pixel gives four 2 x 2 kernels,

    K_ab = M_a · W · M_bᵀ   (over the two spatial axes)
    M_0 = [[1, 0, 0],        M_1 = [[1, 1, 0],       (row r of M_a: which of W's rows add up
           [0, 1, 1]]               [0, 0, 1]]        on the r-th row of the window)

and y[2i + a, 2j + b] = Σ_{r,s} K_ab[r, s] · x[i − 1 + a + r, j − 1 + b + s] + bias, with x
zero-padded as u was (u's padding row −1 is x's row −1). It is the same function of (x, W) to
rounding, and its gradient with respect to W flows through the sums, so a model keeps its
parameters, its initialisation and its checkpoints. What changes is the work: 4 · 4 = 16 taps
per input pixel instead of 4 · 9 = 36, and the doubled input u [batch, 2h, 2w, c_in] (with the
transposed copy its kernel gradient needs) is never written; the four outputs are interleaved by
one reshape at the end. The VQ-VAE's train step (configs/vq_tiny.py, batch 64, two CPU devices)
went from 121 / 114 ms to 101 / 95 ms (bench/step.py, alternating runs; BENCHMARKS.md). Folding
the phases into one 3 x 3 convolution with 4 · c_out outputs, or running the encoder's first two
layers and the pixel layer on the picture's 2 x 2 phases as well (space-to-depth), was slower:
those kernels multiply by the zeros they pad.

Dtypes follow nn.Conv's default: x, the kernel and the bias are promoted to their common type
before the taps are summed, so a bfloat16 x with float32 parameters computes in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# _PHASE_ROWS[a][r, k] = 1: kernel row k (offset k − 1) lands on row r of phase a's 2-row window.
_PHASE_ROWS = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)
# x's zero padding (before, after) along an axis for phase a: its window starts at i − 1 + a.
_PHASE_PADDING = ((1, 0), (0, 1))


def phase_kernels(kernel: Array) -> Array:
    """W [3, 3, c_in, c_out] -> K [2 (a), 2 (b), 2, 2, c_in, c_out], K[a, b] = M_a · W · M_bᵀ."""
    if kernel.shape[:2] != (3, 3):
        raise ValueError(f"kernel must be [3, 3, c_in, c_out], got shape {kernel.shape}")
    rows = jnp.asarray(_PHASE_ROWS, kernel.dtype)
    return jnp.einsum("ary,bsx,yxio->abrsio", rows, rows, kernel)


# --8<-- [start:upsample_conv]
def upsample_conv(x: Array, kernel: Array, bias: Array | None = None) -> Array:
    """conv3x3(repeat(x, 2, rows and columns), kernel, 'SAME') + bias, as four 2x2 convolutions.

    x [batch, h, w, c_in], kernel [3, 3, c_in, c_out] (HWIO, flax's nn.Conv layout), bias
    [c_out] or None -> [batch, 2h, 2w, c_out]; see the module docstring for why it is equal.
    """
    batch, h, w, channels = x.shape
    if kernel.shape[2] != channels:
        raise ValueError(f"kernel {kernel.shape} does not take x's {channels} channels")
    dtype = jnp.result_type(x, kernel) if bias is None else jnp.result_type(x, kernel, bias)
    x = x.astype(dtype)
    kernels = phase_kernels(kernel.astype(dtype))
    phases = [[jax.lax.conv_general_dilated(
        x, kernels[a, b], window_strides=(1, 1), padding=(_PHASE_PADDING[a], _PHASE_PADDING[b]),
        dimension_numbers=("NHWC", "HWIO", "NHWC")) for b in (0, 1)] for a in (0, 1)]
    # [batch, h, 2 (a), w, 2 (b), c_out] -> [batch, 2h, 2w, c_out]: row 2i + a, column 2j + b.
    y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
    y = y.reshape(batch, 2 * h, 2 * w, kernel.shape[-1])
    return y if bias is None else y + bias.astype(y.dtype)
# --8<-- [end:upsample_conv]
