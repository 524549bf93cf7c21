"""CoCa, a contrastive captioner (Yu et al., 2022), and how to generate captions with it.

CoCa trains one image tower with two objectives at once: CLIP's contrastive loss, which needs a
single embedding per image and per caption, and a captioning loss, for which a text decoder reads
every image token through cross-attention and predicts the caption one token at a time.

    images [B, H, W, 3] ─► ViT ─┬─► image_tokens [B, N, W_img] ──────────────────────┐
                                └─► pooled [B, W_img] ─► W_img ─► normalize ─► image_embeddings [B, D]
    token_ids [B, L] ─► TextTransformer (causal, pooled at EOS) ─► W_txt ─► normalize ─► text_embeddings
    shift_right(token_ids) ─► CaptionDecoder(·, image_tokens) ─► logits [B, L, V]       (cross-attn) ┘

    p(t_i | t_<i, image) = softmax(logits[:, i])[t_i]
    loss = λ_con · clip_loss(image_embeddings, text_embeddings, logit_scale)
         + λ_cap · caption_loss(logits, token_ids)              (the paper: λ_con = 1, λ_cap = 2)

Teacher forcing and the start token. The decoder reads the caption shifted right by one position
behind a start token and predicts it unshifted, so logits[:, i] has seen the tokens before t_i only:

    decoder_input_ids  [START  a    red  circle  EOS   PAD]     = shift_right(token_ids, START_ID)
    token_ids          [a      red  circle EOS   PAD   PAD]     (the targets; PAD carries no loss)

The tokenizer has pad = 0, unk = 1, eos = 2 and no begin-of-sequence piece, so the start token is
the EOS id (START_ID = EOS_ID = 2), as in fairseq: no vocabulary entry has to be reserved and the
tokenizer stays as it is. The two roles cannot be confused: the start token is only ever at
position 0, where the decoder's position embedding tells it apart, and generation stops at an EOS
it *produces*, never at the one it is fed.

Where this differs from the paper, and why:

- Two text stacks instead of one split decoder. CoCa's decoder is one stack whose bottom half has
  no cross-attention (the unimodal text encoder, giving the contrastive text embedding) and whose
  top half reads the image (the multimodal decoder). Here the contrastive tower is a plain
  `TextTransformer` (as in CLIP) and `CaptionDecoder` has its own token embedding and
  `CrossAttentionStack`. `TextTransformer`'s blocks have no key/value cache, so with a shared
  bottom half every decoding step would re-run it over the whole prefix; with separate stacks
  every layer the decoder runs is cached. The price: a second embedding table and no captioning
  gradient into the text tower (the image tower gets both losses, as in CoCa).
- The contrastive text embedding is the text tower's output at the EOS token (CLIP), not at an
  extra learned [CLS] token appended to the caption (CoCa). Under the causal mask the EOS token
  has read the whole caption, so it plays the same role.
- No attentional poolers. CoCa pools the image tokens with a learned single-query attention for
  the contrastive embedding and a 256-query one for the decoder's context. Here the contrastive
  embedding is the ViT's own pooled output (class token or mean, as in CLIP) through a linear
  projection, and the decoder reads every ViT token (already layer-normalised by the ViT's final
  LayerNorm, as `CrossAttentionBlock` expects). Fewer parts, and a CoCa built on a ViT holds a
  CLIP's image tower unchanged.
- The vocabulary projection is a Dense layer of its own, with a bias, not tied to the token
  embedding: the bias learns the unigram frequencies (EOS's among them) directly, and at caption
  vocabulary sizes (thousands of pieces) the untied table costs little.

Generation. `generate` is greedy for beam_size = 1 (`greedy_search`) and beam search otherwise
(`beam_search`); both feed one token per step through `CoCa.decode_step`, which uses the decoder's
key/value cache (see `mmjax.nn.attention`: step t costs O(t) attention instead of re-running the
decoder over the prefix, O(t²)), run in one `jax.lax.while_loop` with static shapes, and are
jit-compiled once for a given batch size, `max_len` and `beam_size`. Generated tokens come back
padded with 0 after the first EOS.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.clip import PROJECTION_INIT, l2_normalize
from mmjax.models.fusion import attribute_names, check_fields
from mmjax.models.text import PAD_ID, TextTransformer
from mmjax.models.vit import ViT
from mmjax.nn.embed import TokenEmbed
from mmjax.nn.transformer import CrossAttentionStack, gelu

Array = jax.Array

# The tokenizer's end-of-text id; also the decoder's start token (see the module docstring).
EOS_ID = 2
START_ID = EOS_ID

# A finite "minus infinity" for impossible beam candidates: sums and divisions of it stay finite.
NEG_INF = -1.0e7


def shift_right(token_ids: Array, start_id: int) -> Array:
    """Decoder inputs for teacher forcing: [t_0, ..., t_{L-1}] -> [start, t_0, ..., t_{L-2}].

    Args:
      token_ids: int [batch, L], the targets (a caption ending in EOS, padded with 0).
      start_id: the token fed at position 0.

    Returns:
      int [batch, L], same dtype. Example: shift_right([[5, 6, 2, 0]], 2) = [[2, 5, 6, 2]].
    """
    start = jnp.full_like(token_ids[:, :1], start_id)
    return jnp.concatenate([start, token_ids[:, :-1]], axis=1)


class CaptionDecoder(nn.Module):
    """Causal text decoder that reads image tokens: token ids -> next-token logits.

        x      = TokenEmbed(ids) + P[positions]                  [batch, seq, width]
        x      = CrossAttentionStack(causal)(x, image_tokens)    (self ∧ causal, cross, MLP; final LN)
        logits = x W_out + b_out                                 [batch, seq, vocab], float32

    Teacher forcing (`decode=False`): `decoder_input_ids` [batch, seq] is the whole shifted
    caption, positions 0..seq-1, and logits[:, i] depends on ids[:, :i+1] only. No padding mask
    is needed: with the causal mask a real token never sees the padding after it, and the outputs
    at padding positions are not targets.

    Decoding (`decode=True`): `decoder_input_ids` holds the next token(s) [batch, n_new]. The cache
    (collection 'cache') holds each layer's keys/values and `position`, the number of tokens
    decoded so far; the new tokens get position embeddings position .. position + n_new - 1 and
    `position` advances. Create the cache with `init(..., decode=True)` on a [batch, max_len]
    input (see `init_decode_cache`). Writing past the cache's length is not checked under jit.

    Attributes:
      vocab_size, max_len: token table and position table sizes.
      width, depth, num_heads, mlp_dim: transformer size (width of the text stream).
      scan: stack the blocks with `nn.scan` (parameters and cache get a leading [depth] axis).
      unroll: with `scan`, blocks per iteration of the compiled loop; True: all (see Encoder).
      context_position_embedding: add a learned vector per image token to the context the
        cross-attention reads, `image_tokens + E_ctx` (E_ctx [N, w_img], initialised N(0, 0.02²)),
        as DETR adds positions to its decoder's keys. Cross-attention by itself reads the image
        tokens as a set; the ViT's positions are added at its input and come out mixed, so
        questions that name a place ("is there an object at the top left?") are answered better
        when the keys say plainly where each token is.
    """

    vocab_size: int
    max_len: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    scan: bool = True
    unroll: int | bool = 1
    remat: bool | Callable = False  # see mmjax.nn.transformer.Encoder
    context_position_embedding: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        decoder_input_ids: Array,
        image_tokens: Array,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        if decoder_input_ids.ndim != 2:
            raise ValueError(f"decoder_input_ids must be [batch, seq]; got shape {decoder_input_ids.shape}")
        seq = decoder_input_ids.shape[1]
        if seq > self.max_len:
            raise ValueError(f"decoder input length {seq} exceeds the decoder's max_len {self.max_len}")

        # Token and position embeddings; when decoding, the positions continue where the cache is.
        x = TokenEmbed(self.vocab_size, self.width, dtype=self.dtype, name="token_embed")(decoder_input_ids)
        position_table = self.param(
            "pos_embed",
            nn.with_logical_partitioning(nn.initializers.normal(0.01), ("length", "embed")),
            (self.max_len, self.width),
        )
        first_position = self._advance_position(seq) if decode else 0
        positions = jax.lax.dynamic_slice_in_dim(position_table, first_position, seq, axis=0)
        x = x + positions.astype(x.dtype)

        # The context the cross-attention reads: image tokens [batch, N, w_img], each with its place
        # if configured. Decoding adds the same at every step (the context is not cached).
        if self.context_position_embedding:
            context_table = self.param(
                "context_pos_embed",
                nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
                image_tokens.shape[1:],
            )
            image_tokens = image_tokens + context_table.astype(image_tokens.dtype)

        # Causal self-attention, cross-attention to the image tokens, MLP; ends with a LayerNorm.
        x = CrossAttentionStack(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            causal=True,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
            scan=self.scan,
            unroll=self.unroll,
            remat=self.remat,
            dtype=self.dtype,
            name="stack",
        )(x, image_tokens, None, None, deterministic, decode)

        # Vocabulary projection (untied, with a bias); logits in float32 for the softmax.
        logits = nn.Dense(
            self.vocab_size,
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "vocab")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
            name="output_projection",
        )(x)
        return logits.astype(jnp.float32)

    def _advance_position(self, num_new: int) -> Array:
        """Position of the first new token (the cache's `position`), advanced by num_new."""
        cache_exists = self.has_variable("cache", "position")
        if not cache_exists and not self.is_initializing():
            raise ValueError(
                "decode=True needs a cache: create it with init(..., decode=True) on a "
                "[batch, max_len] input (see init_decode_cache) and apply with mutable=['cache']"
            )
        position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
        first = position.value
        if cache_exists:
            # At init the input spans the whole (empty) cache from 0 and the cache stays empty,
            # as MultiHeadAttention's does.
            position.value = first + num_new
        return first


class CoCa(nn.Module):
    """Contrastive captioner. `__call__(images, token_ids, decoder_input_ids)` returns a dict:

      image_embeddings: [batch, embed_dim], unit norm, float32 (contrastive)
      text_embeddings:  [batch, embed_dim], unit norm, float32 (contrastive)
      logit_scale:      [] exp(t), t initialised to log(1/0.07), clamped at `max_logit_scale`
      logits:           [batch, L, vocab] float32, next-token logits for teacher forcing

    Args (of `__call__`):
      images: [batch, H, W, 3] float.
      token_ids: int [batch, L_text], captions ending in EOS, padded with 0 (the text tower's input
        and, for the caption loss, the targets).
      decoder_input_ids: int [batch, L], `shift_right(token_ids, START_ID)` in training.
      deterministic: disables dropout.

    Attributes:
      image_encoder: a ViT (any module returning {"tokens": [batch, N, w], "pooled": [batch, w]}).
      text_encoder: a causal TextTransformer pooled at EOS (returns {"pooled": [batch, w]}).
      decoder: a CaptionDecoder (its vocabulary must be the tokenizer's, like the text tower's).
      embed_dim: width D of the shared contrastive space.
    """

    image_encoder: nn.Module
    text_encoder: nn.Module
    decoder: nn.Module
    embed_dim: int
    logit_scale_init: float = float(np.log(1 / 0.07))
    max_logit_scale: float = 100.0

    def setup(self):
        self.image_projection = nn.Dense(
            self.embed_dim, use_bias=False, kernel_init=PROJECTION_INIT, name="image_projection"
        )
        self.text_projection = nn.Dense(
            self.embed_dim, use_bias=False, kernel_init=PROJECTION_INIT, name="text_projection"
        )
        self.log_logit_scale = self.param(
            "logit_scale", nn.initializers.constant(self.logit_scale_init), ()
        )

    def encode_image(self, images: Array, deterministic: bool = True) -> Array:
        """[batch, H, W, 3] images -> [batch, embed_dim] unit-norm contrastive embeddings."""
        pooled = self.image_encoder(images, deterministic=deterministic)["pooled"]
        return l2_normalize(self.image_projection(pooled))

    def encode_text(self, token_ids: Array, deterministic: bool = True) -> Array:
        """[batch, L] token ids -> [batch, embed_dim] unit-norm contrastive embeddings."""
        pooled = self.text_encoder(token_ids, deterministic=deterministic)["pooled"]
        return l2_normalize(self.text_projection(pooled))

    def encode_image_tokens(self, images: Array, deterministic: bool = True) -> Array:
        """[batch, H, W, 3] images -> [batch, N, w] image tokens, the decoder's context.

        Computed once per image before decoding; every step then reads the same tokens.
        """
        return self.image_encoder(images, deterministic=deterministic)["tokens"]

    def decode_step(self, token_ids: Array, image_tokens: Array, decode: bool = True) -> Array:
        """Next-token logits [batch, n, vocab] (float32) for token_ids [batch, n].

        With `decode=True` (apply with the cache and mutable=['cache']) the tokens continue the
        sequence held in the cache: one token per generation step, n = 1. With `decode=False` it
        is the teacher-forced pass over the tokens from position 0, no cache.
        """
        return self.decoder(token_ids, image_tokens, decode=decode)

    def __call__(
        self, images: Array, token_ids: Array, decoder_input_ids: Array, deterministic: bool = True
    ) -> dict[str, Array]:
        # The image tower runs once: its pooled output is contrasted, its tokens are read.
        image_out = self.image_encoder(images, deterministic=deterministic)
        return {
            "image_embeddings": l2_normalize(self.image_projection(image_out["pooled"])),
            "text_embeddings": self.encode_text(token_ids, deterministic),
            "logit_scale": jnp.minimum(jnp.exp(self.log_logit_scale), self.max_logit_scale),
            "logits": self.decoder(decoder_input_ids, image_out["tokens"], deterministic=deterministic),
        }


# ------------------------------------------------------------------------------------------------
# Generation.
# ------------------------------------------------------------------------------------------------


def init_decode_cache(model: CoCa, image_tokens: Array, max_len: int) -> Any:
    """An empty decoding cache for image_tokens.shape[0] sequences of up to `max_len` tokens.

    Every entry of an empty cache is zero (keys, values, the layers' cache_index and the
    decoder's position), so only the shapes are traced (`jax.eval_shape`), nothing is computed.
    The cache shapes come from a decode-mode init on a [batch, max_len] dummy input; that init
    fails with the decoder's message if max_len exceeds the decoder's position table.

    Args:
      model: the CoCa.
      image_tokens: [batch, N, w], the context every sequence will read (only its shape is used).
      max_len: the number of tokens the cache can hold.
    """
    dummy_ids = jax.ShapeDtypeStruct((image_tokens.shape[0], max_len), jnp.int32)
    context = jax.ShapeDtypeStruct(image_tokens.shape, image_tokens.dtype)
    shapes = jax.eval_shape(
        lambda ids, ctx: model.init(jax.random.key(0), ids, ctx, method=CoCa.decode_step), dummy_ids, context
    )
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def _step_function(model: CoCa, params: Any, image_tokens: Array) -> Callable[[Any, Array], tuple[Array, Any]]:
    """(cache, token_ids [batch, 1]) -> (logits [batch, vocab], updated cache): one decode step."""

    def step(cache: Any, token_ids: Array) -> tuple[Array, Any]:
        logits, variables = model.apply(
            {"params": params, "cache": cache},
            token_ids,
            image_tokens,
            method=CoCa.decode_step,
            mutable=["cache"],
        )
        return logits[:, 0], variables["cache"]

    return step


def _previous_token(tokens: Array, step: Array, start_id: int) -> Array:
    """The token fed at `step`: start_id at step 0, else tokens[..., step - 1]. tokens: [..., T]."""
    previous = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(step - 1, 0), axis=-1, keepdims=False)
    return jnp.where(step == 0, jnp.asarray(start_id, tokens.dtype), previous)


