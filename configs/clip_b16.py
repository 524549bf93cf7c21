"""CLIP ViT-B/16: the configuration people run on a TPU VM or a GPU host.

    python train.py --config configs/clip_b16.py --workdir gs://bucket/runs/clip_b16

Image tower ViT-B/16 at 224 px (196 patches + class token, width 768, 12 layers, 12 heads), text
tower 12 layers x 512 wide with 8 heads over 77 tokens, a 512-d shared embedding: the shapes of
OpenAI's ViT-B/16 CLIP (149.6 M parameters with a 49,408-token vocabulary). GELU throughout.
Layers are scanned (one compiled block per tower) and rematerialised so activation memory does not
grow with depth. Mixed precision: the towers compute in bfloat16 while parameters, optimizer
state, attention softmax and the loss stay float32. The data section points at the `shapes` benchmark at 224 px; swap in a real
image-text dataset for real training.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections

from configs import clip_tiny


def get_config() -> ml_collections.ConfigDict:
    config = clip_tiny.get_config()
    gelu = functools.partial(jax.nn.gelu, approximate=False)
    config.data.image_size = 224
    config.data.text_len = 77
    config.data.vocab_size = 49_408
    config.data.num_threads = 16
    config.data.cache_decoded = False  # a real dataset does not fit in host memory
    config.model.embed_dim = 512
    config.model.image = ml_collections.ConfigDict(dict(
        patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072,
        pool="token", position_embedding="learned", ln_pre=True, patch_bias=False, activation=gelu,
        remat=True, dtype=jnp.bfloat16,
    ))
    config.model.text = ml_collections.ConfigDict(dict(
        vocab_size=49_408, max_len=77, width=512, depth=12, num_heads=8, mlp_dim=2048,
        activation=gelu, remat=True, dtype=jnp.bfloat16,
    ))
    config.batch_size = 4096
    config.num_steps = 100_000
    config.optimizer.learning_rate = 5e-4
    config.optimizer.warmup_steps = 2_000
    config.optimizer.weight_decay = 0.2
    config.log_every = 100
    config.checkpoint_every = 2_000
    config.keep_checkpoints = 3
    config.eval.batch_size = 1024
    return config
