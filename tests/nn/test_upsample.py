"""upsample_conv is nearest-neighbour doubling then a 3x3 'SAME' convolution: against a float64
NumPy reference, its gradients against the doubled-input form's, and UpsampleConv against the
nn.Conv it replaces (same parameters, same initialisation, same output)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.vq import UpsampleConv
from mmjax.nn.upsample import phase_kernels, upsample_conv

RNG = np.random.default_rng(0)


def numpy_upsample_conv(x, kernel, bias):
    """float64: repeat every pixel 2 x 2, zero-pad by one, sum the 3 x 3 window times the kernel."""
    u = np.repeat(np.repeat(x.astype(np.float64), 2, axis=1), 2, axis=2)
    u = np.pad(u, ((0, 0), (1, 1), (1, 1), (0, 0)))
    batch, height, width = x.shape[0], 2 * x.shape[1], 2 * x.shape[2]
    y = np.zeros((batch, height, width, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            y += np.einsum("bhwc,co->bhwo", u[:, dy:dy + height, dx:dx + width], kernel[dy, dx].astype(np.float64))
    return y + bias


def doubled_conv(x, kernel, bias):
    u = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return jax.lax.conv_general_dilated(u, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (1, 1, 1, 4), (3, 6, 6, 8)])
def test_upsample_conv_equals_doubling_then_a_3x3_convolution(shape):
    x = RNG.normal(size=shape).astype(np.float32)
    kernel = RNG.normal(size=(3, 3, shape[-1], 5)).astype(np.float32)
    bias = RNG.normal(size=5).astype(np.float32)
    y = upsample_conv(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias))
    assert y.shape == (shape[0], 2 * shape[1], 2 * shape[2], 5)
    np.testing.assert_allclose(y, numpy_upsample_conv(x, kernel, bias), rtol=1e-5, atol=1e-5)


def test_upsample_conv_gradients_equal_the_doubled_input_forms():
    x = jnp.asarray(RNG.normal(size=(2, 4, 3, 6)), jnp.float32)
    kernel = jnp.asarray(RNG.normal(size=(3, 3, 6, 4)), jnp.float32)
    bias = jnp.asarray(RNG.normal(size=4), jnp.float32)
    target = jnp.asarray(RNG.normal(size=(2, 8, 6, 4)), jnp.float32)

    def loss(f):
        return lambda x, k, b: jnp.sum(jnp.tanh(f(x, k, b)) * target)

    ours = jax.grad(loss(upsample_conv), argnums=(0, 1, 2))(x, kernel, bias)
    reference = jax.grad(loss(doubled_conv), argnums=(0, 1, 2))(x, kernel, bias)
    for got, want in zip(ours, reference):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_phase_kernels_sum_the_taps_that_land_on_the_same_input_pixel():
    kernel = RNG.normal(size=(3, 3, 2, 2))
    k = np.asarray(phase_kernels(jnp.asarray(kernel, jnp.float32)))
    # Phase (0, 0): rows {−1} and {0, +1}, columns likewise -> window [[W00, W01+W02], [W10+W20, ...]].
    np.testing.assert_allclose(k[0, 0, 0, 0], kernel[0, 0], rtol=1e-6)
    np.testing.assert_allclose(k[0, 0, 0, 1], kernel[0, 1] + kernel[0, 2], rtol=1e-6)
    np.testing.assert_allclose(k[0, 0, 1, 1], kernel[1:, 1:].sum((0, 1)), rtol=1e-6)
    # Phase (1, 0): rows {−1, 0} and {+1}.
    np.testing.assert_allclose(k[1, 0, 0, 0], kernel[:2, 0].sum(0), rtol=1e-6)
    np.testing.assert_allclose(k[1, 0, 1, 1], kernel[2, 1:].sum(0), rtol=1e-6)
    # Every phase's taps add up to the whole kernel.
    np.testing.assert_allclose(k.sum((2, 3)), np.broadcast_to(kernel.sum((0, 1)), (2, 2, 2, 2)), rtol=1e-5)


def test_a_kernel_that_is_not_3x3_or_does_not_fit_x_is_refused():
    x = jnp.zeros((1, 2, 2, 3))
    with pytest.raises(ValueError, match=r"\[3, 3, c_in, c_out\]"):
        upsample_conv(x, jnp.zeros((5, 5, 3, 4)))
    with pytest.raises(ValueError, match="3 channels"):
        upsample_conv(x, jnp.zeros((3, 3, 2, 4)))


def test_upsample_conv_module_is_the_nn_conv_it_replaces():
    """Same parameter tree and initial values as nn.Conv on the doubled input (the decoder's
    layer before this change), and the same output: checkpoints written before load unchanged."""

    class Before(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(7, (3, 3), name="up")(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))

    class After(nn.Module):
        @nn.compact
        def __call__(self, x):
            return UpsampleConv(7, name="up")(x)

    x = jnp.asarray(RNG.normal(size=(2, 3, 4, 5)), jnp.float32)
    before = Before().init(jax.random.key(3), x)["params"]
    after = After().init(jax.random.key(3), x)["params"]
    assert jax.tree.map(jnp.shape, after) == jax.tree.map(jnp.shape, before)
    np.testing.assert_array_equal(after["up"]["kernel"], before["up"]["kernel"])
    params = {"up": {"kernel": before["up"]["kernel"], "bias": jnp.asarray(RNG.normal(size=7), jnp.float32)}}
    np.testing.assert_allclose(After().apply({"params": params}, x), Before().apply({"params": params}, x),
                               rtol=1e-5, atol=1e-5)


def test_bfloat16_input_with_float32_parameters_computes_in_float32_as_nn_conv_does():
    x = jnp.asarray(RNG.normal(size=(2, 4, 4, 6)), jnp.bfloat16)
    kernel = jnp.asarray(RNG.normal(size=(3, 3, 6, 5)), jnp.float32)
    y = upsample_conv(x, kernel)  # bias None: the kernel alone sets the type with x
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, numpy_upsample_conv(np.asarray(x, np.float32), np.asarray(kernel), 0.0),
                               rtol=1e-5, atol=1e-4)


def test_the_vq_decoder_keeps_the_parameters_and_output_of_its_doubled_input_form():
    """The whole decoder against the one it replaced (nn.Conv on jnp.repeat), on the same
    parameters: checkpoints written before the change decode the same pictures."""
    from mmjax.models.vq import ConvDecoder

    class DecoderBefore(nn.Module):
        channels: tuple

        @nn.compact
        def __call__(self, z):
            x = nn.Conv(self.channels[-1], (3, 3), name="stem")(z)
            from mmjax.models.vq import ResidualBlock
            x = ResidualBlock(self.channels[-1], name="res_0")(x)
            for i, channels in enumerate(reversed(self.channels)):
                x = jnp.repeat(jnp.repeat(nn.relu(x), 2, axis=1), 2, axis=2)
                x = nn.relu(nn.Conv(channels, (3, 3), name=f"up_{i}")(x))
            return nn.Conv(3, (3, 3), name="to_pixels")(x)

    z = jnp.asarray(RNG.normal(size=(2, 3, 3, 8)), jnp.float32)
    before = DecoderBefore((4, 8, 8)).init(jax.random.key(0), z)
    after = ConvDecoder((4, 8, 8)).init(jax.random.key(0), z)
    assert jax.tree.map(jnp.shape, after) == jax.tree.map(jnp.shape, before)
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)  # same initialisation, leaf by leaf
    params = jax.tree.map(lambda p: p + 0.1 * jnp.asarray(RNG.normal(size=p.shape), p.dtype), before)
    out = ConvDecoder((4, 8, 8)).apply(params, z)
    assert out.shape == (2, 24, 24, 3)
    np.testing.assert_allclose(out, DecoderBefore((4, 8, 8)).apply(params, z), rtol=1e-4, atol=1e-4)