def greedy_search(
    model: CoCa,
    params: Any,
    images: Array,
    *,
    max_len: int,
    start_id: int,
    eos_id: int,
    stop_early: bool | Array = True,
    prompt_ids: Array | None = None,
    prompt_lengths: Array | None = None,
) -> Array:
    """Greedy decoding: t_i = argmax_v p(v | t_<i, image), one cached decode step per token.

    With a prompt, the first prompt_lengths[b] tokens of sequence b are forced to
    prompt_ids[b, :prompt_lengths[b]] (fed through the same cached steps, so the prompt is read
    once) and decoding continues from there: generative VQA feeds the question and reads the
    answer that follows it. Prompt lengths may differ across the batch.

    A sequence that has produced EOS is finished: its later tokens are 0 (padding), although the
    batch keeps stepping (static shapes) until every sequence is finished or max_len tokens are
    out. `stop_early=False` always runs max_len steps (to time a fixed amount of work, say); the
    output is the same.

    Args:
      model: the CoCa.
      params: its parameters.
      images: [batch, H, W, 3].
      max_len: T, the number of tokens generated (static; at most the decoder's max_len).
      start_id: the token fed at step 0 (START_ID).
      eos_id: the end-of-sequence id.
      stop_early: stop once every sequence is finished (may be traced).
      prompt_ids: optional int [batch, P], P <= T, the forced first tokens (no EOS among them).
      prompt_lengths: int [batch], how many of prompt_ids to force per sequence (<= P).

    Returns:
      int32 [batch, T]: t_0 .. t_{T-1}, the start token not included (the prompt is), 0 after
      the first generated EOS.
    """
    if (prompt_ids is None) != (prompt_lengths is None):
        raise ValueError("prompt_ids and prompt_lengths go together")
    if prompt_ids is not None and prompt_ids.shape[1] > max_len:
        raise ValueError(f"the prompt ({prompt_ids.shape[1]} tokens) is longer than max_len {max_len}")
    image_tokens = model.apply({"params": params}, images, method=CoCa.encode_image_tokens)
    batch = image_tokens.shape[0]
    step_logits = _step_function(model, params, image_tokens)

    def not_done(state):
        step, _, finished, _ = state
        return (step < max_len) & ~(stop_early & jnp.all(finished))

    def body(state):
        step, tokens, finished, cache = state
        # one token per sequence through the cached decoder
        logits, cache = step_logits(cache, _previous_token(tokens, step, start_id)[:, None])
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if prompt_ids is not None:
            # inside its prompt a sequence takes the prompt's token, whatever the model prefers
            forced = step < prompt_lengths
            prompt_token = jax.lax.dynamic_index_in_dim(
                prompt_ids, jnp.minimum(step, prompt_ids.shape[1] - 1), axis=1, keepdims=False
            )
            token = jnp.where(forced, prompt_token.astype(jnp.int32), token)
        # finished sequences only grow padding
        token = jnp.where(finished, PAD_ID, token)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, step, axis=1)
        return step + 1, tokens, finished | (token == eos_id), cache

    state = (
        jnp.zeros((), jnp.int32),
        jnp.full((batch, max_len), PAD_ID, jnp.int32),
        jnp.zeros((batch,), bool),
        init_decode_cache(model, image_tokens, max_len),
    )
    _, tokens, _, _ = jax.lax.while_loop(not_done, body, state)
    return tokens


