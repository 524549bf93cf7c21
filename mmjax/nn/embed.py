"""Embeddings: images to patch tokens, token ids to vectors, and position embeddings.

A transformer consumes a sequence of vectors. Text already is one (token ids looked up in a table);
an image becomes one by cutting it into non-overlapping p×p patches and projecting each flattened
patch linearly (Dosovitskiy et al., 2021):

    image [batch, H, W, C] -> patches [batch, (H/p)·(W/p), p·p·C] -> tokens = patches · W + b

which is a convolution with kernel size = stride = p. It is computed as the reshape and one matmul
that the formula says: on a CPU, XLA's convolution took 1.6x as long for the same work (forward
and kernel gradient of clip_tiny's patches, BENCHMARKS.md), and the kernel [p, p, C, width] is
the same array either way. Attention is
permutation-equivariant, so positions are added explicitly: learned vectors, or fixed 2-D sin-cos
features (MoCo v3, big_vision), which need no parameters and extend to other grid sizes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.nn import linear

Array = jax.Array


def check_patch_grid(images: Array, patch_size: int) -> None:
    """Raises a ValueError unless `images` is [batch, H, W, C] with H and W multiples of patch_size."""
    if images.ndim != 4:
        raise ValueError(f"images must be [batch, height, width, channels]; got {images.shape}")
    _, height, width, _ = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not a multiple of patch_size {patch_size}: "
            f"use an image size divisible by {patch_size} or another patch size"
        )


class PatchEmbed(nn.Module):
    """[batch, H, W, C] images -> [batch, (H/p)·(W/p), width] patch tokens (row-major order).

    Attributes:
      patch_size: p, the side of a square patch.
      width: the token width D.
      use_bias: add a bias to the projection (OpenAI's CLIP has none).
    """

    patch_size: int
    width: int
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: Array) -> Array:
        check_patch_grid(images, self.patch_size)
        p = self.patch_size
        batch, image_h, image_w, channels = images.shape
        grid_h, grid_w = image_h // p, image_w // p
        # --8<-- [start:patchify]
        # [batch, H, W, C] -> [batch, gh, p, gw, p, C] -> [batch, gh, gw, p, p, C]
        #                  -> [batch, gh·gw, p, p, C]: one patch per token, row-major.
        patches = images.reshape(batch, grid_h, p, grid_w, p, channels)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid_h * grid_w, p, p, channels)
        # --8<-- [end:patchify]
        return PatchProjection(
            self.width, self.use_bias, self.dtype, self.param_dtype, name="conv"
        )(patches)


class PatchProjection(nn.Module):
    """tokens = patches · W + b: [batch, N, p, p, C] -> [batch, N, width], W [p, p, C, width]
    (and likewise for any patch shape: [batch, N, *patch] -> [batch, N, width], W [*patch, width]).

    W and its name ("conv") are those of the equivalent strided convolution: the layout of
    big_vision's and timm's checkpoints and of the open_clip/HF converters, and, with lecun_normal
    over the same 4-D shape, the same initial values from the same key.
    """

    width: int
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, patches: Array) -> Array:
        # [batch, N, *patch]: an image patch (p, p, C), a video tubelet (tt, p, p, C), a
        # spectrogram patch (pf, pm, 1). W is [*patch, width]; lecun_normal's fan-in is the
        # patch's size either way.
        patch_shape = patches.shape[2:]
        # FSDP splits the output width.
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None,) * len(patch_shape) + ("embed",)),
            (*patch_shape, self.width),
            self.param_dtype,
        )
        bias = (
            self.param("bias", nn.initializers.zeros, (self.width,), self.param_dtype)
            if self.use_bias else None
        )
        patches, kernel, bias = nn.dtypes.promote_dtype(patches, kernel, bias, dtype=self.dtype)
        tokens = linear.tensordot(patches, kernel, axes=len(patch_shape))  # bnhwc,hwcd->bnd
        return tokens if bias is None else tokens + bias


class ConvStem(nn.Module):
    """[batch, H, W, C] images -> [batch, (H/p)·(W/p), width] tokens through a small CNN.

        x -> [conv 3x3, stride 2, ReLU] x log2(p) -> conv 1x1 -> tokens       (row-major order)

    channels width/2^(n-1), ..., width/2, width for the n = log2(p) strided convolutions: each
    halves the resolution and doubles the channels. This is the "ViT-C" stem of Xiao et al. (2021),
    "Early convolutions help transformers see better": a linear projection of raw pixels must
    recognise a shape wherever it sits in the patch, overlapping 3x3 filters need not, and small
    ViTs trained briefly learn faster and more stably with it (at ~5 MFLOP per 48 px image for
    width 128, cheap next to the transformer).

    Receptive field. Token r (along either axis) reads 2p - 1 pixels, from p·r - A to
    p·r - A + 2(p - 1), where A = Σ_k a_k 2^k adds up the zeros padded *before* convolution k
    (k = 0 the finest). Its centre is p·r + (p - 1) - A, and the patch's own centre is
    p·r + (p - 1)/2, so A = p/2 puts a token on its patch, half a pixel off: only the last
    (coarsest) convolution pads one zero before, the others none (so the token reads
    p·r - p/2 .. p·r + 3p/2 - 2: its patch and half a patch around it). The usual choices put
    the centre (p - 1)/2 pixels off, on a patch *border*: "SAME" padding everywhere (A = 0: the
    patch and the next one) or PyTorch's padding=1 everywhere (A = p - 1, ViT-C). There an object
    centred in a cell sits at mirrored places of two tokens' fields, and telling which cell holds
    it is left to the filters' asymmetry. Centring is right by construction; on `shapes` it was
    no worse than "SAME" (two seeds each), and position questions were settled by other means
    (see configs/coca_tiny.py).

    Attributes:
      patch_size: p, a power of two (the product of the convolutions' strides).
      width: the token width D.
    """

    patch_size: int
    width: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: Array) -> Array:
        p = self.patch_size
        if p < 2 or p & (p - 1):
            raise ValueError(f"ConvStem needs patch_size a power of two (the strides' product); got {p}")
        check_patch_grid(images, p)
        layers = p.bit_length() - 1
        x = images
        for i in range(layers):
            # Sizes stay even, and 1 + 1 padded zeros or 0 + 1 halve them exactly; see the docstring.
            before = 1 if i == layers - 1 else 0
            x = nn.Conv(
                max(self.width >> (layers - 1 - i), 1), kernel_size=(3, 3), strides=(2, 2),
                padding=((before, 1), (before, 1)),
                dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(nn.initializers.he_normal(), (None, None, None, None)),
                name=f"conv_{i}",
            )(x)
            x = nn.relu(x)
        tokens = nn.Conv(
            self.width, kernel_size=(1, 1), dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, None, "embed")),
            name="project",
        )(x)
        batch, grid_h, grid_w, dim = tokens.shape
        return tokens.reshape(batch, grid_h * grid_w, dim)


def sincos_2d_position_embedding(
    grid_h: int, grid_w: int, width: int, temperature: float = 10_000.0
) -> np.ndarray:
    """Fixed 2-D sin-cos position embeddings [grid_h·grid_w, width] (row-major, like PatchEmbed).

    For a patch at row y and column x, with ω_k = 1 / temperature^(k / (width/4 − 1)):

        pe = [sin(x ω), cos(x ω), sin(y ω), cos(y ω)]     (each block width/4 wide)
    """
    if width % 4:
        raise ValueError(f"sin-cos 2-D embeddings need width divisible by 4; got width={width}")
    # --8<-- [start:sincos]
    y, x = np.mgrid[:grid_h, :grid_w]
    quarter = width // 4
    omega = 1.0 / temperature ** (np.arange(quarter) / max(quarter - 1, 1))
    y = y.reshape(-1)[:, None] * omega[None, :]
    x = x.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)
    # --8<-- [end:sincos]


class LearnedPositionEmbedding(nn.Module):
    """Adds a learned vector per position: [batch, seq, width] -> [batch, seq, width].

    The table is `max_len` long; a shorter sequence uses its first `seq` rows.
    """

    max_len: int
    init_std: float = 0.02
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        seq, width = tokens.shape[-2:]
        if seq > self.max_len:
            raise ValueError(f"sequence length {seq} exceeds max_len {self.max_len}")
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(self.init_std), ("length", "embed")),
            (self.max_len, width),
            self.param_dtype,
        )
        return tokens + table[:seq].astype(tokens.dtype)


class TokenEmbed(nn.Module):
    """Token ids [batch, seq] (int) -> vectors [batch, seq, width] by table lookup.

    `attend(x)` computes x · tableᵀ, the tied output projection a language-model head uses.
    """

    vocab_size: int
    width: int
    init_std: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embed = nn.Embed(
            self.vocab_size,
            self.width,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(self.init_std), ("vocab", "embed")
            ),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def __call__(self, token_ids: Array) -> Array:
        return self.embed(token_ids)

    def attend(self, vectors: Array) -> Array:
        return self.embed.attend(vectors)


# ------------------------------------------------------------------------------------------------
# Video and audio: the same reshape and one matmul, over tubelets and spectrogram patches.
# ------------------------------------------------------------------------------------------------


class TubeletEmbed(nn.Module):
    """[batch, T, H, W, C] video -> [batch, (T/tt)·(H/p)·(W/p), width] tubelet tokens.

    ViViT's tubelet embedding (Arnab et al., 2021): the video is cut into non-overlapping
    tt×p×p blocks of space-time and each is projected linearly,

        video [b, T, H, W, C] -> [b, T/tt, tt, H/p, p, W/p, p, C]
              -> tubelets [b, (T/tt)·(H/p)·(W/p), tt, p, p, C] -> tokens = tubelets · W + b

    a 3-D convolution with kernel = stride = (tt, p, p), written as the reshape and one matmul
    like `PatchEmbed`. Tokens are in time-major order: all patches of the first tt frames, row by
    row, then the next tt frames. W is [tt, p, p, C, width]; `central_frame_kernel` builds it from
    an image tower's [p, p, C, width] so that a video tower can start from an image CLIP.

    Attributes:
      patch_size: p, the side of a square patch in each frame.
      tubelet_size: tt, the frames per token.
      width: the token width D.
    """

    patch_size: int
    tubelet_size: int
    width: int
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, video: Array) -> Array:
        if video.ndim != 5:
            raise ValueError(f"video must be [batch, frames, height, width, channels]; got {video.shape}")
        batch, frames, height, width, channels = video.shape
        p, tt = self.patch_size, self.tubelet_size
        if frames % tt:
            raise ValueError(f"clip length {frames} frames is not a multiple of tubelet_size {tt}: "
                             f"use clips of a multiple of {tt} frames")
        check_patch_grid(video[:, 0], p)
        # --8<-- [start:tubelets]
        gt, gh, gw = frames // tt, height // p, width // p
        tubelets = video.reshape(batch, gt, tt, gh, p, gw, p, channels)
        tubelets = tubelets.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch, gt * gh * gw, tt, p, p, channels)
        return PatchProjection(self.width, self.use_bias, self.dtype, self.param_dtype, name="conv")(tubelets)
        # --8<-- [end:tubelets]


def central_frame_kernel(kernel_2d: Array, tubelet_size: int) -> Array:
    """ViViT's "central frame" initialisation: [p, p, C, D] -> [tt, p, p, C, D].

        W_3d[t] = W_2d   for t = ⌊tt/2⌋,   0 otherwise

    A tubelet token then sees only its middle frame through the image kernel, so a static video
    (every frame the same image) embeds exactly like the image: the image tower's tokens, once
    per group of tt frames. ViViT found it better than repeating W_2d/tt over the frames
    ("filter inflation", I3D), which averages motion away from the start.
    """
    kernel_2d = jnp.asarray(kernel_2d)
    return jnp.zeros((tubelet_size, *kernel_2d.shape), kernel_2d.dtype).at[tubelet_size // 2].set(kernel_2d)


class SpectrogramPatchEmbed(nn.Module):
    """[batch, frames, mel_bins] log-mel spectrogram -> [batch, (F/pf)·(M/pm), width] tokens.

    AST (Gong et al., 2021): a spectrogram is an image with one channel, time along one axis and
    frequency along the other, cut into pf×pm patches and projected linearly:

        spec [b, F, M] -> [b, F/pf, pf, M/pm, pm] -> patches [b, (F/pf)·(M/pm), pf, pm, 1] -> · W + b

    Tokens are time-major (all frequency patches of the first pf frames, low to high, then the
    next frames). AST's patches overlap (stride 10 for 16×16); these do not, which keeps the
    embedding one reshape and one matmul and the token count F·M/(pf·pm).

    Attributes:
      patch_frames: pf, frames per patch.
      patch_bins: pm, mel bins per patch.
      width: the token width D.
    """

    patch_frames: int
    patch_bins: int
    width: int
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, spectrogram: Array) -> Array:
        if spectrogram.ndim != 3:
            raise ValueError(f"spectrogram must be [batch, frames, mel_bins]; got {spectrogram.shape}")
        batch, frames, bins = spectrogram.shape
        pf, pm = self.patch_frames, self.patch_bins
        if frames % pf or bins % pm:
            raise ValueError(f"spectrogram of {frames} frames x {bins} mel bins does not divide into "
                             f"{pf}x{pm} patches: pick a clip length and mel count divisible by them")
        patches = spectrogram.reshape(batch, frames // pf, pf, bins // pm, pm)
        patches = patches.transpose(0, 1, 3, 2, 4).reshape(batch, (frames // pf) * (bins // pm), pf, pm, 1)
        return PatchProjection(self.width, self.use_bias, self.dtype, self.param_dtype, name="conv")(patches)


class SpaceTimePositionEmbedding(nn.Module):
    """Learned positions for [batch, T·N, width] tokens of T time steps × N places (time-major).

        joint        pos[t, n] = E[t·N + n]                 one vector per (time, place): T·N·D
        factorised   pos[t, n] = E_time[t] + E_space[n]     (T + N)·D, and E_space can come from
                                                            an image tower's position table

    Attributes:
      num_times: T.
      num_places: N (patches per frame, or mel patches per time step).
      factorised: the sum of a time and a place embedding instead of one table.
    """

    num_times: int
    num_places: int
    factorised: bool = True
    init_std: float = 0.02
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        width = tokens.shape[-1]
        if tokens.shape[-2] != self.num_times * self.num_places:
            raise ValueError(f"expected {self.num_times} x {self.num_places} = {self.num_times * self.num_places} "
                             f"tokens; got {tokens.shape[-2]}")
        init = nn.with_logical_partitioning(nn.initializers.normal(self.init_std), ("length", "embed"))
        if self.factorised:
            time = self.param("time_embedding", init, (self.num_times, width), self.param_dtype)
            space = self.param("space_embedding", init, (self.num_places, width), self.param_dtype)
            table = (time[:, None, :] + space[None, :, :]).reshape(-1, width)
        else:
            table = self.param("embedding", init, (self.num_times * self.num_places, width), self.param_dtype)
        return tokens + table.astype(tokens.dtype)

