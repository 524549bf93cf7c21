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

A cross-attention block adds a second attention between the two, in which text tokens read
image tokens (the ALBEF fusion layer; the transformer decoder layer of CoCa and of Vaswani et al.):

    x = x + SelfAttention(LN(x))               # text ↔ text; causal for a decoder
    x = x + CrossAttention(LN(x), context)     # queries from the text, keys/values from the image
    x = x + MLP(LN(x))

`CrossAttentionStack` scans `depth` of them like `Encoder`. With `causal=True` and
`decode=True` it generates one token at a time against a key/value cache (see
`MultiHeadAttention`); the cache is scanned like the parameters, one slice per layer.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.nn import linear
from mmjax.nn.attention import MultiHeadAttention, combine_masks, make_causal_mask

Array = jax.Array

# Logical axes of the residual stream [batch, seq, width] (see mmjax.training.sharding).
RESIDUAL_AXES = ("batch", "length", "act_embed")

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
        # In bfloat16 the products accumulate in float32, forward and backward (see `linear`).
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype,
                                  dot_general=linear.dot_general)
        # Megatron's split under tensor parallelism: fc1 column-parallel (each device computes
        # its slice of the hidden units), fc2 row-parallel (partial sums, one all-reduce).
        h = dense(
            self.mlp_dim,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
            name="fc1",
        )(x)
        if h.ndim == 3:
            h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = nn.Dropout(self.dropout_rate)(self.activation(h), deterministic=deterministic)
        return dense(
            width,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "embed")),
            name="fc2",
        )(h)


def relative_position_count(grid: tuple[int, int]) -> int:
    """Number of distinct 2-D offsets between two cells of a grid_h x grid_w grid."""
    return (2 * grid[0] - 1) * (2 * grid[1] - 1)


def relative_position_index(grid: tuple[int, int]) -> np.ndarray:
    """int [N, N] (N = grid_h·grid_w, row-major cells): index of the offset (dy, dx) from cell i to j."""
    y, x = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    dy = y[None, :] - y[:, None] + grid[0] - 1
    dx = x[None, :] - x[:, None] + grid[1] - 1
    return dy * (2 * grid[1] - 1) + dx


def relative_position_bias(table: Array, grid: tuple[int, int], seq: int) -> Array:
    """Attention bias [1, heads, seq, seq] from a per-head table [heads, (2h-1)(2w-1)] of offsets.

    bias[h, i, j] = table[h, offset(i -> j)] (Swin, BEiT): a head can look at "the cell to my
    left" whatever the picture. Tokens before the last h·w (a class token) get no bias.
    """
    cells = grid[0] * grid[1]
    if seq < cells:
        raise ValueError(f"relative_position_grid {grid} has {cells} cells; the sequence has only {seq} tokens")
    bias = table[:, relative_position_index(grid)]
    extra = seq - cells
    bias = jnp.pad(bias, ((0, 0), (extra, 0), (extra, 0)))
    return bias[None]


class EncoderBlock(nn.Module):
    """One pre-LN block: x + Attn(LN(x)), then + MLP(LN(x)). [batch, seq, width] in and out.

    `mask` (bool, broadcastable to [batch, heads, seq, seq]) restricts self-attention: causal for
    text, padding for ragged batches, both combined for a padded causal text tower. With
    `decode=True` the attention keeps a key/value cache and is causal by itself (a decoder-only
    model generating one token at a time, see `MultiHeadAttention`); x is then the new token(s)
    [batch, n_new, width]. With
    `relative_position_grid`, the block owns a table [heads, (2h-1)(2w-1)] (zero at init) added
    to the attention logits by offset (`relative_position_bias`).
    """

    num_heads: int
    mlp_dim: int
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    use_fused_attention: bool = False
    relative_position_grid: tuple[int, int] | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True,
                 decode: bool = False) -> Array:
        bias = None
        if self.relative_position_grid is not None:
            if decode:
                raise ValueError("decode=True does not support relative_position_grid (the bias "
                                 "is laid out for the whole sequence)")
            table = self.param("relative_position_bias", nn.initializers.zeros_init(),
                               (self.num_heads, relative_position_count(self.relative_position_grid)))
            bias = relative_position_bias(table, self.relative_position_grid, x.shape[1])
        # The residual stream: examples split over the data-parallel axes, width whole.
        x = nn.with_logical_constraint(x, RESIDUAL_AXES)
        norm = functools.partial(
            nn.LayerNorm, epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype
        )
        # --8<-- [start:block]
        h = norm(name="ln_attn")(x)
        h = MultiHeadAttention(
            num_heads=self.num_heads,
            dropout_rate=self.dropout_rate,
            use_fused=self.use_fused_attention,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="attn",
        )(h, mask=mask, bias=bias, deterministic=deterministic, decode=decode)
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
        # --8<-- [end:block]


