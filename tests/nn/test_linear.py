"""linear.tensordot: float32 unchanged; bfloat16 accumulated in float32, forward and backward."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.nn import linear


def bf16_values(shape, seed):
    """Random bfloat16 arrays and their exact float64 values."""
    x = jax.random.normal(jax.random.key(seed), shape).astype(jnp.bfloat16)
    return x, np.asarray(x.astype(jnp.float32), np.float64)


@pytest.mark.parametrize("axes, x_shape, k_shape", [(1, (3, 5, 16), (16, 4, 8)), (2, (6, 4, 8), (4, 8, 24)),
                                                    (3, (2, 5, 4, 4, 3), (4, 4, 3, 16))])
def test_float32_is_the_plain_contraction(axes, x_shape, k_shape):
    x = jax.random.normal(jax.random.key(0), x_shape)
    kernel = jax.random.normal(jax.random.key(1), k_shape)
    expected = np.tensordot(np.asarray(x, np.float64), np.asarray(kernel, np.float64), axes)
    np.testing.assert_allclose(linear.tensordot(x, kernel, axes), expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_products_are_accumulated_in_float32_and_rounded_once():
    x, x64 = bf16_values((4, 7, 96), 0)
    kernel, k64 = bf16_values((96, 3, 8), 1)
    out = linear.tensordot(x, kernel, 1)
    assert out.dtype == jnp.bfloat16 and out.shape == (4, 7, 3, 8)
    # The float64 product rounded to bfloat16, within the one rounding float32 accumulation adds.
    expected = np.tensordot(x64, k64, 1)
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), expected, rtol=2 ** -7, atol=1e-2)


def test_bfloat16_gradients_are_the_transposed_products():
    x, x64 = bf16_values((12, 32), 2)
    kernel, k64 = bf16_values((32, 16), 3)
    grad_out, g64 = bf16_values((12, 16), 4)
    _, vjp = jax.vjp(lambda a, b: linear.tensordot(a, b, 1), x, kernel)
    dx, dkernel = vjp(grad_out)
    assert dx.dtype == dkernel.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(dx.astype(jnp.float32)), g64 @ k64.T, rtol=2 ** -7, atol=2e-2)
    np.testing.assert_allclose(np.asarray(dkernel.astype(jnp.float32)), x64.T @ g64, rtol=2 ** -7, atol=2e-2)


def test_every_bfloat16_product_reads_bfloat16_and_writes_float32():
    """The form XLA:CPU sends to YNNPACK's bfloat16 (AMX) kernels, forward and in the gradients."""
    x = jnp.ones((8, 32), jnp.bfloat16)
    kernel = jnp.ones((32, 16), jnp.float32)

    def loss(kernel, x):
        return linear.tensordot(x, kernel.astype(jnp.bfloat16), 1).astype(jnp.float32).sum()

    hlo = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(kernel, x).as_text()
    dots = re.findall(r"stablehlo.dot_general.*", hlo)
    assert len(dots) == 3, dots  # y, dx, dW
    assert all(re.search(r"\(tensor<\d+x\d+xbf16>, tensor<\d+x\d+xbf16>\) -> tensor<\d+x\d+xf32>", dot) for dot in dots), dots


def test_dense_with_the_dot_general_is_nn_dense_in_float32():
    x = jax.random.normal(jax.random.key(5), (3, 10, 24))
    plain, ours = nn.Dense(12), nn.Dense(12, dot_general=linear.dot_general)
    params = jax.jit(plain.init)(jax.random.key(6), x)
    np.testing.assert_array_equal(ours.apply(params, x), plain.apply(params, x))
