"""Video tower: a ViViT with joint space-time attention (Arnab et al., 2021, "model 1").

    video uint8 -> float [batch, T, H, W, 3]
      -> TubeletEmbed: tt×p×p blocks, one matmul         [batch, (T/tt)·(H/p)·(W/p), width]
      -> + space-time positions (factorised: E_time[t] + E_space[n], or one joint table)
      -> Encoder: every token attends to every other, across frames and places
      -> mean of the tokens                              [batch, width]

Why joint attention and not ViViT's factorised encoders: at a few dozen tokens per clip the full
attention matrix is tiny, and one stack is the image ViT with different tokens, so an image tower's
weights carry over (`central_frame_kernel` for the tubelet kernel, the image position table for
E_space). Factorised attention pays off at thousands of tokens, not here.

Motion is visible only across frames: a single frame shows where an object is, not where it goes.
With tt > 1 a tubelet token sees tt frames at once, so the projection itself can read a short
displacement; longer motion and the order of events are read by attention between time steps.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.nn.embed import SpaceTimePositionEmbedding, TubeletEmbed
from mmjax.nn.transformer import Encoder, gelu

Array = jax.Array


class VideoTransformer(nn.Module):
    """Video tower. `__call__(video)` returns {"tokens": [batch, seq, width], "pooled": [batch, width]}.

    `video` is float [batch, T, H, W, C] (normalised like images; T a multiple of tubelet_size,
    H and W multiples of patch_size); tokens are time-major (`TubeletEmbed`).

    Attributes:
      patch_size: side p of the square patch in each frame.
      tubelet_size: tt, frames per token.
      width, depth, num_heads, mlp_dim: transformer size.
      factorised_positions: E_time[t] + E_space[n] instead of one table per (time, place).
    """

    patch_size: int
    tubelet_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    factorised_positions: bool = True
    activation: Callable[[Array], Array] = gelu
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-5
    scan: bool = True
    unroll: int | bool = 1  # see mmjax.nn.transformer.Encoder
    remat: bool | Callable = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, video: Array, deterministic: bool = True) -> dict[str, Array]:
        tokens = TubeletEmbed(self.patch_size, self.tubelet_size, self.width, dtype=self.dtype,
                              name="tubelet_embed")(video.astype(self.dtype))
        num_times = video.shape[1] // self.tubelet_size
        num_places = (video.shape[2] // self.patch_size) * (video.shape[3] // self.patch_size)
        tokens = SpaceTimePositionEmbedding(num_times, num_places, factorised=self.factorised_positions,
                                            name="pos_embed")(tokens)
        return encode_and_mean_pool(self, tokens, deterministic)


def encode_and_mean_pool(tower: nn.Module, tokens: Array, deterministic: bool) -> dict[str, Array]:
    """The transformer of a media tower over its tokens [batch, seq, width], and their mean.

    `tower` carries the Encoder's settings under the same names (depth, num_heads, mlp_dim, ...),
    as `VideoTransformer` and `AudioTransformer` do; it is called inside the tower's compact method,
    so the Encoder's parameters live under the tower's "encoder".
    """
    tokens = Encoder(
        depth=tower.depth, num_heads=tower.num_heads, mlp_dim=tower.mlp_dim, activation=tower.activation,
        dropout_rate=tower.dropout_rate, layer_norm_epsilon=tower.layer_norm_epsilon, scan=tower.scan,
        unroll=tower.unroll, remat=tower.remat, dtype=tower.dtype, name="encoder",
    )(tokens, deterministic=deterministic)
    return {"tokens": tokens, "pooled": jnp.mean(tokens, axis=1)}
