"""Transformer blocks and the layer stack.

A pre-LayerNorm encoder block (Xiong et al., 2020; used by ViT, CLIP, SigLIP) is

    x = x + Attention(LN(x))          # tokens exchange information
    x = x + MLP(LN(x))                # each token is transformed on its own
    MLP(h) = W₂ · act(W₁ h + b₁) + b₂,   W₁: [width, mlp_dim], W₂: [mlp_dim, width]

Putting LayerNorm before each sub-layer keeps the residual stream an un-normalised sum, which
trains stably without learning-rate warm-up tricks at depth. The stack ends with a final LayerNorm.

`Encoder` applies `depth` identical blocks with `nn.scan`: the block is traced and compiled once
and its parameters are stacked along a leading `layers` axis ([depth, ...]), so compile time does
not grow with depth (a ViT-B/16 step compiles in seconds instead of minutes). With `remat=True`
each block's activations are recomputed in the backward pass instead of stored, trading about a
third more compute for activation memory that no longer grows with depth.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.attention import MultiHeadAttention

Array = jax.Array

# Exact (erf) GELU, as torch.nn.GELU and the CLIP/ViT papers use.
gelu = functools.partial(jax.nn.gelu, approximate=False)


def quick_gelu(x: Array) -> Array:
    """x · sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""
    return x * jax.nn.sigmoid(1.702 * x)


class MlpBlock(nn.Module):
    """[..., width] -> [..., width]: W₂ · act(W₁ x + b₁) + b₂ with hidden size `mlp_dim`."""

    mlp_dim: int
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        width = x.shape[-1]
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        h = self.activation(dense(self.mlp_dim, name="fc1")(x))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return dense(width, name="fc2")(h)


class EncoderBlock(nn.Module):
    """One pre-LN block: x + Attn(LN(x)), then + MLP(LN(x)). [batch, seq, width] in and out.

    `mask` (bool, broadcastable to [batch, heads, seq, seq]) restricts self-attention: causal for
    text, padding for ragged batches, both combined for a padded causal text tower.
    """

    num_heads: int
    mlp_dim: int
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    use_fused_attention: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True) -> Array:
        norm = functools.partial(
            nn.LayerNorm, epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype
        )
        h = norm(name="ln_attn")(x)
        h = MultiHeadAttention(
            num_heads=self.num_heads,
            dropout_rate=self.dropout_rate,
            use_fused=self.use_fused_attention,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="attn",
        )(h, mask=mask, deterministic=deterministic)
        x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        h = norm(name="ln_mlp")(x)
        h = MlpBlock(
            self.mlp_dim,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlp",
        )(h, deterministic=deterministic)
        return x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)


class _ScannedBlock(EncoderBlock):
    """EncoderBlock with the (carry, per-step output) signature that `nn.scan` expects."""

    @nn.compact
    def __call__(self, x, mask, deterministic):  # type: ignore[override]
        return super().__call__(x, mask, deterministic), None


class Encoder(nn.Module):
    """`depth` pre-LN blocks and a final LayerNorm: [batch, seq, width] -> [batch, seq, width].

    Attributes:
      depth: number of blocks.
      num_heads, mlp_dim, activation, dropout_rate: per block.
      scan: stack the blocks with `nn.scan` (parameters get a leading [depth] axis). Turn off only
        to inspect per-layer parameters by name (`block_0`, `block_1`, ...).
      remat: recompute block activations in the backward pass (saves memory, costs compute).
    """

    depth: int
    num_heads: int
    mlp_dim: int
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    use_fused_attention: bool = False
    scan: bool = True
    remat: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True) -> Array:
        block_kwargs = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
            use_fused_attention=self.use_fused_attention,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        if self.scan:
            block_cls = _ScannedBlock
            if self.remat:
                # argnums count `self`: 3 is `deterministic`, a Python bool.
                block_cls = nn.remat(block_cls, prevent_cse=False, static_argnums=(3,))
            stack = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=self.depth,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(**block_kwargs, name="blocks")(x, mask, deterministic)
        else:
            block_cls = nn.remat(EncoderBlock, static_argnums=(3,)) if self.remat else EncoderBlock
            for i in range(self.depth):
                x = block_cls(**block_kwargs, name=f"block_{i}")(x, mask, deterministic)
        return nn.LayerNorm(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name="ln_final"
        )(x)