class Beams(NamedTuple):
    """The output of `beam_search`, best first along the beam axis.

    Attributes:
      tokens: int32 [batch, beam_size, T], 0 after each beam's first EOS.
      log_probs: float32 [batch, beam_size], log p(y | image) summed up to and including EOS.
      scores: float32 [batch, beam_size], log_probs / length_penalty(|y|), what the beams are
        ranked by.
    """

    tokens: Array
    log_probs: Array
    scores: Array


def brevity_penalty(length: Array, alpha: float | Array) -> Array:
    """lp(|y|) = ((5 + |y|) / 6)^α (Wu et al., 2016; the Flax wmt example). α = 0 gives 1."""
    return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def gather_beams_in_cache(cache: Any, index: Array) -> Any:
    """Reorders the sequences of a decoding cache: row r of the result is row index[r] of `cache`.

    The cache's sequences are the flattened [batch · beam] rows. Only the keys and values have a
    row axis: it is axis -4 of [(depth,) rows, max_len, heads, head_dim] (the scanned cache has
    the layers in front). The step counters (each layer's cache_index, the decoder's position)
    are shared by all rows, since every row has decoded the same number of tokens, and are kept.
    """

    def gather(path, x):
        if path[-1].key in ("cached_key", "cached_value"):
            return jnp.take(x, index, axis=x.ndim - 4)
        return x

    return jax.tree_util.tree_map_with_path(gather, cache)