class _ScannedBlock(EncoderBlock):
    """EncoderBlock with the (carry, per-step output) signature that `nn.scan` expects."""

    @nn.compact
    def __call__(self, x, mask, deterministic, decode=False):  # type: ignore[override]
        return super().__call__(x, mask, deterministic, decode), None



def _apply_blocks(
    block_cls: type[nn.Module],
    scanned_cls: type[nn.Module],
    block_kwargs: dict,
    args: tuple,
    *,
    depth: int,
    scan: bool,
    remat: bool | Callable,
    static_argnums: tuple[int, ...],
    unroll: int | bool = 1,
) -> Array:
    """`depth` blocks applied in turn to args[0]; args[1:] are the same for every block.

    With `scan`, one block is traced and compiled, its parameters (and decoding cache) stacked on
    a leading [depth] axis under the name `blocks`; without it the blocks are unrolled as
    `block_0`, `block_1`, ... `scanned_cls` is `block_cls` returning (carry, None) as `nn.scan`
    expects. Must be called from inside a compact module method (the blocks become its children).
    `unroll` (scan only): blocks per iteration of the compiled loop, True for all of them.
    """
    # remat=True saves nothing (each block is recomputed whole); a policy saves what it names.
    policy = remat if callable(remat) else None
    # --8<-- [start:scan]
    if scan:
        cls = nn.remat(scanned_cls, prevent_cse=False, static_argnums=static_argnums, policy=policy) if remat else scanned_cls
        stack = nn.scan(
            cls,
            # A decoding cache is per layer, so it is stacked and sliced like the params.
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * (len(args) - 1),
            length=depth,
            unroll=depth if unroll is True else max(1, int(unroll)),
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = stack(**block_kwargs, name="blocks")(*args)
        return x
    cls = nn.remat(block_cls, static_argnums=static_argnums, policy=policy) if remat else block_cls
    x = args[0]
    for i in range(depth):
        x = cls(**block_kwargs, name=f"block_{i}")(x, *args[1:])
    return x
    # --8<-- [end:scan]

class Encoder(nn.Module):
    """`depth` pre-LN blocks and a final LayerNorm: [batch, seq, width] -> [batch, seq, width].

    Called as `encoder(x, mask, deterministic, decode)`. `decode=True` makes it a decoder-only
    stack generating against a key/value cache (collection 'cache', one slice per layer; create
    it with `init(..., decode=True)` on a [batch, max_len, width] input): each call takes the next
    token(s) [batch, n_new, width] and attends causally over what the cache holds.

    Attributes:
      depth: number of blocks.
      num_heads, mlp_dim, activation, dropout_rate: per block.
      scan: stack the blocks with `nn.scan` (parameters get a leading [depth] axis). Turn off only
        to inspect per-layer parameters by name (`block_0`, `block_1`, ...).
      unroll: with `scan`, how many blocks one iteration of the compiled loop applies; True: all
        (a straight-line program, parameters still stacked). A loop saves each block's
        activations for the backward pass into zero-filled [depth, ...] stacks, slice by slice;
        unrolled, XLA sees every layer's buffers directly: on a CPU 12-25% faster steps
        (BENCHMARKS.md) for a compile time that grows with depth (ViT-B/16: 10 s -> 20 s).
      relative_position_grid: (grid_h, grid_w) of the last grid_h·grid_w tokens (image patches,
        row-major): each block's self-attention adds a learned bias per head and 2-D offset,
        `relative_position_bias` (Swin, BEiT). None: no bias.
      remat: False: keep every activation for the backward pass. True: keep only each block's
        input and recompute the rest (memory no longer grows with depth, about a third more
        compute). Or a `jax.checkpoint_policies` policy choosing what to keep, e.g.
        `dots_with_no_batch_dims_saveable` (keep the matmul outputs, recompute the cheap
        element-wise ops in between).
    """

    depth: int
    num_heads: int
    mlp_dim: int
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    use_fused_attention: bool = False
    relative_position_grid: tuple[int, int] | None = None
    scan: bool = True
    unroll: int | bool = 1
    remat: bool | Callable = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True,
                 decode: bool = False) -> Array:
        block_kwargs = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
            use_fused_attention=self.use_fused_attention,
            relative_position_grid=self.relative_position_grid,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = _apply_blocks(
            EncoderBlock, _ScannedBlock, block_kwargs, (x, mask, deterministic, decode),
            # argnums count `self`: 3 and 4 are `deterministic` and `decode`, Python bools.
            depth=self.depth, scan=self.scan, remat=self.remat, static_argnums=(3, 4), unroll=self.unroll,
        )
        return nn.LayerNorm(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name="ln_final"
        )(x)


