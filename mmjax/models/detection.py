"""Open-vocabulary object detection on a CLIP image tower: OWL-ViT (Minderer et al., 2022).

A ViT's output tokens are a grid, one per image patch. OWL-ViT drops the pooling and lets every
patch token n predict one object: a box, and an embedding that is compared with the embeddings
of text queries:

    tokens      = LayerNorm(ViT(image).tokens)                               [batch, N, width]
    box_n       = sigmoid(MLP(tokens_n) + prior_n)       (cx, cy, w, h) in [0, 1]   [batch, N, 4]
    e_n         = normalize(W_img · tokens_n)                                [batch, N, embed_dim]
    q_k         = normalize(W_txt · Text(query_k).pooled)                     [batch, Q, embed_dim]
    logit_nk    = (<e_n, q_k> + shift_n) · scale_n                           [batch, N, Q]

What makes it open-vocabulary: the queries are text, embedded by the CLIP text tower, so a
phrase never seen as a detection label ("a blue cross") can still be asked for. Starting the
image tower, `W_img` and the text tower from a trained CLIP run (`config.init_from`) puts the
token embeddings in the space where the text tower already placed every colour and shape.

Why each piece:

- **The box prior.** Token n sits at grid position (i, j) of a g×g grid. prior_n is the inverse
  sigmoid of the box centred on its patch with the patch's size, so an untrained head predicts
  "the object in my patch, as large as my patch", and every token starts responsible for its own
  region: matching (`mmjax.losses.detection_set_loss`) then has a sensible spatial prior from the
  first step, which DETR's learned queries must discover.
- **Per-token shift and scale.** A token over background should score low for every query;
  `shift_n` lets it do so without moving its embedding, and `scale_n = elu(s_n) + 1 > 0` sets
  how confident each token is, where CLIP's single temperature would apply one scale to all.
- **The class token.** A tower pooled by a class token carries global context there; OWL-ViT
  multiplies it into each patch token before the LayerNorm, and so does this module
  (`pool="token"`); a mean-pooled tower (clip_tiny) has no class token and its patch tokens are
  used as they are.

Shapes: images [batch, H, W, 3] (normalised floats); queries as token ids [batch, Q, L] (each
image its own list of phrases: the ones it contains and negatives that it does not) or as
embeddings [batch, Q, embed_dim] (`encode_queries` once, for a fixed vocabulary at evaluation).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.clip import PROJECTION_INIT, l2_normalize
from mmjax.models.fusion import build_towers
from mmjax.models.text import TextTransformer
from mmjax.models.vit import ViT

Array = jax.Array


def box_prior(grid_size: int) -> np.ndarray:
    """[g², 4] logits whose sigmoid is the box of each patch, row-major: centre
    ((j + 1/2)/g, (i + 1/2)/g) for the token at row i and column j, width and height 1/g.

        prior = log(b / (1 - b)),   b = (cx, cy, w, h) of the patch
    """
    centres = (np.arange(grid_size, dtype=np.float64) + 0.5) / grid_size
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    size = np.full_like(cx, 1.0 / grid_size)
    boxes = np.stack([cx, cy, size, size], axis=-1).reshape(-1, 4)
    return np.log(boxes / (1.0 - boxes)).astype(np.float32)


class BoxHead(nn.Module):
    """tokens [batch, N, width] -> boxes [batch, N, 4] as (cx, cy, w, h) in [0, 1].

    A 3-layer MLP (DETR's), its output added to the patch's box prior before the sigmoid. The
    last layer starts at zero, so the first prediction of every token is exactly its patch's box.
    """

    hidden: int

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        grid = int(round(tokens.shape[1] ** 0.5))
        if grid * grid != tokens.shape[1]:
            raise ValueError(f"the image tower gives {tokens.shape[1]} patch tokens, not a square grid")
        x = nn.gelu(nn.Dense(self.hidden, name="fc1")(tokens))
        x = nn.gelu(nn.Dense(self.hidden, name="fc2")(x))
        x = nn.Dense(4, kernel_init=nn.initializers.zeros, name="fc3")(x)
        return jax.nn.sigmoid(x.astype(jnp.float32) + box_prior(grid))


class OpenVocabularyDetector(nn.Module):
    """OWL-ViT over an mmjax ViT and text tower (see the module docstring).

    `__call__(images, query_ids)` returns a dict:

      boxes:            float32 [batch, N, 4]  (cx, cy, w, h), normalised to [0, 1]
      logits:           float32 [batch, N, Q]  token n's score for query k (a sigmoid logit)
      class_embeddings: float32 [batch, N, embed_dim], unit norm

    with N = (H / patch)² patch tokens in row-major order and Q queries per image.

    Attributes:
      image_encoder: a ViT.
      text_encoder: a TextTransformer.
      embed_dim: the shared embedding width (the CLIP run's).
      box_hidden: width of the box MLP; defaults to the image tower's width.

    The parameter names follow CLIP's (`image_encoder`, `text_encoder`, `image_projection`,
    `text_projection`), so `config.init_from` can take them from a CLIP run by name.
    """

    image_encoder: ViT
    text_encoder: TextTransformer
    embed_dim: int
    box_hidden: int | None = None

    def setup(self):
        self.image_projection = nn.Dense(self.embed_dim, use_bias=False, kernel_init=PROJECTION_INIT,
                                         name="image_projection")
        self.text_projection = nn.Dense(self.embed_dim, use_bias=False, kernel_init=PROJECTION_INIT,
                                        name="text_projection")
        self.token_norm = nn.LayerNorm(name="token_norm")
        # Per token: a shift of its logits, and the pre-activation of their scale. They start at
        # scale 10 (cosines in [-1, 1] become logits in [-10, 10]) and shift -0.46, so a token
        # whose similarity is 0 scores σ(-4.6) = 0.01: most (token, query) pairs are negatives, and
        # starting them all at 0.5 would spend the first steps unlearning that (RetinaNet's prior).
        self.logit_shift = nn.Dense(1, bias_init=nn.initializers.constant(-0.46), name="logit_shift")
        self.logit_scale = nn.Dense(1, bias_init=nn.initializers.constant(9.0), name="logit_scale")
        self.box_head = BoxHead(self.box_hidden or self.image_encoder.width, name="box_head")

    def image_tokens(self, images: Array, deterministic: bool = True) -> Array:
        """[batch, H, W, 3] -> the patch tokens [batch, N, width], normalised."""
        tokens = self.image_encoder(images, deterministic=deterministic)["tokens"]
        if self.image_encoder.pool == "token":
            # OWL-ViT: the class token's global context, multiplied into every patch token.
            tokens = tokens[:, 1:] * tokens[:, :1]
        return self.token_norm(tokens)

    def encode_queries(self, query_ids: Array, deterministic: bool = True) -> Array:
        """Token ids [..., L] -> unit-norm query embeddings [..., embed_dim]."""
        flat = query_ids.reshape(-1, query_ids.shape[-1])
        pooled = self.text_encoder(flat, deterministic=deterministic)["pooled"]
        return l2_normalize(self.text_projection(pooled)).reshape(*query_ids.shape[:-1], self.embed_dim)

    def detect(self, images: Array, query_embeddings: Array, deterministic: bool = True) -> dict[str, Array]:
        """Boxes and logits against given query embeddings [batch, Q, embed_dim] (or [Q, embed_dim],
        the same queries for every image)."""
        tokens = self.image_tokens(images, deterministic)
        if query_embeddings.ndim == 2:
            query_embeddings = jnp.broadcast_to(query_embeddings, (tokens.shape[0], *query_embeddings.shape))
        boxes = self.box_head(tokens)
        class_embeddings = l2_normalize(self.image_projection(tokens))
        similarity = jnp.einsum("bnd,bqd->bnq", class_embeddings, query_embeddings.astype(jnp.float32))
        shift = self.logit_shift(tokens).astype(jnp.float32)
        scale = jax.nn.elu(self.logit_scale(tokens).astype(jnp.float32)) + 1.0
        return {"boxes": boxes, "logits": (similarity + shift) * scale, "class_embeddings": class_embeddings}

    def __call__(self, images: Array, query_ids: Array, deterministic: bool = True) -> dict[str, Array]:
        """images [batch, H, W, 3], query_ids [batch, Q, L] -> boxes, logits (see the class)."""
        if query_ids.ndim != 3 or query_ids.shape[0] != images.shape[0]:
            raise ValueError(
                f"query_ids must be [batch, queries, length] with batch {images.shape[0]}; got {query_ids.shape}"
            )
        return self.detect(images, self.encode_queries(query_ids, deterministic), deterministic)


def build_detector(config: Any) -> OpenVocabularyDetector:
    """An OpenVocabularyDetector from a config section with `image`, `text` (the ViT's and the
    TextTransformer's attributes, by name: the CLIP run's), `embed_dim` and optionally
    `box_hidden`. Unknown fields raise an error naming them."""
    image_encoder, text_encoder = build_towers(config, ("embed_dim", "box_hidden"))
    return OpenVocabularyDetector(
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        embed_dim=config["embed_dim"],
        box_hidden=config.get("box_hidden"),
    )
