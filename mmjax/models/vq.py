"""A VQ-VAE image tokenizer: a picture in, a small grid of integers out, and back (DALL-E's stage 1).

    z   = Encoder(x)                      [batch, h, w, code_dim]     h = H / f, w = W / f
    k   = argmin_k ||z − e_k||²           [batch, h, w]  int          (the image's "words")
    x̂   = Decoder(e_k)                    [batch, H, W, 3]

    loss = ||x − x̂||²  +  λ GDL(x̂, x)  +  β ||z − sg(e_k)||²   (reconstruction, edges, commitment)

with the straight-through estimator carrying the decoder's gradient past the argmin to the
encoder, and the codebook e learned by exponential moving averages of the vectors that choose
each code (`mmjax.nn.vector_quantization`, whose docstring has the formulas). Van den Oord et al.
2017, "Neural Discrete Representation Learning"; the EMA codebook is their appendix and VQ-VAE-2's.
The GDL term (`mmjax.losses.gradient_difference_loss`, in `VQTask`'s loss) compares neighbouring
pixels' differences: the squared error alone lets the decoder blur the edges of 6-pixel shapes,
which then read as other shapes.

Why a VQ-VAE with an EMA codebook and not DALL-E's dVAE (Gumbel-softmax over K codes, a KL term
and a temperature schedule): the dVAE's relaxation needs its temperature annealed and its KL
weight tuned over a long run before the argmax codes decode well; the EMA codebook has no such
schedule, its codes are hard from the first step (the prior learns exactly the codes the decoder
reads), and with dead-code restarts (Jukebox, Dhariwal et al. 2020: a code chosen less than once
per step on average moves onto a random encoder output) the whole codebook stays in use at this
small scale. It is the tokenizer MaskGIT and VQGAN build on (with a GAN loss we leave out).

The downsampling factor f = 2^len(channels) is DALL-E's f = 8 by default: a 48 px `shapes`
picture becomes 6 × 6 = 36 codes, two by two per cell of the scene's 3 × 3 grid, short enough for
a small transformer to model. Convolutions, not patches of a ViT: each code sees a neighbourhood
of pixels through overlapping 4 × 4 strided kernels, and the decoder mirrors the encoder with
nearest-neighbour upsampling and 3 × 3 convolutions.

The codebook's running averages are parameters of the `codebook` submodule (`embedding` e [K, D],
`counts` N [K], `sums` m [K, D]) that no optimizer touches: the VQ task names them in
`untrained_params` and the train step sets them from each batch
(`VQTask.update_moving_averages`). Keeping them with the parameters puts them in every checkpoint
and lets the prior load the whole tokenizer as one subtree (`config.init_from`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.fusion import check_fields
from mmjax.nn.upsample import upsample_conv
from mmjax.nn.vector_quantization import Quantized, nearest_codes, quantize

Array = jax.Array


class ResidualBlock(nn.Module):
    """x + Conv3x3(ReLU(Conv3x3(ReLU(x)))): [batch, h, w, c] -> same; refines without resizing."""

    channels: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.Conv(self.channels, (3, 3), name="conv_0")(nn.relu(x))
        h = nn.Conv(x.shape[-1], (3, 3), name="conv_1")(nn.relu(h))
        return x + h


class UpsampleConv(nn.Module):
    """Nearest-neighbour doubling, then a 3x3 convolution: [batch, h, w, c] -> [batch, 2h, 2w, features].

    The parameters are nn.Conv's (`kernel` [3, 3, c, features], lecun-normal; `bias` [features],
    zeros), so it is `nn.Conv(features, (3, 3))(repeat(x, 2, rows and columns))` with the same
    initialisation and checkpoints; `mmjax.nn.upsample.upsample_conv` computes it as four 2x2
    convolutions of x, without the doubled input (2.25x fewer multiply-adds).
    """

    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return upsample_conv(x, kernel, bias)


class ConvEncoder(nn.Module):
    """[batch, H, W, 3] in [-1, 1] -> z [batch, H/f, W/f, code_dim], f = 2^len(channels).

    A 3x3 stem, then per entry of `channels` one 4x4 convolution of stride 2 (halving the side),
    `num_res_blocks` residual blocks and a 1x1 projection to the code dimension.
    """

    channels: Sequence[int]
    code_dim: int
    num_res_blocks: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Conv(self.channels[0], (3, 3), name="stem")(x)
        for i, channels in enumerate(self.channels):
            x = nn.relu(nn.Conv(channels, (4, 4), strides=(2, 2), name=f"down_{i}")(x))
        for i in range(self.num_res_blocks):
            x = ResidualBlock(self.channels[-1], name=f"res_{i}")(x)
        return nn.Dense(self.code_dim, name="to_codes")(nn.relu(x))


class ConvDecoder(nn.Module):
    """z_q [batch, h, w, code_dim] -> [batch, h·f, w·f, 3] (the encoder mirrored; linear output)."""

    channels: Sequence[int]
    num_res_blocks: int = 1

    @nn.compact
    def __call__(self, z: Array) -> Array:
        x = nn.Conv(self.channels[-1], (3, 3), name="stem")(z)
        for i in range(self.num_res_blocks):
            x = ResidualBlock(self.channels[-1], name=f"res_{i}")(x)
        for i, channels in enumerate(reversed(self.channels)):
            # Nearest-neighbour doubling, then a 3x3 convolution (VQGAN's upsampling): as
            # expressive as a stride-2 transposed convolution, without its checkerboard
            # artefacts, and 20x faster to train on a CPU, where XLA runs a transposed
            # convolution's gradient as a dilated convolution on a slow path. UpsampleConv
            # computes it without the doubled input (121 / 114 -> 101 / 95 ms a step).
            x = nn.relu(UpsampleConv(channels, name=f"up_{i}")(nn.relu(x)))
        return nn.Conv(3, (3, 3), name="to_pixels")(x)


class Codebook(nn.Module):
    """The K codes and their moving averages (parameters that the optimizer leaves alone).

    embedding e [K, D] ~ N(0, 1) at init; counts N [K] = 1 and sums m [K, D] = e (each code
    counted once, `init_ema_codebook`). The encoder's outputs are pulled onto the codes by the
    commitment loss and the codes onto the outputs by the averages; dead codes restart on outputs.
    """

    num_codes: int
    code_dim: int

    def setup(self):
        self.embedding = self.param("embedding", nn.initializers.normal(1.0), (self.num_codes, self.code_dim))
        self.counts = self.param("counts", nn.initializers.ones, (self.num_codes,))
        self.sums = self.param("sums", lambda rng, shape: self.embedding, (self.num_codes, self.code_dim))

    def __call__(self) -> Array:
        return self.embedding


class VQVAE(nn.Module):
    """Image tokenizer (see the module docstring).

    Methods:
      __call__: images [b, H, W, 3] -> {"reconstruction" [b, H, W, 3], "codes" int32 [b, h, w],
        "vectors" z [b, h, w, D], "commitment_loss" []}.
      encode: images -> z [b, h, w, D].
      tokenize: images -> codes int32 [b, h, w].
      decode_codes: codes [b, h, w] -> images [b, H, W, 3] in about [-1, 1].

    Images are float in [-1, 1] (`normalize_images`).
    """

    channels: Sequence[int] = (64, 128, 128)
    code_dim: int = 32
    num_codes: int = 512
    num_res_blocks: int = 1

    def setup(self):
        self.encoder = ConvEncoder(self.channels, self.code_dim, self.num_res_blocks)
        self.decoder = ConvDecoder(self.channels, self.num_res_blocks)
        self.codebook = Codebook(self.num_codes, self.code_dim)

    @property
    def downsampling(self) -> int:
        """f: each code stands for an f x f patch of pixels."""
        return 2 ** len(self.channels)

    def encode(self, images: Array) -> Array:
        return self.encoder(images)

    def quantize(self, vectors: Array) -> Quantized:
        return quantize(vectors, self.codebook())

    def tokenize(self, images: Array) -> Array:
        return nearest_codes(self.encoder(images), self.codebook())

    def decode_codes(self, codes: Array) -> Array:
        return self.decoder(jnp.take(self.codebook(), codes, axis=0))

    def __call__(self, images: Array) -> dict[str, Array]:
        vectors = self.encoder(images)
        quantized = self.quantize(vectors)
        return {
            "reconstruction": self.decoder(quantized.straight_through),
            "codes": quantized.codes,
            "vectors": vectors,
            "commitment_loss": quantized.commitment_loss,
        }


def to_uint8(images: Array) -> Array:
    """[-1, 1] floats -> uint8 pixels, rounded and clipped (the inverse of `normalize_images`)."""
    return jnp.clip(jnp.round((images.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def psnr(mse: Array, peak: float = 2.0) -> Array:
    """Peak signal-to-noise ratio in dB, 10 log10(peak² / MSE), for images spanning `peak` (2 for [-1, 1])."""
    return 10.0 * jnp.log10(peak**2 / jnp.maximum(mse, 1e-12))


def code_grid_side(tokenizer: VQVAE, image_size: int) -> int:
    """Side h = H / f of the code grid of `image_size` px pictures; a ValueError naming the config
    fields when the downsampling f = 2^len(channels) does not divide the picture."""
    factor = tokenizer.downsampling
    if image_size % factor:
        raise ValueError(f"config.data.image_size={image_size} must be a multiple of the tokenizer's downsampling "
                         f"2^len(config.model.tokenizer.channels) = {factor}")
    return image_size // factor


def build_vqvae(config: Any) -> VQVAE:
    """VQVAE from a config dict (config.model.tokenizer): channels, code_dim, num_codes and
    optionally num_res_blocks; an unknown field is a ValueError naming it."""
    check_fields("model.tokenizer", config.keys(), ("channels", "code_dim", "num_codes", "num_res_blocks"))
    return VQVAE(
        channels=tuple(config.channels), code_dim=config.code_dim, num_codes=config.num_codes,
        num_res_blocks=config.get("num_res_blocks", 1),
    )