def _check_mask(name: str, mask: Array | None) -> None:
    """A 2-D validity vector would broadcast against the wrong axes; insist on 4-D masks."""
    if mask is not None and mask.ndim != 4:
        raise ValueError(
            f"{name} must be broadcastable to [batch, heads, q_len, kv_len] (4-D), got shape "
            f"{mask.shape}; for per-token validity [batch, kv_len] pass valid[:, None, None, :]"
        )


class CrossAttentionBlock(nn.Module):
    """Pre-LN block with self-attention, cross-attention to a context, and an MLP.

        x = x + SelfAttn(LN(x), mask = self_mask [∧ causal])
        x = x + CrossAttn(LN(x), context, mask = context_mask)
        x = x + MLP(LN(x))

    Shapes: x [batch, seq, width] (text tokens) and context [batch, ctx_len, ctx_width] (image
    tokens; ctx_width may differ from width, the key/value projections map it to the heads).
    Returns [batch, seq, width]. The context is used as given: pass it already normalised (the
    final LayerNorm of the image tower), as both ALBEF and CoCa do.

    One block serves two models: `causal=False` is ALBEF's fusion layer (every text token sees
    the whole caption), `causal=True` is the decoder layer of a captioner (token i sees tokens
    <= i, so it can be trained with teacher forcing and sampled left to right).

    Args (of `__call__`):
      x: [batch, seq, width].
      context: [batch, ctx_len, ctx_width].
      self_mask: optional bool, broadcastable to [batch, heads, seq, seq] (text padding, e.g.
        `make_padding_mask(text_valid)`); the causal mask is added by the block itself.
      context_mask: optional bool, broadcastable to [batch, heads, seq, ctx_len]; True = the
        image token may be read. For per-token validity use `image_valid[:, None, None, :]`.
      deterministic: disables dropout.
      decode: autoregressive decoding with the self-attention key/value cache (`causal=True`
        only). `x` is then the new token(s) [batch, n_new, width]; `self_mask`, if any, must
        broadcast to [batch, heads, n_new, max_len]. The cross-attention is not cached: the
        keys/values of the image tokens are recomputed at every step. That keeps the cache a
        function of the text alone (one image batch cannot leave stale keys behind for the next)
        at a price of 4·ctx_len·ctx_width·width flops per example, layer and step, against about
        24·width² for the rest of the layer; with hundreds of image tokens the recomputation
        dominates the step's flops. XLA does not hoist it out of a jitted generation loop by
        itself. A loop that needs that time back can keep the projected context in the cache.
    """

    num_heads: int
    mlp_dim: int
    causal: bool = False
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    use_fused_attention: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        context: Array,
        self_mask: Array | None = None,
        context_mask: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        if decode and not self.causal:
            raise ValueError(
                "decode=True needs causal=True: in a bidirectional block every output depends on "
                "tokens that have not been generated yet"
            )
        _check_mask("self_mask", self_mask)
        _check_mask("context_mask", context_mask)
        x = nn.with_logical_constraint(x, RESIDUAL_AXES)
        norm = functools.partial(
            nn.LayerNorm, epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype
        )
        attention = functools.partial(
            MultiHeadAttention,
            num_heads=self.num_heads,
            dropout_rate=self.dropout_rate,
            use_fused=self.use_fused_attention,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

        def residual(x: Array, h: Array) -> Array:
            return x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)

        # Self-attention among the text tokens. When decoding, the cache applies causality itself
        # (the new tokens are not at positions 0..n_new-1).
        if self.causal and not decode:
            self_mask = combine_masks(make_causal_mask(x.shape[1]), self_mask)
        h = attention(name="self_attn")(
            norm(name="ln_self")(x), mask=self_mask, deterministic=deterministic, decode=decode
        )
        x = residual(x, h)

        # Cross-attention: queries from the text, keys and values from the image tokens.
        h = attention(name="cross_attn")(
            norm(name="ln_cross")(x), context, mask=context_mask, deterministic=deterministic
        )
        x = residual(x, h)

        # Position-wise MLP.
        h = MlpBlock(
            self.mlp_dim,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlp",
        )(norm(name="ln_mlp")(x), deterministic=deterministic)
        return residual(x, h)


