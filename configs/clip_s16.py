"""CLIP ViT-S/16 at 224 px: open_clip's `ViT-S-16` shapes, the size the benchmarks measure on a CPU.

    python train.py --config configs/clip_s16.py --workdir runs/clip_s16

Image tower ViT-S/16 (196 patches + class token, width 384, 12 layers, 6 heads, MLP 1536), text
tower 12 layers x 384 wide with 6 heads over 77 tokens, a 384-d shared embedding and a
49,408-token vocabulary: 62.2 M parameters, the same as open_clip's `ViT-S-16` (its model config
builds the peer model of `bench/peer.py`). Float32 and no rematerialisation: on a CPU bfloat16 is
no faster and memory is plentiful; the layers are unrolled (`unroll=True`, parameters still
stacked), 20-25% faster steps on a CPU for 2x the compile time (BENCHMARKS.md). As with clip_b16, the data section points at `shapes` at 224 px.
"""

import jax.numpy as jnp
import ml_collections

from configs import clip_b16


def get_config() -> ml_collections.ConfigDict:
    """clip_b16 with ViT-S widths, float32, no remat, unrolled layers, a CPU-sized batch."""
    config = clip_b16.get_config()
    config.data.num_threads = 2
    config.data.cache_decoded = False  # 224 px scenes: 3 GB decoded
    config.model.embed_dim = 384
    cpu = dict(remat=False, dtype=jnp.float32, unroll=True)
    config.model.image.update(dict(width=384, num_heads=6, mlp_dim=1536, **cpu))
    config.model.text.update(dict(width=384, num_heads=6, mlp_dim=1536, **cpu))
    config.batch_size = 32
    config.eval.batch_size = 128
    return config
