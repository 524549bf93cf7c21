"""Encoder blocks and the scanned stack."""

import jax
import numpy as np
import pytest

from mmjax.nn.attention import make_causal_mask
from mmjax.nn.transformer import Encoder, EncoderBlock, MlpBlock, quick_gelu


def test_mlp_block_equals_explicit_formula():
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    module = MlpBlock(mlp_dim=16)
    p = module.init(jax.random.key(0), x)["params"]
    h = x @ np.asarray(p["fc1"]["kernel"]) + np.asarray(p["fc1"]["bias"])
    h = np.asarray(jax.nn.gelu(h, approximate=False))
    expected = h @ np.asarray(p["fc2"]["kernel"]) + np.asarray(p["fc2"]["bias"])
    np.testing.assert_allclose(module.apply({"params": p}, x), expected, rtol=1e-5, atol=1e-5)


def test_quick_gelu():
    x = np.linspace(-4, 4, 9)
    np.testing.assert_allclose(quick_gelu(x), x / (1 + np.exp(-1.702 * x)), rtol=1e-6)


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_stack_equals_unrolled_blocks(remat):
    """Scan stacks per-layer parameters on a leading axis; applying block i with slice i is the same."""
    x = np.random.default_rng(1).standard_normal((2, 6, 16)).astype(np.float32)
    mask = make_causal_mask(6)
    scanned = Encoder(depth=3, num_heads=4, mlp_dim=32, scan=True, remat=remat)
    p = scanned.init(jax.random.key(0), x, mask)["params"]
    assert p["blocks"]["mlp"]["fc1"]["kernel"].shape == (3, 16, 32)
    out = scanned.apply({"params": p}, x, mask)

    unrolled = Encoder(depth=3, num_heads=4, mlp_dim=32, scan=False)
    p_unrolled = {f"block_{i}": jax.tree.map(lambda a: a[i], p["blocks"]) for i in range(3)}
    p_unrolled["ln_final"] = p["ln_final"]
    np.testing.assert_allclose(out, unrolled.apply({"params": p_unrolled}, x, mask), rtol=1e-5, atol=1e-5)


def test_causal_stack_ignores_future_tokens():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 8, 16)).astype(np.float32)
    enc = Encoder(depth=2, num_heads=2, mlp_dim=32)
    p = enc.init(jax.random.key(0), x, make_causal_mask(8))
    x2 = x.copy()
    x2[:, 6:] = rng.standard_normal((1, 2, 16))
    a, b = enc.apply(p, x, make_causal_mask(8)), enc.apply(p, x2, make_causal_mask(8))
    np.testing.assert_allclose(a[:, :6], b[:, :6], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[:, 6:], b[:, 6:])


def test_dropout_only_in_training_mode():
    x = np.random.default_rng(3).standard_normal((2, 4, 16)).astype(np.float32)
    block = EncoderBlock(num_heads=2, mlp_dim=32, dropout_rate=0.5)
    p = block.init(jax.random.key(0), x)
    det = block.apply(p, x, None, True)
    np.testing.assert_array_equal(det, block.apply(p, x, None, True))
    train = block.apply(p, x, None, False, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(det, train)