class _ScannedCrossAttentionBlock(CrossAttentionBlock):
    """CrossAttentionBlock with the (carry, per-step output) signature that `nn.scan` expects."""

    @nn.compact
    def __call__(self, x, context, self_mask, context_mask, deterministic, decode):  # type: ignore[override]
        return super().__call__(x, context, self_mask, context_mask, deterministic, decode), None


class CrossAttentionStack(nn.Module):
    """`depth` CrossAttentionBlocks and a final LayerNorm: [batch, seq, width] -> same.

    Called as `stack(x, context, self_mask, context_mask, deterministic, decode)` with the
    shapes of `CrossAttentionBlock`. With `scan=True` the parameters of all blocks are stacked on
    a leading [depth] axis (`blocks/...`), and so is the decoding cache: `cached_key` and
    `cached_value` are [depth, batch, max_len, heads, head_dim], `cache_index` is [depth].

    Decoding requires `causal=True`.

    Examples:
      >>> stack = CrossAttentionStack(depth=2, num_heads=2, mlp_dim=32, causal=True)
      >>> image_tokens = jnp.zeros((1, 5, 16))
      >>> # The cache takes its [batch, max_len] from the dummy text passed to init.
      >>> variables = stack.init(jax.random.key(0), jnp.zeros((1, 8, 16)), image_tokens, decode=True)
      >>> params, cache = variables['params'], variables['cache']
      >>> @jax.jit
      ... def step(params, cache, token, image_tokens):
      ...     out, updated = stack.apply(
      ...         {'params': params, 'cache': cache}, token, image_tokens, decode=True, mutable=['cache']
      ...     )
      ...     return out, updated['cache']
      >>> out, cache = step(params, cache, jnp.ones((1, 1, 16)), image_tokens)
      >>> out.shape, cache['blocks']['self_attn']['cache_index'].tolist()
      ((1, 1, 16), [1, 1])

    Attributes:
      depth: number of blocks.
      num_heads, mlp_dim, causal, activation, dropout_rate: per block.
      scan: stack the blocks with `nn.scan`; off, they are named `block_0`, `block_1`, ...
      unroll: with `scan`, blocks per iteration of the compiled loop; True: all (see Encoder).
      remat: False: keep every activation for the backward pass. True: keep only each block's
        input and recompute the rest (memory no longer grows with depth, about a third more
        compute). Or a `jax.checkpoint_policies` policy choosing what to keep, e.g.
        `dots_with_no_batch_dims_saveable` (keep the matmul outputs, recompute the cheap
        element-wise ops in between).
    """

    depth: int
    num_heads: int
    mlp_dim: int
    causal: bool = False
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    use_fused_attention: bool = False
    scan: bool = True
    unroll: int | bool = 1
    remat: bool | Callable = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        context: Array,
        self_mask: Array | None = None,
        context_mask: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        block_kwargs = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            causal=self.causal,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
            use_fused_attention=self.use_fused_attention,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = _apply_blocks(
            CrossAttentionBlock, _ScannedCrossAttentionBlock, block_kwargs,
            (x, context, self_mask, context_mask, deterministic, decode),
            # argnums count `self`: 5 and 6 are `deterministic` and `decode`, Python bools.
            depth=self.depth, scan=self.scan, remat=self.remat, static_argnums=(5, 6),
            unroll=self.unroll,
        )
        return nn.LayerNorm(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name="ln_final"
        )(x)