def beam_search(
    model: CoCa,
    params: Any,
    images: Array,
    *,
    max_len: int,
    start_id: int,
    eos_id: int,
    beam_size: int,
    length_penalty: float | Array = 0.0,
    stop_early: bool | Array = True,
) -> Beams:
    """Beam search for the most probable caption, argmax_y log p(y | image) / lp(|y|).

    Why: greedy decoding commits to the locally best token, but the most probable caption may
    start with a less probable one ("a" vs "two" before "red circles"). Beam search keeps the K
    best prefixes at every step instead of one, at K times greedy's cost. It is still an
    approximation: a prefix that falls out of the top K is gone for good.

    Each step, with K beams y_k of log-probability s_k and lengths n_k:

        candidates  (k, v):  s_k + log p(v | y_k, image)  for an unfinished beam, any token v
                             s_k  with v = PAD            for a finished beam (it stops growing)
        score(k, v) = log-prob / lp(length),   lp(n) = ((5 + n) / 6)^α   (`brevity_penalty`)
        keep the K best of the K·V candidates; a beam that took EOS is finished.

    Without the length penalty (α = 0) longer captions lose: every token multiplies p by < 1.
    Finished and unfinished beams compete for the same K slots, so with beam_size = 1 this is
    exactly greedy decoding. The kept beams come from different parents, so each step the cache's
    rows are gathered by the parent beam (`gather_beams_in_cache`) on the flattened
    [batch · beam] axis. At step 0 all K beams would be copies; only beam 0 is live (the others
    start at NEG_INF), so the first step picks K distinct tokens.

    Stops when every beam is finished (`stop_early`; the scores cannot change after that) or
    after max_len steps; the output is the same either way.

    Args:
      model: the CoCa.
      params: its parameters.
      images: [batch, H, W, 3].
      max_len: T, the number of tokens generated (static).
      start_id: the token fed at step 0.
      eos_id: the end-of-sequence id.
      stop_early: stop once every beam is finished (the output is the same).
      beam_size: K (static).
      length_penalty: α >= 0.

    Returns:
      Beams(tokens [batch, K, T], log_probs [batch, K], scores [batch, K]), best first.
    """
    image_tokens = model.apply({"params": params}, images, method=CoCa.encode_image_tokens)
    batch, num_beams = image_tokens.shape[0], beam_size
    # Every beam of example b reads b's image tokens: flattened row b·K + k.
    image_tokens = jnp.repeat(image_tokens, num_beams, axis=0)
    step_logits = _step_function(model, params, image_tokens)

    def not_done(state):
        step, _, _, _, finished, _ = state
        return (step < max_len) & ~(stop_early & jnp.all(finished))

    def body(state):
        step, tokens, log_probs, lengths, finished, cache = state

        # log p(v | y_k, image) for every beam: [batch, K, V]
        previous = _previous_token(tokens, step, start_id).reshape(batch * num_beams, 1)
        logits, cache = step_logits(cache, previous)
        token_log_probs = jax.nn.log_softmax(logits).reshape(batch, num_beams, -1)
        vocab = token_log_probs.shape[-1]

        # a finished beam has one continuation, padding, which costs nothing
        only_padding = jnp.full((vocab,), NEG_INF).at[PAD_ID].set(0.0)
        token_log_probs = jnp.where(finished[..., None], only_padding, token_log_probs)

        # --8<-- [start:beam_step]
        # score every candidate (beam k, token v) and keep the K best
        candidate_log_probs = (log_probs[..., None] + token_log_probs).reshape(batch, num_beams * vocab)
        candidate_lengths = jnp.repeat(jnp.where(finished, lengths, step + 1), vocab, axis=1)
        candidate_scores = candidate_log_probs / brevity_penalty(candidate_lengths, length_penalty)
        _, best = jax.lax.top_k(candidate_scores, num_beams)  # [batch, K], best first
        parent, token = best // vocab, (best % vocab).astype(jnp.int32)

        # the kept beams: their parent's tokens and state, plus the new token
        tokens = jnp.take_along_axis(tokens, parent[..., None], axis=1)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, step, axis=2)
        log_probs = jnp.take_along_axis(candidate_log_probs, best, axis=1)
        lengths = jnp.take_along_axis(candidate_lengths, best, axis=1)
        finished = jnp.take_along_axis(finished, parent, axis=1) | (token == eos_id)
        # --8<-- [end:beam_step]

        # the cache follows the parents
        rows = (jnp.arange(batch)[:, None] * num_beams + parent).reshape(-1)
        return step + 1, tokens, log_probs, lengths, finished, gather_beams_in_cache(cache, rows)

    state = (
        jnp.zeros((), jnp.int32),
        jnp.full((batch, num_beams, max_len), PAD_ID, jnp.int32),
        jnp.tile(jnp.array([0.0] + [NEG_INF] * (num_beams - 1), jnp.float32), (batch, 1)),
        jnp.zeros((batch, num_beams), jnp.int32),
        jnp.zeros((batch, num_beams), bool),
        init_decode_cache(model, image_tokens, max_len),
    )
    _, tokens, log_probs, lengths, _, _ = jax.lax.while_loop(not_done, body, state)
    scores = log_probs / brevity_penalty(lengths, length_penalty)
    return Beams(tokens=tokens, log_probs=log_probs, scores=scores)


