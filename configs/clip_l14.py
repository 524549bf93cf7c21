"""CLIP ViT-L/14: the large OpenAI CLIP, for TPU pods and multi-GPU hosts.

    python train.py --config configs/clip_l14.py --workdir gs://bucket/runs/clip_l14 \
        --config.mesh.data=-1 --config.mesh.fsdp=8

Image tower ViT-L/14 at 224 px (256 patches + class token, width 1024, 24 layers, 16 heads), text
tower 12 layers x 768 wide with 12 heads over 77 tokens, a 768-d shared embedding: the shapes of
OpenAI's ViT-L/14 CLIP (427.6 M parameters). 1.7 GB of float32 weights and 5.1 GB with Adam's
moments: shard them over an `fsdp` axis (docs/SCALING.md gives the bytes per device for several
meshes). Compute in bfloat16, parameters, optimizer state, softmax and loss in float32.
"""

import jax.numpy as jnp
import ml_collections

from configs import clip_b16


def get_config() -> ml_collections.ConfigDict:
    config = clip_b16.get_config()
    config.model.embed_dim = 768
    config.model.image.update(patch_size=14, width=1024, depth=24, num_heads=16, mlp_dim=4096)
    config.model.text.update(width=768, depth=12, num_heads=12, mlp_dim=3072)
    config.model.image.dtype = jnp.bfloat16
    config.model.text.dtype = jnp.bfloat16
    # 8 devices: FSDP within the host; the data axis takes every further host.
    config.mesh.update(data=-1, fsdp=8)
    config.batch_size = 4096
    config.optimizer.learning_rate = 4e-4
    return config
