"""Multimodal fusion: where, inside the network, an image and a text meet.

Three families, from the latest meeting point to the earliest. Shapes: B examples, N image
tokens, L text tokens (padded; 0 = padding), W widths, D the contrastive embedding width, V the
text vocabulary, A the number of VQA answers.

Late fusion (`LateFusionClassifier`; CLIP in clip.py is the same idea for retrieval):

    image_feature = ViT(image).pooled                                   [B, W_img]
    text_feature  = Text(token_ids).pooled                              [B, W_txt]
    vqa_logits    = MLP([image_feature; text_feature])                  [B, A]

  The modalities meet once, after each has been squeezed into a single vector. Both features can
  be computed, and cached, independently; but the question cannot steer what is read from the
  image: for "what is left of the blue circle?" the pooled image vector must already hold every
  relation any question could ask about.

Mid fusion (`MidFusion`; ALBEF, Li et al. 2021; BLIP, Li et al. 2022):

    image_tokens, image_pooled = ViT(image)                             [B, N, W_img], [B, W_img]
    text_tokens,  text_pooled  = Text(token_ids)  (bidirectional)       [B, L, W_txt], [B, W_txt]
    image_embedding = normalize(W_i · image_pooled)                     [B, D]  (as CLIP)
    text_embedding  = normalize(W_t · text_pooled)                      [B, D]
    fused = CrossAttentionStack(text_tokens, context=image_tokens)      [B, L, W_txt]
      every block:  x += SelfAttn(LN x)  (padding keys masked)
                    x += CrossAttn(LN x, image_tokens)  (text queries, image keys/values)
                    x += MLP(LN x)
    itm_logits = W_itm · fused[:, 0] + b                                [B, 2]
    mlm_logits = W_dec · LN(gelu(W_h · fused + b_h)) + b_dec             [B, L, V]
    vqa_logits = AnswerHead(fused[:, 0])                                [B, A]

  Each tower runs once per image and once per text; they meet in the fusion stack, where every
  text token reads every image token in every fusion layer. The contrastive embeddings do not
  depend on the other modality, so retrieval ranks a gallery with one matrix product (the towers'
  outputs can be cached), and only the top k candidates are re-scored with the fusion stack and
  the ITM head (ALBEF re-ranks k = 128 that way): the fusion stack needs one pass per
  (image, text) *pair*, M·T passes for M images and T texts.

Early fusion (`EarlyFusion`; single stream, like ViLT, Kim et al. 2021, and VisualBERT):

    z = [cls;
         PatchEmbed(image) + pos_img + m_img;                           N tokens
         TokenEmbed(token_ids) + pos_txt + m_txt]                       L tokens
                                                                        [B, 1 + N + L, W]
    fused = Encoder(z)   (full bidirectional attention, padding keys masked)
    itm_logits = W_itm · fused[:, 0] + b                                [B, 2]
    vqa_logits = AnswerHead(fused[:, 0])                                [B, A]

  m_img, m_txt are learned modality embeddings (one vector per modality, BERT's "token type"):
  without them a patch token and a word token are told apart only by their content. The
  modalities meet at the input, so every layer can relate any word to any patch; the price is
  that nothing is computed per modality alone: every (image, text) pair is a full forward pass
  through every layer, with attention over 1 + N + L tokens (O((N + L)² · W) per layer), and
  retrieval has no cheap first stage.

Pooling and padding. The heads of both fusion models read position 0 of the fused sequence:
  - Early fusion prepends a learned [CLS] vector (it gets no position or modality embedding: being
    learned, a constant added to it would be redundant); it reads every real token and is never
    padding.
  - Mid fusion reads the first text token. The tokenizer emits no [CLS], so position 0 holds the
    caption's first token; with bidirectional attention it reads the whole caption and, in the
    fusion stack, the image, and the heads learn to use it as the [CLS] of BERT/ALBEF. A dedicated
    token can be had without changing the model: prepend a reserved id to `token_ids`. The text
    tower's own pooling (for the contrastive embedding) defaults to that first token too
    (`build_mid_fusion`); "mean" (over real tokens) also works.
Padding keys are masked in every attention that reads the text (text tower, fusion self-attention,
the single-stream encoder), so appending padding never changes a real token's output, nor the
pooled position 0: ITM and VQA logits are exactly invariant to padding, up to float rounding.

The MLM head (BERT's: a transform, then a projection to the vocabulary) is an untied Dense, not
tied to the text tower's token table: the table lives inside the text tower, and tying would reach
into its parameter names. The cost is V·W_txt parameters, small for the vocabularies used here.
Its vocabulary is the text tower's `vocab_size`, which includes the [MASK] id appended after the
tokenizer's ids (see `mmjax.data.pipeline.MaskedLanguagePreprocess`).

The VQA head is VQA as answer classification (Antol et al., 2015) with the MLP of UNITER and ViLT:
Dense(2·W) -> GELU -> LayerNorm -> Dense(A).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.clip import PROJECTION_INIT, l2_normalize
from mmjax.models.text import PAD_ID, TextTransformer
from mmjax.models.vit import ViT
from mmjax.nn.embed import (
    LearnedPositionEmbedding,
    PatchEmbed,
    TokenEmbed,
    sincos_2d_position_embedding,
)
from mmjax.nn.transformer import CrossAttentionStack, Encoder, gelu

Array = jax.Array

# Modality ids of EarlyFusion's modality embedding table.
TEXT_MODALITY, IMAGE_MODALITY = 0, 1


# ------------------------------------------------------------------------------------------------
# Heads.
# ------------------------------------------------------------------------------------------------


class AnswerHead(nn.Module):
    """VQA answer classifier: [batch, width] -> [batch, num_answers].

        logits = W₂ · LN(gelu(W₁ x + b₁)) + b₂,   W₁: width -> hidden_dim

    Attributes:
      num_answers: size A of the answer vocabulary.
      hidden_dim: hidden width; defaults to 2 · width (UNITER, ViLT).
    """

    num_answers: int
    hidden_dim: int | None = None
    activation: Callable[[Array], Array] = gelu

    @nn.compact
    def __call__(self, pooled: Array) -> Array:
        hidden = self.hidden_dim or 2 * pooled.shape[-1]
        h = self.activation(nn.Dense(hidden, name="fc1")(pooled))
        h = nn.LayerNorm(name="ln")(h)
        return nn.Dense(self.num_answers, name="fc2")(h)


class MlmHead(nn.Module):
    """BERT's masked-language-model head: [batch, seq, width] -> [batch, seq, vocab_size].

        logits = W_dec · LN(gelu(W_h x + b_h)) + b_dec     (W_h: width -> width, untied W_dec)
    """

    vocab_size: int
    activation: Callable[[Array], Array] = gelu

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        h = self.activation(nn.Dense(tokens.shape[-1], name="transform")(tokens))
        h = nn.LayerNorm(name="ln")(h)
        return nn.Dense(self.vocab_size, name="decoder")(h)


# ------------------------------------------------------------------------------------------------
# Mid fusion.
# ------------------------------------------------------------------------------------------------


class MidFusion(nn.Module):
    """ALBEF-style model: two towers, contrastive embeddings, a cross-attention fusion stack, heads.

    Methods (all take `deterministic=True`; False enables dropout and needs a "dropout" rng):

      encode_image(images [B, H, W, 3])
          -> {"tokens": [B, N, W_img], "embedding": [B, D] unit norm, float32}
      encode_text(token_ids [B, L] int, 0 = padding)
          -> {"tokens": [B, L, W_txt], "mask": [B, L] bool (True = real token),
              "embedding": [B, D] unit norm, float32}
      fuse(text_tokens [B, L, W_txt], text_mask [B, L], image_tokens [B, N, W_img])
          -> fused text tokens [B, L, W_txt]
      itm_logits(fused) -> [B, 2]   (class 1 = the text matches the image), from fused[:, 0]
      mlm_logits(fused) -> [B, L, vocab_size]
      vqa_logits(fused) -> [B, num_answers], from fused[:, 0]
      logit_scale() -> [] the contrastive temperature exp(t), clamped at `max_logit_scale`

    `__call__(images, token_ids)` runs all of them on one batch (so `init` creates every
    parameter) and returns {"image_embeddings", "text_embeddings", "logit_scale", "fused",
    "itm_logits", "mlm_logits", "vqa_logits"}. Training calls the methods on its own inputs: the
    MLM pass reads masked ids, the ITM pass also fuses mined negative pairs.

    Attributes:
      image_encoder: a ViT (any module returning {"tokens", "pooled"}).
      text_encoder: a bidirectional TextTransformer (`causal=False`): MLM predicts a masked
        token from both sides. It returns {"tokens", "pooled", "mask"}; its `vocab_size` sizes
        the MLM head.
      fusion_encoder: a CrossAttentionStack with `causal=False`, as wide as the text tower.
      embed_dim: width D of the contrastive embedding space.
      num_answers: size of the VQA answer vocabulary.
      logit_scale_init, max_logit_scale: the learned temperature, as in CLIP.
    """

    image_encoder: nn.Module
    text_encoder: nn.Module
    fusion_encoder: nn.Module
    embed_dim: int
    num_answers: int
    logit_scale_init: float = float(np.log(1 / 0.07))
    max_logit_scale: float = 100.0

    def __post_init__(self):
        if getattr(self.text_encoder, "causal", False):
            raise ValueError(
                "MidFusion needs a bidirectional text tower (causal=False): masked language "
                "modelling predicts a token from the words on both sides"
            )
        if getattr(self.fusion_encoder, "causal", False):
            raise ValueError("MidFusion's fusion encoder must be bidirectional (causal=False)")
        super().__post_init__()

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
        self.itm_head = nn.Dense(2, name="itm_head")
        self.mlm_head = MlmHead(self.text_encoder.vocab_size, name="mlm_head")
        self.vqa_head = AnswerHead(self.num_answers, name="vqa_head")

    def encode_image(self, images: Array, deterministic: bool = True) -> dict[str, Array]:
        """[B, H, W, 3] -> {"tokens": [B, N, W_img], "embedding": [B, D] unit norm}."""
        out = self.image_encoder(images, deterministic=deterministic)
        return {"tokens": out["tokens"], "embedding": l2_normalize(self.image_projection(out["pooled"]))}

    def encode_text(self, token_ids: Array, deterministic: bool = True) -> dict[str, Array]:
        """[B, L] ids -> {"tokens": [B, L, W_txt], "mask": [B, L] bool, "embedding": [B, D]}."""
        out = self.text_encoder(token_ids, deterministic=deterministic)
        return {
            "tokens": out["tokens"],
            "mask": out["mask"],
            "embedding": l2_normalize(self.text_projection(out["pooled"])),
        }

    def fuse(
        self, text_tokens: Array, text_mask: Array, image_tokens: Array, deterministic: bool = True
    ) -> Array:
        """Text tokens read the image: [B, L, W_txt], [B, L] bool, [B, N, W_img] -> [B, L, W_txt].

        Padding text tokens are masked as keys of the self-attention, so no real token reads
        them; their own outputs are meaningless and must be ignored (the heads read position 0).
        Every image token may be read.
        """
        # Key-padding mask [B, 1, 1, L]: True where the key is a real text token.
        self_mask = text_mask[:, None, None, :]
        return self.fusion_encoder(
            text_tokens, image_tokens, self_mask, None, deterministic=deterministic
        )

    def itm_logits(self, fused: Array) -> Array:
        """[B, L, W_txt] fused tokens -> [B, 2] match logits (class 1 = match), from position 0."""
        return self.itm_head(fused[:, 0])

    def mlm_logits(self, fused: Array) -> Array:
        """[B, L, W_txt] fused tokens -> [B, L, vocab_size] token logits at every position."""
        return self.mlm_head(fused)

    def vqa_logits(self, fused: Array) -> Array:
        """[B, L, W_txt] fused tokens -> [B, num_answers] answer logits, from position 0."""
        return self.vqa_head(fused[:, 0])

    def logit_scale(self) -> Array:
        """The contrastive multiplier exp(t), clamped at `max_logit_scale`: []."""
        return jnp.minimum(jnp.exp(self.log_logit_scale), self.max_logit_scale)

    def answer_logits(self, images: Array, token_ids: Array, deterministic: bool = True) -> Array:
        """VQA: [B, H, W, 3] images, [B, L] question ids -> [B, num_answers] answer logits.

        The question goes through the text tower and reads the image in the fusion stack.
        """
        image = self.encode_image(images, deterministic)
        text = self.encode_text(token_ids, deterministic)
        return self.vqa_logits(self.fuse(text["tokens"], text["mask"], image["tokens"], deterministic))

    def __call__(self, images: Array, token_ids: Array, deterministic: bool = True) -> dict[str, Array]:
        image = self.encode_image(images, deterministic)
        text = self.encode_text(token_ids, deterministic)
        fused = self.fuse(text["tokens"], text["mask"], image["tokens"], deterministic)
        return {
            "image_embeddings": image["embedding"],
            "text_embeddings": text["embedding"],
            "logit_scale": self.logit_scale(),
            "fused": fused,
            "itm_logits": self.itm_logits(fused),
            "mlm_logits": self.mlm_logits(fused),
            "vqa_logits": self.vqa_logits(fused),
        }


# ------------------------------------------------------------------------------------------------
# Early fusion.
# ------------------------------------------------------------------------------------------------


class PatchTokens(nn.Module):
    """[B, H, W, C] images -> [B, N, width] patch tokens with their position embedding.

    A "learned" table is as long as the patch grid of the images it is first called with (as in
    ViT); "sincos2d" is fixed and fits any grid.
    """

    patch_size: int
    width: int
    position_embedding: str = "learned"
    position_temperature: float = 10_000.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: Array) -> Array:
        tokens = PatchEmbed(self.patch_size, self.width, dtype=self.dtype, name="patch_embed")(
            images.astype(self.dtype)
        )
        if self.position_embedding == "sincos2d":
            grid = images.shape[1] // self.patch_size, images.shape[2] // self.patch_size
            table = sincos_2d_position_embedding(*grid, self.width, self.position_temperature)
            return tokens + jnp.asarray(table, self.dtype)
        return LearnedPositionEmbedding(tokens.shape[1], name="pos_embed")(tokens)


class EarlyFusion(nn.Module):
    """Single-stream model: image patches and text tokens in one sequence through one Encoder.

    Methods (all take `deterministic=True`):

      encode(images [B, H, W, 3], token_ids [B, L] int, 0 = padding)
          -> {"tokens": [B, 1 + N + L, W] (the [CLS], the image patches, the text),
              "mask": [B, 1 + N + L] bool (True = real token)}
      itm_logits(fused [B, S, W]) -> [B, 2], from the [CLS] at position 0
      vqa_logits(fused [B, S, W]) -> [B, num_answers], from the [CLS] at position 0

    `__call__(images, token_ids)` runs all of them (so `init` creates every parameter) and
    returns {"fused", "mask", "itm_logits", "vqa_logits"}.

    Attributes:
      vocab_size, max_text_len: token table and text position table sizes.
      patch_size: side of the square image patches; image sides must be multiples of it.
      width, depth, num_heads, mlp_dim: the shared transformer.
      num_answers: size of the VQA answer vocabulary.
      position_embedding: of the image patches, "learned" (ViLT) or "sincos2d" (fixed).
      position_temperature: the sin-cos embedding's longest wavelength (see `ViT`).
      pad_id: the text padding id.
    """

    vocab_size: int
    max_text_len: int
    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    num_answers: int
    position_embedding: str = "learned"
    position_temperature: float = 10_000.0
    pad_id: int = PAD_ID
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    scan: bool = True
    unroll: int | bool = 1  # see mmjax.nn.transformer.Encoder
    remat: bool | Callable = False  # see mmjax.nn.transformer.Encoder
    dtype: jnp.dtype = jnp.float32

    def __post_init__(self):
        if self.position_embedding not in ("learned", "sincos2d"):
            raise ValueError(
                "EarlyFusion.position_embedding must be 'learned' or 'sincos2d'; "
                f"got {self.position_embedding!r}"
            )
        super().__post_init__()

    def setup(self):
        self.image_embed = PatchTokens(
            self.patch_size, self.width, self.position_embedding, self.position_temperature,
            dtype=self.dtype, name="image_embed",
        )
        self.token_embed = TokenEmbed(self.vocab_size, self.width, dtype=self.dtype, name="token_embed")
        self.text_pos_embed = LearnedPositionEmbedding(self.max_text_len, name="text_pos_embed")
        # One learned vector per modality (TEXT_MODALITY, IMAGE_MODALITY).
        self.modality_embed = self.param(
            "modality_embedding", nn.initializers.normal(0.02), (2, self.width)
        )
        self.cls_token = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.width))
        self.encoder = Encoder(
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
        )
        self.itm_head = nn.Dense(2, name="itm_head")
        self.vqa_head = AnswerHead(self.num_answers, name="vqa_head")

    def _image_tokens(self, images: Array) -> Array:
        """[B, H, W, 3] -> [B, N, W]: patches + position embedding + image modality embedding."""
        tokens = self.image_embed(images)
        return tokens + self.modality_embed[IMAGE_MODALITY].astype(self.dtype)

    def _text_tokens(self, token_ids: Array) -> Array:
        """[B, L] ids -> [B, L, W]: token + position embedding + text modality embedding."""
        if token_ids.ndim != 2:
            raise ValueError(f"token_ids must be [batch, seq]; got shape {token_ids.shape}")
        if token_ids.shape[1] > self.max_text_len:
            raise ValueError(
                f"text length {token_ids.shape[1]} exceeds EarlyFusion.max_text_len {self.max_text_len}"
            )
        tokens = self.text_pos_embed(self.token_embed(token_ids))
        return tokens + self.modality_embed[TEXT_MODALITY].astype(self.dtype)

    def encode(self, images: Array, token_ids: Array, deterministic: bool = True) -> dict[str, Array]:
        """[B, H, W, 3], [B, L] -> {"tokens": [B, 1 + N + L, W], "mask": [B, 1 + N + L] bool}."""
        image_tokens = self._image_tokens(images)
        text_tokens = self._text_tokens(token_ids)
        batch, num_patches = image_tokens.shape[:2]

        # One sequence: [CLS], the image patches, the text tokens.
        cls = jnp.broadcast_to(self.cls_token.astype(self.dtype), (batch, 1, self.width))
        tokens = jnp.concatenate([cls, image_tokens, text_tokens], axis=1)
        valid = jnp.concatenate(
            [jnp.ones((batch, 1 + num_patches), bool), token_ids != self.pad_id], axis=1
        )

        # Full bidirectional attention; only padding keys are masked: [B, 1, 1, 1 + N + L].
        tokens = self.encoder(tokens, mask=valid[:, None, None, :], deterministic=deterministic)
        return {"tokens": tokens, "mask": valid}

    def itm_logits(self, fused: Array) -> Array:
        """[B, S, W] encoded sequence -> [B, 2] match logits (class 1 = match), from the [CLS]."""
        return self.itm_head(fused[:, 0])

    def vqa_logits(self, fused: Array) -> Array:
        """[B, S, W] encoded sequence -> [B, num_answers] answer logits, from the [CLS]."""
        return self.vqa_head(fused[:, 0])

    def answer_logits(self, images: Array, token_ids: Array, deterministic: bool = True) -> Array:
        """VQA: [B, H, W, 3] images, [B, L] question ids -> [B, num_answers] answer logits."""
        return self.vqa_logits(self.encode(images, token_ids, deterministic)["tokens"])

    def __call__(self, images: Array, token_ids: Array, deterministic: bool = True) -> dict[str, Array]:
        out = self.encode(images, token_ids, deterministic)
        return {
            "fused": out["tokens"],
            "mask": out["mask"],
            "itm_logits": self.itm_logits(out["tokens"]),
            "vqa_logits": self.vqa_logits(out["tokens"]),
        }


# ------------------------------------------------------------------------------------------------
# Late fusion.
# ------------------------------------------------------------------------------------------------


class LateFusionClassifier(nn.Module):
    """The baseline: pooled image and text features, concatenated, through an MLP.

    `__call__(images [B, H, W, 3], token_ids [B, L]) -> [B, num_answers]` VQA logits (also
    `answer_logits`, the name every VQA model shares). No cross-modal attention: the image is
    summarised without knowing the question.

    Attributes:
      image_encoder: a ViT (any module returning {"pooled": [B, W_img]}).
      text_encoder: a TextTransformer (any module returning {"pooled": [B, W_txt]}).
      num_answers: size of the VQA answer vocabulary.
      hidden_dim: the MLP's hidden width; defaults to 2 · (W_img + W_txt).
    """

    image_encoder: nn.Module
    text_encoder: nn.Module
    num_answers: int
    hidden_dim: int | None = None

    def setup(self):
        self.vqa_head = AnswerHead(self.num_answers, self.hidden_dim, name="vqa_head")

    def answer_logits(self, images: Array, token_ids: Array, deterministic: bool = True) -> Array:
        image_feature = self.image_encoder(images, deterministic=deterministic)["pooled"]
        text_feature = self.text_encoder(token_ids, deterministic=deterministic)["pooled"]
        # The only place the modalities meet: [B, W_img + W_txt].
        joint = jnp.concatenate(
            [image_feature.astype(jnp.float32), text_feature.astype(jnp.float32)], axis=-1
        )
        return self.vqa_head(joint)

    def __call__(self, images: Array, token_ids: Array, deterministic: bool = True) -> Array:
        return self.answer_logits(images, token_ids, deterministic)


# ------------------------------------------------------------------------------------------------
# Builders from config sections.
# ------------------------------------------------------------------------------------------------


def attribute_names(cls: type[nn.Module]) -> set[str]:
    """The constructor attributes of a linen module, without linen's own `parent` and `name`."""
    return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}


