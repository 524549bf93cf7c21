"""CLIP-small on `shapes` at 64 px: a wider, deeper model than clip_tiny, for a multi-core host or GPU.

    python train.py --config configs/clip_small.py --workdir runs/clip_small

ViT-S-like towers (width 384, 6 heads) at reduced depth: an 8x8 grid of 8 px patches over the
image, and a 4-layer text tower. About 10x the compute of clip_tiny per example.
"""

import ml_collections

from configs import clip_tiny


def get_config() -> ml_collections.ConfigDict:
    config = clip_tiny.get_config()
    config.data.image_size = 64
    config.model.embed_dim = 256
    config.model.image.update(dict(patch_size=8, width=384, depth=6, num_heads=6, mlp_dim=1536))
    config.model.text.update(dict(width=384, depth=4, num_heads=6, mlp_dim=1536))
    config.batch_size = 256
    config.num_steps = 3_000
    config.optimizer.learning_rate = 5e-4
    config.optimizer.warmup_steps = 200
    config.checkpoint_every = 1_000
    return config