def generate(
    model: CoCa,
    params: Any,
    images: Array,
    *,
    max_len: int,
    start_id: int,
    eos_id: int,
    beam_size: int = 1,
    length_penalty: float | Array = 0.0,
    stop_early: bool | Array = True,
) -> Array:
    """Captions for `images`: int32 [batch, max_len], 0 after the first EOS.

    Greedy (`greedy_search`) when beam_size == 1, else the best beam of `beam_search`. Compile it
    once per batch size, max_len and beam_size:

        caption = jax.jit(generate, static_argnames=("model", "max_len", "beam_size"))
        tokens = caption(model, params, images, max_len=16, start_id=START_ID, eos_id=EOS_ID)

    (start_id, eos_id, length_penalty and stop_early may be traced values.)
    """
    if beam_size < 1 or max_len < 1:
        raise ValueError(f"beam_size and max_len must be >= 1; got {beam_size} and {max_len}")
    if beam_size == 1:
        return greedy_search(
            model, params, images, max_len=max_len, start_id=start_id, eos_id=eos_id, stop_early=stop_early
        )
    beams = beam_search(
        model,
        params,
        images,
        max_len=max_len,
        start_id=start_id,
        eos_id=eos_id,
        beam_size=beam_size,
        length_penalty=length_penalty,
        stop_early=stop_early,
    )
    return beams.tokens[:, 0]


