"""Vision Transformer image tower (Dosovitskiy et al., 2021).

    images [batch, H, W, 3]
      -> PatchEmbed                      [batch, N, width]     N = (H/p)·(W/p)
      -> prepend a class token (opt.)    [batch, 1 + N, width]
      -> + position embedding            (learned: one per token, the class token included, as
                                          in ViT and CLIP; sin-cos: patches only, as in big_vision)
      -> Encoder (pre-LN blocks, scanned, final LayerNorm)
      -> pool: the class token ("token") or the mean of the patch tokens ("mean")
                                         [batch, width]

Mean pooling (no class token) is what big_vision's SigLIP and the "simple ViT" baselines use; the
class token is what CLIP and the original ViT use. Both are here because imported CLIP weights need
the class token, and mean pooling trains a little faster from scratch.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.embed import ConvStem, LearnedPositionEmbedding, PatchEmbed, sincos_2d_position_embedding
from mmjax.nn.transformer import Encoder, gelu

Array = jax.Array


class ViT(nn.Module):
    """Image tower. `__call__(images)` returns {"tokens": [batch, seq, width], "pooled": [batch, width]}.

    Attributes:
      patch_size: side p of the square patches; image height and width must be multiples of it.
      width, depth, num_heads, mlp_dim: transformer size.
      pool: "token" (class token) or "mean" (mean of patch tokens).
      position_embedding: "learned" or "sincos2d".
      position_temperature: the sin-cos embedding's longest wavelength (`sincos_2d_position_embedding`).
        10 000 suits grids of 14+ patches; on a 3x3 grid it makes neighbouring positions nearly
        identical (cosine 0.98) and position is learned late; 10 makes them distinct.
      relative_position_bias: each self-attention layer adds a learned bias per head and 2-D
        offset between patches, logits[h, i, j] += B[h, offset(i -> j)] (Swin, BEiT; zero at
        init). A head can then read "the patch to my left" of every patch at once, whatever the
        picture: relations between neighbouring cells become one lookup of the image tokens.
      stem: "patch" (one linear projection per p x p patch, as ViT and CLIP) or "conv" (log2(p)
        strided 3x3 convolutions, `ConvStem`, Xiao et al. 2021).
      ln_pre: a LayerNorm before the encoder (OpenAI CLIP has one).
      patch_bias: a bias in the patch projection (OpenAI CLIP has none).
    """

    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    pool: str = "token"
    position_embedding: str = "learned"
    position_temperature: float = 10_000.0
    relative_position_bias: bool = False
    stem: str = "patch"
    ln_pre: bool = False
    patch_bias: bool = True
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    scan: bool = True
    unroll: int | bool = 1  # see mmjax.nn.transformer.Encoder
    remat: bool | Callable = False  # see mmjax.nn.transformer.Encoder
    dtype: jnp.dtype = jnp.float32

    def __post_init__(self):
        if self.pool not in ("token", "mean"):
            raise ValueError(f"ViT.pool must be 'token' or 'mean'; got {self.pool!r}")
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"ViT.stem must be 'patch' or 'conv'; got {self.stem!r}")
        if self.position_embedding not in ("learned", "sincos2d"):
            raise ValueError(
                f"ViT.position_embedding must be 'learned' or 'sincos2d'; got {self.position_embedding!r}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, images: Array, deterministic: bool = True) -> dict[str, Array]:
        if self.stem == "conv":
            tokens = ConvStem(self.patch_size, self.width, dtype=self.dtype, name="conv_stem")(
                images.astype(self.dtype))
        else:
            tokens = PatchEmbed(
                self.patch_size, self.width, use_bias=self.patch_bias, dtype=self.dtype, name="patch_embed"
            )(images.astype(self.dtype))
        batch, num_patches, _ = tokens.shape
        # [rows, cols] of patches; the stems have checked that the image divides into them.
        grid = images.shape[1] // self.patch_size, images.shape[2] // self.patch_size
        if self.position_embedding == "sincos2d":
            table = sincos_2d_position_embedding(*grid, self.width, self.position_temperature)
            tokens = tokens + jnp.asarray(table, self.dtype)

        if self.pool == "token":
            cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.width))
            tokens = jnp.concatenate(
                [jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.width)), tokens], axis=1
            )
        if self.position_embedding == "learned":
            tokens = LearnedPositionEmbedding(tokens.shape[1], name="pos_embed")(tokens)
        if self.ln_pre:
            tokens = nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, name="ln_pre")(tokens)

        tokens = Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            layer_norm_epsilon=self.layer_norm_epsilon,
            relative_position_grid=grid if self.relative_position_bias else None,
            scan=self.scan,
            unroll=self.unroll,
            remat=self.remat,
            dtype=self.dtype,
            name="encoder",
        )(tokens, deterministic=deterministic)

        pooled = tokens[:, 0] if self.pool == "token" else jnp.mean(tokens, axis=1)
        return {"tokens": tokens, "pooled": pooled}
