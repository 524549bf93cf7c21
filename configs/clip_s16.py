"""CLIP ViT-S/16 at 224 px: open_clip's `ViT-S-16` shapes, the size the benchmarks measure on a CPU.

    python train.py --config configs/clip_s16.py --workdir runs/clip_s16

Image tower ViT-S/16 (196 patches + class token, width 384, 12 layers, 6 heads, MLP 1536), text
tower 12 layers x 384 wide with 6 heads over 77 tokens, a 384-d shared embedding and a
49,408-token vocabulary: 62.2 M parameters, the same as open_clip's `ViT-S-16` (its model config
builds the peer model of `bench/peer.py`). Float32 and no rematerialisation: on a CPU bfloat16 is
no faster and memory is plentiful; the layers are unrolled (`unroll=True`, parameters still
stacked), 20-25% faster steps on a CPU for 2x the compile time (BENCHMARKS.md). As with clip_b16, the data section points at `shapes` at 224 px.
"""

import functools

import jax
import ml_collections

from configs import clip_tiny


def get_config() -> ml_collections.ConfigDict:
    config = clip_tiny.get_config()
    gelu = functools.partial(jax.nn.gelu, approximate=False)
    config.data.image_size = 224
    config.data.text_len = 77
    config.data.vocab_size = 49_408
    config.data.cache_decoded = False  # 224 px scenes: 3 GB decoded
    config.model.embed_dim = 384
    config.model.image = ml_collections.ConfigDict(dict(
        patch_size=16, width=384, depth=12, num_heads=6, mlp_dim=1536,
        pool="token", position_embedding="learned", ln_pre=True, patch_bias=False, activation=gelu,
        unroll=True,
    ))
    config.model.text = ml_collections.ConfigDict(dict(
        vocab_size=49_408, max_len=77, width=384, depth=12, num_heads=6, mlp_dim=1536, activation=gelu,
        unroll=True,
    ))
    config.batch_size = 32
    config.num_steps = 100_000
    config.optimizer.learning_rate = 5e-4
    config.optimizer.warmup_steps = 2_000
    config.optimizer.weight_decay = 0.2
    config.log_every = 100
    config.checkpoint_every = 2_000
    config.eval.batch_size = 128
    return config
