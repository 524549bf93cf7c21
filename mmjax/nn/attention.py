"""Scaled dot-product attention and multi-head attention (self and cross).

The whole of attention is one formula (Vaswani et al., 2017):

    Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d) + bias + mask) V

computed independently for every head. Shapes used throughout this file:

    query: [batch, q_len, heads, head_dim]      (the positions that ask)
    key:   [batch, kv_len, heads, head_dim]     (the positions that are looked at)
    value: [batch, kv_len, heads, head_dim]     (what is read out of them)
    mask:  bool, broadcastable to [batch, heads, q_len, kv_len]; True = may attend
    bias:  float, broadcastable to [batch, heads, q_len, kv_len]; added to the logits

Self-attention is the case where query, key and value come from one sequence; cross-attention
(text tokens reading image tokens, a decoder reading an encoder) takes query from one sequence and
key/value from another, so q_len and kv_len may differ.

Numerics, and why:

- The logits and the softmax are computed in float32 even when the model runs in bfloat16: the
  exponentials of a bfloat16 softmax lose most of their precision for long rows.
- Masked logits are set to the most negative finite float32 rather than -inf: -inf - (-inf) in the
  max-subtraction of softmax would give NaN.
- A row whose every key is masked (a padding query, say) has no meaningful softmax; it returns
  zeros, and its gradient is zero rather than NaN, so padding can never poison a batch.

Autoregressive decoding with a key/value cache (`MultiHeadAttention(..., decode=True)`):
generating token t with a causal model only needs token t's query against the keys and values of
tokens 0..t. Those of tokens 0..t-1 do not change from one step to the next (causality: an
earlier token never sees a later one), so they are computed once and kept in a cache:

    cached_key, cached_value: [batch, max_len, heads, head_dim]   cache_index: int32 scalar

Each decode call projects only the new token(s), writes their key/value at `cache_index`, attends
over the whole cache with key j visible to the query at position p iff j <= p, and advances the
index. Without the cache, step t re-runs the model over the whole prefix: O(t·width²) projections
plus O(t²·width) attention, so O(n³·width) over a caption of n tokens. With it, step t costs
O(width²) for the new token's projections plus O(max_len·width) to read the cache, O(n) per
token. The cache has a fixed length so every step has the same shapes and jit compiles the step
once; positions past `cache_index` hold zeros and are masked out.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import linear

Array = jax.Array


def scaled_dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None = None,
    bias: Array | None = None,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    deterministic: bool = True,
    precision: jax.lax.Precision | None = None,
) -> Array:
    """softmax(q kᵀ / sqrt(head_dim) + bias, masked) v, per head.

    Args:
      query: [batch, q_len, heads, head_dim].
      key: [batch, kv_len, heads, head_dim].
      value: [batch, kv_len, heads, head_dim_v].
      mask: optional bool array broadcastable to [batch, heads, q_len, kv_len]; True = attend.
      bias: optional float array broadcastable to [batch, heads, q_len, kv_len].
      dropout_rate: probability of dropping an attention weight (training only).
      dropout_rng: PRNG key for dropout; required when dropout is active.
      deterministic: disables dropout when True.
      precision: matmul precision.

    Returns:
      [batch, q_len, heads, head_dim_v] in the dtype of `value`. Rows whose mask is all False are 0.

    Examples:
      >>> q = jnp.ones((2, 3, 4, 8)); kv = jnp.ones((2, 5, 4, 8))
      >>> scaled_dot_product_attention(q, kv, kv).shape
      (2, 3, 4, 8)
    """
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError(
            "query, key and value must be [batch, len, heads, head_dim]; got shapes "
            f"{query.shape}, {key.shape}, {value.shape}"
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query head_dim {query.shape[-1]} != key head_dim {key.shape[-1]}")
    if key.shape[1] != value.shape[1]:
        raise ValueError(f"key length {key.shape[1]} != value length {value.shape[1]}")

    # --8<-- [start:core]
    # Scale the query, not the logits: one multiply over [b, q, h, d] instead of [b, h, q, k].
    head_dim = query.shape[-1]
    query = query / jnp.sqrt(head_dim).astype(query.dtype)

    # Logits [batch, heads, q_len, kv_len], accumulated and kept in (at least) float32.
    logits_dtype = jnp.promote_types(query.dtype, jnp.float32)
    logits = jnp.einsum(
        "bqhd,bkhd->bhqk", query, key, precision=precision, preferred_element_type=logits_dtype
    )
    if bias is not None:
        logits = logits + bias.astype(logits_dtype)

    if mask is not None:
        # Masked logits get the most negative finite float (not -inf, which gives NaN in softmax).
        big_neg = jnp.finfo(logits_dtype).min
        logits = jnp.where(mask, logits, big_neg)

    weights = jax.nn.softmax(logits, axis=-1)

    if mask is not None:
        # A fully masked row gets uniform weights from the softmax above; zero it so that the row's
        # output (and its gradient) is exactly zero.
        any_valid = jnp.any(mask, axis=-1, keepdims=True)
        weights = jnp.where(any_valid, weights, 0.0)
    # --8<-- [end:core]

    if not deterministic and dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError("dropout_rng is required when dropout_rate > 0 and not deterministic")
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)

    # Read the values out with the (float32) weights cast to the compute dtype.
    return jnp.einsum(
        "bhqk,bkhd->bqhd", weights.astype(value.dtype), value, precision=precision
    )


# --8<-- [start:masks]
def make_causal_mask(length: int) -> Array:
    """Causal mask [1, 1, length, length]: position i may attend to positions j <= i."""
    idx = jnp.arange(length)
    return (idx[None, :] <= idx[:, None])[None, None]


def make_padding_mask(query_valid: Array, key_valid: Array | None = None) -> Array:
    """Padding mask [batch, 1, q_len, kv_len] from per-token validity.

    Args:
      query_valid: bool [batch, q_len], True for real (non-padding) query tokens.
      key_valid: bool [batch, kv_len]; defaults to `query_valid` (self-attention).

    A query may attend to a key iff both are real tokens. Rows of padding queries are therefore
    fully masked and produce zeros.
    """
    if key_valid is None:
        key_valid = query_valid
    return (query_valid[:, :, None] & key_valid[:, None, :])[:, None]
# --8<-- [end:masks]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of the given boolean masks (None entries are ignored)."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


def fused_dot_product_attention(
    query: Array, key: Array, value: Array, mask: Array | None = None, bias: Array | None = None
) -> Array:
    """The same computation through `jax.nn.dot_product_attention` (XLA's or cuDNN's kernel).

    Shapes as in `scaled_dot_product_attention`. Fully masked rows are zeroed here too, since the
    library kernel returns the mean of the values for them.
    """
    if mask is not None:
        mask = jnp.broadcast_to(
            mask, (query.shape[0], query.shape[2], query.shape[1], key.shape[1])
        )
    if bias is not None:
        bias = jnp.broadcast_to(
            bias, (query.shape[0], query.shape[2], query.shape[1], key.shape[1])
        ).astype(query.dtype)
    out = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask)
    if mask is not None:
        any_valid = jnp.any(mask, axis=-1)  # [batch, heads, q_len]
        out = jnp.where(jnp.transpose(any_valid, (0, 2, 1))[..., None], out, 0.0)
    return out


class HeadProjection(nn.Module):
    """The linear maps into and out of the heads, with logical axis names on their parameters.

        split (default):   [..., width] · kernel[width, heads, head_dim] + bias[heads, head_dim]
                           -> [..., heads, head_dim]          logical axes (embed, heads, kv)
        merge_heads=True:  [..., heads, head_dim] · kernel[heads, head_dim, width] + bias[width]
                           -> [..., width]                    logical axes (heads, kv, embed)

    Parameters, names and initial values are those of `nn.DenseGeneral` (the kernel initialiser
    sees the flattened 2-D shape, so fan-in and fan-out are those of the whole projection); it is
    written out because DenseGeneral hands the initialiser that flattened shape, on which the
    3-D axis names cannot be placed. The product is `linear.tensordot`.
    """

    features: int | tuple[int, int]
    merge_heads: bool = False
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Callable = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.merge_heads:
            kernel_shape = (*x.shape[-2:], self.features)
            names, bias_shape, bias_names = ("heads", "kv", "embed"), (self.features,), ("embed",)
            contracted = 2  # ...hd,hdo->...o
        else:
            kernel_shape = (x.shape[-1], *self.features)
            names, bias_shape, bias_names = ("embed", "heads", "kv"), self.features, ("heads", "kv")
            contracted = 1  # ...i,ihd->...hd
        flat = (kernel_shape[0] * kernel_shape[1], kernel_shape[2]) if self.merge_heads else (
            kernel_shape[0], kernel_shape[1] * kernel_shape[2])

        def init(rng, shape, dtype):
            return self.kernel_init(rng, flat, dtype).reshape(shape)

        kernel = self.param("kernel", nn.with_logical_partitioning(init, names), kernel_shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), bias_names),
                bias_shape, self.param_dtype,
            )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        # In bfloat16, accumulated in float32 forward and backward (see `linear`).
        y = linear.tensordot(x, kernel, axes=contracted)
        return y if bias is None else y + bias


class MultiHeadAttention(nn.Module):
    """Multi-head attention: project, attend per head, merge heads, project back.

        head_i = Attention(x_q W_q^i, x_kv W_k^i, x_kv W_v^i),  out = concat(head_1..head_h) W_o

    Call with `inputs_q` [batch, q_len, width_q] and optionally `inputs_kv` [batch, kv_len, width_kv]
    (cross-attention); without `inputs_kv` it is self-attention. Returns [batch, q_len, out_width].

    Decoding (`decode=True`, self-attention only) keeps keys and values in the `cache` collection
    (`cached_key`, `cached_value`: [batch, max_len, heads, head_dim]; `cache_index`: int32):

    - `init(..., decode=True)` on a [batch, max_len, width] input creates the cache (zeros, index 0)
      with the shapes of that input; the init forward pass itself is an ordinary causal pass. The
      parameters are the same as those of an init with `decode=False`.
    - `apply({'params': p, 'cache': c}, x_new, decode=True, mutable=['cache'])` with `x_new`
      [batch, n_new, width] (one token per step, or a prompt chunk) writes the new keys/values at
      `cache_index`, attends causally over the cache and returns (out, {'cache': updated}).
    - A decode call is always causal: the query at absolute position p sees cache positions
      <= p. `mask` and `bias`, if given, must broadcast to [batch, heads, n_new, max_len] (a
      key-padding mask over the cache, say) and are combined with that causal rule.
    - Writing past `max_len` is not checked (it cannot be under jit): `dynamic_update_slice`
      clamps the write position and would overwrite the last entries. Stop at `max_len` tokens.
    - Cross-attention has no cache (`decode=True` with `inputs_kv` is an error): its keys and
      values come from the fixed context, and callers recompute them each step (see
      `CrossAttentionBlock`).

    Examples:
      >>> mha = MultiHeadAttention(num_heads=2)
      >>> variables = mha.init(jax.random.key(0), jnp.zeros((1, 8, 16)), decode=True)
      >>> variables['cache']['cached_key'].shape
      (1, 8, 2, 8)
      >>> out, updated = mha.apply(variables, jnp.ones((1, 1, 16)), decode=True, mutable=['cache'])
      >>> out.shape, int(updated['cache']['cache_index'])
      ((1, 1, 16), 1)

    Attributes:
      num_heads: number of heads h.
      head_dim: per-head width d; defaults to width_q // num_heads.
      out_features: output width; defaults to width_q.
      use_bias: whether the projections have biases.
      dropout_rate: attention-weight dropout.
      use_fused: compute attention with `jax.nn.dot_product_attention` (same numbers; lets XLA or
        cuDNN pick a fused kernel on accelerators).
      dtype: compute dtype (e.g. bfloat16); parameters stay in `param_dtype`.
    """

    num_heads: int
    head_dim: int | None = None
    out_features: int | None = None
    use_bias: bool = True
    dropout_rate: float = 0.0
    use_fused: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Callable = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array | None = None,
        mask: Array | None = None,
        bias: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        if decode and inputs_kv is not None:
            raise ValueError(
                "decode=True caches self-attention keys/values; cross-attention (inputs_kv given) "
                "has no cache: call it with decode=False"
            )
        if inputs_kv is None:
            inputs_kv = inputs_q
        width = inputs_q.shape[-1]
        head_dim = self.head_dim or width // self.num_heads
        if self.head_dim is None and width % self.num_heads:
            raise ValueError(
                f"width {width} is not divisible by num_heads {self.num_heads}; "
                "set head_dim explicitly or change num_heads"
            )
        # Logical axes (see mmjax.training.sharding): tensor parallelism splits the heads, so
        # each device projects, attends and merges its own heads; FSDP splits the width.
        project = lambda name: HeadProjection(  # noqa: E731 - three identical projections
            (self.num_heads, head_dim),
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            name=name,
        )
        # [batch, len, width] -> [batch, len, heads, head_dim]
        heads_axes = ("batch", "length", "heads", "kv")
        query = nn.with_logical_constraint(project("query")(inputs_q), heads_axes)
        key = nn.with_logical_constraint(project("key")(inputs_kv), heads_axes)
        value = nn.with_logical_constraint(project("value")(inputs_kv), heads_axes)

        if decode:
            # Keys/values become the whole cache [batch, max_len, ...]; the mask adds causality.
            key, value, cache_mask = self._append_to_cache(key, value)
            mask = combine_masks(mask, cache_mask)

        if self.use_fused and (deterministic or self.dropout_rate == 0.0):
            out = fused_dot_product_attention(query, key, value, mask=mask, bias=bias)
        else:
            dropout_rng = None
            if not deterministic and self.dropout_rate > 0.0:
                dropout_rng = self.make_rng("dropout")
            out = scaled_dot_product_attention(
                query,
                key,
                value,
                mask=mask,
                bias=bias,
                dropout_rate=self.dropout_rate,
                dropout_rng=dropout_rng,
                deterministic=deterministic,
            )
        # Merge heads and project: [batch, q_len, heads, head_dim] -> [batch, q_len, out].
        return HeadProjection(
            self.out_features or width,
            merge_heads=True,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            name="out",
        )(out)

    def _append_to_cache(self, key: Array, value: Array) -> tuple[Array, Array, Array]:
        """Writes the new keys/values into the cache and returns (keys, values, mask) to attend.

        Args:
          key, value: [batch, n_new, heads, head_dim], for the positions cache_index ..
            cache_index + n_new - 1.

        Returns:
          The cached keys and values [batch, max_len, heads, head_dim] including the new ones, and
          the causal mask [1, 1, n_new, max_len] of the new queries over the cache.
        """
        cache_exists = self.has_variable("cache", "cached_key")
        if not cache_exists and not self.is_initializing():
            raise ValueError(
                "decode=True needs a cache: create it with init(..., decode=True) on a "
                "[batch, max_len, width] input and pass it to apply with mutable=['cache']"
            )
        # At init these create the cache with the shape of the (full-length) input.
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))

        batch, max_len, heads, head_dim = cached_key.value.shape
        num_new = key.shape[1]
        fits = (key.shape[0], key.shape[2], key.shape[3]) == (batch, heads, head_dim)
        if not fits or num_new > max_len:
            raise ValueError(
                f"new keys {key.shape} do not fit the cache {cached_key.value.shape}: expected "
                f"[{batch}, n_new <= {max_len}, {heads}, {head_dim}]"
            )

        # The new query i sits at absolute position cache_index + i and sees cache slots j <= it.
        index = cache_index.value
        query_positions = index + jnp.arange(num_new, dtype=index.dtype)
        mask = jnp.arange(max_len, dtype=index.dtype)[None, :] <= query_positions[:, None]

        if cache_exists:
            # Write at cache_index along the length axis; shapes stay static.
            zero = jnp.zeros((), index.dtype)
            start = (zero, index, zero, zero)
            cached_key.value = jax.lax.dynamic_update_slice(
                cached_key.value, key.astype(cached_key.value.dtype), start
            )
            cached_value.value = jax.lax.dynamic_update_slice(
                cached_value.value, value.astype(cached_value.value.dtype), start
            )
            cache_index.value = index + num_new
            key, value = cached_key.value, cached_value.value
        # else: initializing. The input spans the whole cache from index 0, so the mask above is
        # the plain causal mask and the empty cache is returned to the caller unchanged.
        return key, value, mask[None, None]