def check_fields(section: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Raises ValueError naming the fields of `given` that are not in `known`."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(
            f"config.{section} has unknown field(s) {unknown}; it accepts {sorted(known)}"
        )


def build_towers(config: Any, other_fields: Iterable[str]) -> tuple[ViT, TextTransformer]:
    """The ViT and TextTransformer of a config section whose `image` and `text` hold their
    attributes by name, besides `other_fields`; any unknown field is a ValueError naming it."""
    check_fields("model", config.keys(), ("image", "text", *other_fields))
    image_kwargs, text_kwargs = dict(config["image"]), dict(config["text"])
    check_fields("model.image", image_kwargs, attribute_names(ViT))
    check_fields("model.text", text_kwargs, attribute_names(TextTransformer))
    return ViT(**image_kwargs), TextTransformer(**text_kwargs)


def build_mid_fusion(config: Any) -> MidFusion:
    """Builds a MidFusion from a config section (a ConfigDict or dict) with fields:

      embed_dim, num_answers
      image:  ViT attributes, by name
      text:   TextTransformer attributes; `causal` defaults to False (and must be), `pool` to
              "first" (the [CLS]-like first token, as ALBEF); "mean" also works
      fusion: CrossAttentionStack attributes except `causal` (depth, num_heads, mlp_dim, ...)
      logit_scale_init, max_logit_scale: optional

    Unknown fields raise a ValueError that names them.
    """
    optional = ("logit_scale_init", "max_logit_scale")
    check_fields("model", config.keys(), ("embed_dim", "num_answers", "image", "text", "fusion", *optional))
    image_kwargs, text_kwargs = dict(config["image"]), dict(config["text"])
    fusion_kwargs = dict(config["fusion"])
    check_fields("model.image", image_kwargs, attribute_names(ViT))
    check_fields("model.text", text_kwargs, attribute_names(TextTransformer))
    check_fields("model.fusion", fusion_kwargs, attribute_names(CrossAttentionStack) - {"causal"})
    if text_kwargs.get("causal", False):
        raise ValueError("config.model.text.causal must be False: mid fusion's text tower is bidirectional")
    text_kwargs = {"causal": False, "pool": "first", **text_kwargs}
    return MidFusion(
        image_encoder=ViT(**image_kwargs),
        text_encoder=TextTransformer(**text_kwargs),
        fusion_encoder=CrossAttentionStack(causal=False, **fusion_kwargs),
        embed_dim=config["embed_dim"],
        num_answers=config["num_answers"],
        **{k: config[k] for k in optional if k in config},
    )


def build_early_fusion(config: Any) -> EarlyFusion:
    """Builds an EarlyFusion from a flat config section holding its attributes by name
    (vocab_size, max_text_len, patch_size, width, depth, num_heads, mlp_dim, num_answers, ...).

    Unknown fields raise a ValueError that names them.
    """
    kwargs = dict(config)
    check_fields("model", kwargs, attribute_names(EarlyFusion))
    return EarlyFusion(**kwargs)


def build_late_fusion_classifier(config: Any) -> LateFusionClassifier:
    """Builds a LateFusionClassifier from a config section with fields:

      num_answers
      image: ViT attributes, by name
      text:  TextTransformer attributes, by name
      hidden_dim: optional

    Unknown fields raise a ValueError that names them.
    """
    image_encoder, text_encoder = build_towers(config, ("num_answers", "hidden_dim"))
    return LateFusionClassifier(
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        num_answers=config["num_answers"],
        hidden_dim=config.get("hidden_dim"),
    )
