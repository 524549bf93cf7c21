"""Transformer text tower (the CLIP text encoder, Radford et al., 2021).

    token_ids [batch, seq] (0 = padding, sequences end with an end-of-text token)
      -> TokenEmbed + learned position embedding     [batch, seq, width]
      -> Encoder with a causal mask (and a padding mask on the keys)
      -> pool at the end-of-text token (the last non-padding position)   [batch, width]

Why a causal mask in an encoder: CLIP's text tower is a GPT-style decoder stack, so the pooled
end-of-text token has read the whole caption while every earlier position has read only its prefix;
the same weights can initialise a captioning decoder. With a causal mask, padding placed after the
caption cannot influence the end-of-text token at all, so the pooled embedding is exactly invariant
to how much padding a batch carries (a property the tests check).
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.attention import combine_masks, make_causal_mask
from mmjax.nn.embed import LearnedPositionEmbedding, TokenEmbed
from mmjax.nn.transformer import Encoder, gelu

Array = jax.Array

PAD_ID = 0


def last_token_index(token_ids: Array, pad_id: int = PAD_ID) -> Array:
    """Index [batch] of the last non-padding token (the end-of-text token) of each sequence."""
    length = jnp.sum(token_ids != pad_id, axis=-1)
    return jnp.maximum(length - 1, 0)


class TextTransformer(nn.Module):
    """Text tower. `__call__(token_ids)` returns {"tokens": [batch, seq, width], "pooled": [batch, width]}.

    Attributes:
      vocab_size, max_len: token table and position table sizes.
      width, depth, num_heads, mlp_dim: transformer size.
      causal: causal self-attention (CLIP) or bidirectional (SigLIP, BERT).
      pool: "eot" (last non-padding token), "first", or "mean" (over non-padding tokens).
    """

    vocab_size: int
    max_len: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    causal: bool = True
    pool: str = "eot"
    pad_id: int = PAD_ID
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    scan: bool = True
    remat: bool | Callable = False  # see mmjax.nn.transformer.Encoder
    dtype: jnp.dtype = jnp.float32

    def __post_init__(self):
        if self.pool not in ("eot", "first", "mean"):
            raise ValueError(f"TextTransformer.pool must be 'eot', 'first' or 'mean'; got {self.pool!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, token_ids: Array, deterministic: bool = True) -> dict[str, Array]:
        if token_ids.ndim != 2:
            raise ValueError(f"token_ids must be [batch, seq]; got shape {token_ids.shape}")
        seq = token_ids.shape[1]
        if seq > self.max_len:
            raise ValueError(f"text length {seq} exceeds the text tower's max_len {self.max_len}")
        valid = token_ids != self.pad_id  # [batch, seq]

        tokens = TokenEmbed(self.vocab_size, self.width, dtype=self.dtype, name="token_embed")(token_ids)
        tokens = LearnedPositionEmbedding(self.max_len, init_std=0.01, name="pos_embed")(tokens)

        # Keys that are padding are never attended to; with a causal mask they could not be anyway
        # for real queries, but a bidirectional tower needs it.
        mask = combine_masks(
            make_causal_mask(seq) if self.causal else None, valid[:, None, None, :]
        )
        tokens = Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
            scan=self.scan,
            remat=self.remat,
            dtype=self.dtype,
            name="encoder",
        )(tokens, mask=mask, deterministic=deterministic)

        if self.pool == "eot":
            index = last_token_index(token_ids, self.pad_id)
            pooled = jnp.take_along_axis(tokens, index[:, None, None], axis=1)[:, 0]
        elif self.pool == "first":
            pooled = tokens[:, 0]
        else:
            weights = valid.astype(tokens.dtype)[..., None]
            pooled = jnp.sum(tokens * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        return {"tokens": tokens, "pooled": pooled, "mask": valid}
