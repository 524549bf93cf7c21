"""Transformer text tower (the CLIP text encoder, Radford et al., 2021).

    token_ids [batch, seq] (0 = padding, sequences end with an end-of-text token)
      -> TokenEmbed + learned position embedding     [batch, seq, width]
      -> Encoder with a causal mask (and a padding mask on the keys)
      -> pool at the end-of-text token (the last non-padding position)   [batch, width]

Where the pooled token is found differs between codebases, and imported weights need theirs:
  "eot"     the last non-padding position (mmjax's sentencepiece ids: 0 is padding, 2 ends the text);
  "argmax"  the position of the largest token id: OpenAI's CLIP, open_clip and Hugging Face configs
            with `eos_token_id == 2`, whose BPE vocabulary puts <|endoftext|> last (id 49407);
  "eos"     the first position holding `eos_id` (open_clip's pool_type "eos", newer Hugging Face
            configs), robust to padding with the end-of-text id itself.
OpenAI's tower has no padding mask at all (`mask_padding=False`): its id 0 is the real token "!",
and the causal mask alone keeps padding after the end-of-text token from reaching it.

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
POOLS = ("eot", "argmax", "eos", "first", "mean")


def last_token_index(token_ids: Array, pad_id: int = PAD_ID) -> Array:
    """Index [batch] of the last non-padding token (the end-of-text token) of each sequence."""
    length = jnp.sum(token_ids != pad_id, axis=-1)
    return jnp.maximum(length - 1, 0)


def pool_index(token_ids: Array, pool: str, pad_id: int = PAD_ID, eos_id: int | None = None) -> Array:
    """Index [batch] of the token a tower pools at: "eot", "argmax" or "eos" (see the module doc).

    Ties go to the first position, as in `torch.argmax`: with "argmax" and padding by the
    end-of-text id, the first end-of-text token is pooled.
    """
    if pool == "eot":
        return last_token_index(token_ids, pad_id)
    if pool == "argmax":
        return jnp.argmax(token_ids, axis=-1)
    if pool == "eos":
        return jnp.argmax(token_ids == eos_id, axis=-1)
    raise ValueError(f"pool_index: pool must be 'eot', 'argmax' or 'eos'; got {pool!r}")


class TextTransformer(nn.Module):
    """Text tower. `__call__(token_ids)` returns {"tokens": [batch, seq, width], "pooled": [batch, width]}.

    Attributes:
      vocab_size, max_len: token table and position table sizes.
      width, depth, num_heads, mlp_dim: transformer size.
      causal: causal self-attention (CLIP) or bidirectional (SigLIP, BERT).
      pool: "eot" (last non-padding token), "argmax" (position of the largest id), "eos" (first
        position of `eos_id`), "first", or "mean" (over non-padding tokens).
      pad_id: the padding id; `ids == pad_id` are padding for the mask, "eot" and "mean".
      eos_id: the end-of-text id that pool="eos" looks for.
      mask_padding: exclude padding keys from attention. Turned off for imported OpenAI / open_clip
        / Hugging Face towers, which mask nothing but the future.
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
    eos_id: int | None = None
    mask_padding: bool = True
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    scan: bool = True
    unroll: int | bool = 1  # see mmjax.nn.transformer.Encoder
    remat: bool | Callable = False  # see mmjax.nn.transformer.Encoder
    dtype: jnp.dtype = jnp.float32

    def __post_init__(self):
        if self.pool not in POOLS:
            raise ValueError(f"TextTransformer.pool must be one of {POOLS}; got {self.pool!r}")
        if self.pool == "eos" and self.eos_id is None:
            raise ValueError("TextTransformer.pool='eos' pools at the first `eos_id`: set eos_id")
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
            make_causal_mask(seq) if self.causal else None,
            valid[:, None, None, :] if self.mask_padding else None,
        )
        tokens = Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
            scan=self.scan,
            unroll=self.unroll,
            remat=self.remat,
            dtype=self.dtype,
            name="encoder",
        )(tokens, mask=mask, deterministic=deterministic)

        if self.pool in ("eot", "argmax", "eos"):
            index = pool_index(token_ids, self.pool, self.pad_id, self.eos_id)
            pooled = jnp.take_along_axis(tokens, index[:, None, None], axis=1)[:, 0]
        elif self.pool == "first":
            pooled = tokens[:, 0]
        else:
            weights = valid.astype(tokens.dtype)[..., None]
            pooled = jnp.sum(tokens * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        return {"tokens": tokens, "pooled": pooled, "mask": valid}