# ------------------------------------------------------------------------------------------------
# Builder from a config section.
# ------------------------------------------------------------------------------------------------


def build_coca(config: Any) -> CoCa:
    """Builds a CoCa from a config section (a ConfigDict or dict) with fields:

      embed_dim
      image:   ViT attributes, by name
      text:    TextTransformer attributes (the contrastive text tower); `causal` defaults to True
      decoder: CaptionDecoder attributes; `vocab_size` defaults to the text tower's
      logit_scale_init, max_logit_scale: optional

    Unknown fields raise a ValueError that names them.
    """
    optional = ("logit_scale_init", "max_logit_scale")
    check_fields("model", config.keys(), ("embed_dim", "image", "text", "decoder", *optional))
    image_kwargs, text_kwargs = dict(config["image"]), dict(config["text"])
    decoder_kwargs = dict(config["decoder"])
    check_fields("model.image", image_kwargs, attribute_names(ViT))
    check_fields("model.text", text_kwargs, attribute_names(TextTransformer))
    check_fields("model.decoder", decoder_kwargs, attribute_names(CaptionDecoder))
    text_kwargs = {"causal": True, **text_kwargs}
    decoder_kwargs = {"vocab_size": text_kwargs["vocab_size"], **decoder_kwargs}
    return CoCa(
        image_encoder=ViT(**image_kwargs),
        text_encoder=TextTransformer(**text_kwargs),
        decoder=CaptionDecoder(**decoder_kwargs),
        embed_dim=config["embed_dim"],
        **{k: config[k] for k in optional if k in config},
    )
