"""The text-to-image prior (DALL-E's stage 2): a decoder-only transformer over [text; image codes].

DALL-E (Ramesh et al. 2021) models a caption and its picture as one sequence: the caption's T
tokens, then the N = h·w codes of the picture's VQ tokenizer in raster order,

    s = [t_1 … t_T, c_1 … c_N]        p(c | t) = Π_j p(c_j | t, c_<j)

and a causal transformer learns it by cross-entropy on the codes (the text is given, so it is not
scored here):

    L = −(1/N) Σ_j log softmax(W h_{T+j−1})[c_j]         h = Transformer_causal(embed(s))

Position T+j−1 (the last text token for j = 1) predicts code c_j: the input is [t; c_1 … c_{N−1}],
T + N − 1 tokens. Text and codes have their own embedding tables (a text id and a code id are
different words) and share one learned position table over the whole sequence; the output head
scores the K codes only. Captions are padded with 0 to T tokens; the pad tokens are part of the
sequence (always the same ones, so the model learns to read past them).

A text encoder (`text_depth` > 0 bidirectional blocks over the caption alone, before the causal
stack; a prefix language model, as in Parti's and Muse's encoder-decoder priors) lets every word
see the whole caption: in "a large white circle on the bottom middle", "circle" is read together
with where it is, instead of only the words left of it. The codes stay causal (they read the
encoded caption and the codes before them) and the cache holds the encoded caption. On `shapes`
it is what made the prior bind each object's words to its cell: configs/dalle_tiny.py with three
causal blocks and one text block draws 0.97 of the test captions exactly where four causal
blocks drew 0.41 over the same tokenizer, in less time (docs/text_to_image.md).

Classifier-free guidance (Ho & Salimans 2022; for autoregressive image models, Make-A-Scene and
Parti). Training replaces the caption by the null text (T pad tokens, which no real caption is)
with probability p, so one network is both p(c | t) and p(c). Sampling mixes the two each step,

    ℓ_guided = ℓ_uncond + s · (ℓ_cond − ℓ_uncond)         (s = 1: the conditional model)

in logit space, s > 1 pushing the picture towards what the caption says at a cost in variety.

Sampling (`sample`) runs the stack with a key/value cache (`mmjax.nn.Encoder(decode=True)`): the
caption is read in one call that fills positions 0..T−1 of the cache, then each code is drawn from
the last logits (divided by the temperature, restricted to the top k) and fed back at the next
position: N cached steps instead of N full passes. Guidance doubles the batch: rows [cond; uncond]
share every step.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn import linear
from mmjax.nn.attention import make_causal_mask
from mmjax.nn.transformer import Encoder, gelu

Array = jax.Array

NULL_TEXT_ID = 0  # the pad id: the null caption of classifier-free guidance is T of them


def token_embedding(num_ids: int, width: int, dtype: jnp.dtype, name: str) -> nn.Embed:
    """A table of `num_ids` learned [width] vectors (normal, σ = 0.02), looked up in `dtype`."""
    return nn.Embed(num_ids, width, dtype=dtype, embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("vocab", "embed")), name=name)


def code_head(num_codes: int, dtype: jnp.dtype) -> nn.Dense:
    """The output layer [..., width] -> [..., K]: one logit per code (products accumulated in
    float32 under a bfloat16 `dtype`, see `mmjax.nn.linear`)."""
    return nn.Dense(
        num_codes, dtype=dtype, dot_general=linear.dot_general,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "vocab")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
        name="head",
    )


class CodePrior(nn.Module):
    """What both priors over [text; codes] share: their fields and layers.

    Attributes:
      text_vocab_size: the caption tokenizer's size; text_len: T, the padded caption length.
      num_codes: K, the image tokenizer's codebook size; image_len: N = h·w codes per picture.
      width, depth, num_heads, mlp_dim, activation, dropout_rate: the transformer.
      unroll: blocks per iteration of the scanned stack (True: all; see `Encoder`).
      dtype: the compute dtype of the embeddings, the stack and the head (parameters stay
        float32; the logits are float32 whatever it is, so the loss and sampling are too).
      text_depth: bidirectional blocks that encode the caption alone before the stack reads it
        (0: none, the caption is read causally like the codes).

    Layers: `text_embed` and `code_embed` (K + `extra_code_ids` ids), one learned `pos_embed`
    over the T + N slots, the `text_encoder` (text_depth > 0), the `stack` of blocks and the
    `head` scoring the K codes.
    """

    text_vocab_size: int
    text_len: int
    num_codes: int
    image_len: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    unroll: int | bool = 1
    dtype: jnp.dtype = jnp.float32
    text_depth: int = 0
    # Code ids past the K codes that the input may hold (MaskGIT's [MASK] is one).
    extra_code_ids: ClassVar[int] = 0

    def setup(self):
        self.text_embed = token_embedding(self.text_vocab_size, self.width, self.dtype, "text_embed")
        self.code_embed = token_embedding(self.num_codes + self.extra_code_ids, self.width, self.dtype, "code_embed")
        # One position per slot of [text; codes]; the cache holds T + N (the last code is fed too,
        # so every sampling step has the same shape).
        self.pos_embed = self.param(
            "pos_embed", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("length", "embed")),
            (self.text_len + self.image_len, self.width),
        )
        self.stack = Encoder(depth=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                             activation=self.activation, dropout_rate=self.dropout_rate,
                             unroll=self.unroll, dtype=self.dtype, name="stack")
        self.head = code_head(self.num_codes, self.dtype)
        if self.text_depth:
            self.text_encoder = Encoder(depth=self.text_depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                                        activation=self.activation, dropout_rate=self.dropout_rate,
                                        unroll=True, dtype=self.dtype, name="text_encoder")

    def embed_text(self, text_ids: Array, deterministic: bool = True) -> Array:
        """text ids [b, T] -> [b, T, width]: embeddings and positions 0 .. T − 1, then (text_depth
        > 0) bidirectional blocks, so each word sees the whole caption before a code reads it."""
        # --8<-- [start:embed_text]
        x = self.text_embed(text_ids) + self.pos_embed[: text_ids.shape[1]].astype(self.dtype)
        return self.text_encoder(x, None, deterministic) if self.text_depth else x  # no mask: both ways
        # --8<-- [end:embed_text]

    def embed_sequence(self, text_ids: Array, codes: Array, deterministic: bool = True) -> Array:
        """[text ids; code ids] -> [b, T + n, width] with the positions 0 .. T + n − 1 added."""
        text = self.embed_text(text_ids, deterministic)
        positions = self.pos_embed[text.shape[1]: text.shape[1] + codes.shape[1]].astype(self.dtype)
        return jnp.concatenate([text, self.code_embed(codes) + positions], axis=1)

    def _check_text(self, text_ids: Array) -> None:
        if text_ids.ndim != 2 or text_ids.shape[1] != self.text_len:
            raise ValueError(f"text_ids must be [batch, text_len={self.text_len}]; got shape {text_ids.shape}")

    def _check_codes(self, codes: Array) -> None:
        if codes.ndim != 2 or codes.shape[1] != self.image_len:
            raise ValueError(f"codes must be [batch, image_len={self.image_len}]; got shape {codes.shape}")


class TextToImagePrior(CodePrior):
    """[text ids; codes] -> logits over the K codes, causally (see the module docstring; the
    fields are `CodePrior`'s).

    Methods:
      __call__: (text_ids [b, T], codes [b, N]) -> logits float32 [b, N, K]; logits[:, j]
        predict codes[:, j] from the text and codes[:, :j] (teacher forcing; one causal pass).
      prefill: text_ids [b, T] -> logits [b, K] of the first code, filling the cache (decode).
      decode_code: (codes [b, 1], position) -> logits [b, K] of the code after it (decode), the
        given code sitting at sequence position `position` (T + its index).
    """

    def __call__(self, text_ids: Array, codes: Array, deterministic: bool = True) -> Array:
        self._check_text(text_ids)
        self._check_codes(codes)
        x = self.embed_sequence(text_ids, codes[:, :-1], deterministic)  # T + N − 1 tokens
        h = self.stack(x, make_causal_mask(x.shape[1]), deterministic)
        return self.head(h[:, self.text_len - 1:]).astype(jnp.float32)  # [b, N, K]

    def prefill(self, text_ids: Array) -> Array:
        """Reads the caption into the cache; the logits of the first code [b, K]. At init (with
        a [b, T + N] input, `init_cache`) this creates the cache instead."""
        x = self.embed_text(text_ids)
        return self.head(self.stack(x, None, True, True)[:, -1]).astype(jnp.float32)

    def decode_code(self, codes: Array, position: Array) -> Array:
        """codes [b, 1] at sequence position `position` -> logits [b, K] of the next code."""
        position_vector = jax.lax.dynamic_slice_in_dim(self.pos_embed, position, 1, axis=0)
        x = self.code_embed(codes) + position_vector.astype(self.dtype)
        return self.head(self.stack(x, None, True, True)[:, -1]).astype(jnp.float32)


def init_cache(prior: TextToImagePrior, batch: int) -> Any:
    """An empty key/value cache (zeros) for `batch` sequences of T + N tokens; shapes only are
    traced (a decode-mode init on a full-length dummy input)."""
    length = prior.text_len + prior.image_len
    dummy = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    shapes = jax.eval_shape(lambda ids: prior.init(jax.random.key(0), ids, method=TextToImagePrior.prefill), dummy)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def guided_logits(conditional: Array, unconditional: Array, scale: float | Array) -> Array:
    """ℓ_u + s · (ℓ_c − ℓ_u): classifier-free guidance in logit space (s = 1 gives ℓ_c)."""
    return unconditional + scale * (conditional - unconditional)


def filter_top_k(logits: Array, k: int) -> Array:
    """logits [..., K] with all but the k largest of each row set to a large negative number
    (k <= 0 or k >= K: unchanged). Ties at the k-th value are all kept."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, jnp.finfo(logits.dtype).min, logits)


def draw(logits: Array, rng: Array, temperature: float, top_k: int) -> Array:
    """One code per row from logits [b, K]: argmax at temperature 0, else a sample of
    softmax(top_k(logits) / temperature). int32 [b]."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_top_k(logits, top_k) / temperature, axis=-1).astype(jnp.int32)


class Samples(NamedTuple):
    """What `sample` returns: codes int32 [b, N] and the (conditional) logits that each code was
    drawn from, float32 [b, N, K] (before guidance, temperature and top-k)."""

    codes: Array
    logits: Array


def sample(prior: TextToImagePrior, params: Any, text_ids: Array, rng: Array, *, temperature: float = 1.0,
           top_k: int = 0, guidance_scale: float | Array | None = None) -> Samples:
    """Codes for each caption of text_ids [b, T], drawn left to right with the cache.

    guidance_scale: None samples the conditional model alone; a number s runs each step on
    [captions; null captions] and draws from `guided_logits(ℓ_c, ℓ_u, s)`. The same rng gives
    the same codes (jit-compile this function; it is pure).
    """
    batch = text_ids.shape[0]
    guided = guidance_scale is not None
    if guided:
        text_ids = jnp.concatenate([text_ids, jnp.full_like(text_ids, NULL_TEXT_ID)], axis=0)
    rows = text_ids.shape[0]
    variables = {"params": params}
    logits, updated = prior.apply({**variables, "cache": init_cache(prior, rows)}, text_ids,
                                  method=TextToImagePrior.prefill, mutable=["cache"])

    # --8<-- [start:sample_step]
    def step(carry, inputs):
        logits, cache = carry
        index, key = inputs
        conditional = logits[:batch]
        mixed = guided_logits(conditional, logits[batch:], guidance_scale) if guided else conditional
        code = draw(mixed, key, temperature, top_k)
        fed = jnp.concatenate([code, code]) if guided else code
        logits, updated = prior.apply({**variables, "cache": cache}, fed[:, None], prior.text_len + index,
                                      method=TextToImagePrior.decode_code, mutable=["cache"])
        return (logits, updated["cache"]), (code, conditional)
    # --8<-- [end:sample_step]

    keys = jax.random.split(rng, prior.image_len)
    _, (codes, seen) = jax.lax.scan(step, (logits, updated["cache"]), (jnp.arange(prior.image_len), keys))
    return Samples(codes.T, jnp.swapaxes(seen, 0, 1))


def build_prior(config: Any, text_len: int, num_codes: int, image_len: int,
                module: Callable[..., nn.Module] | None = None) -> nn.Module:
    """The prior of config.model.prior (vocab_size, width, depth, num_heads, mlp_dim, ...):
    a `TextToImagePrior`, or the class `module` given (MaskGIT's takes the same fields)."""
    text_depth = config.get("text_depth", 0)
    if not isinstance(text_depth, int) or text_depth < 0:
        raise ValueError(f"config.model.prior.text_depth must be an integer >= 0 (0: no text encoder); got {text_depth!r}")
    return (module or TextToImagePrior)(
        text_vocab_size=config.vocab_size, text_len=text_len, num_codes=num_codes, image_len=image_len,
        width=config.width, depth=config.depth, num_heads=config.num_heads, mlp_dim=config.mlp_dim,
        activation=config.get("activation", gelu), dropout_rate=config.get("dropout_rate", 0.0),
        unroll=config.get("unroll", 1), dtype=config.get("dtype", jnp.float32),
        text_depth=text_depth,
    )
