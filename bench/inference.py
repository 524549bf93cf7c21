"""Inference throughput: embedding images and texts (CLIP), and generating captions (CoCa).

    python bench/inference.py --config configs/clip_tiny.py --batch 256
    python bench/inference.py --config configs/coca_tiny.py --batch 64 --beam 1 4

Embedding: the jitted `encode_image` / `encode_text` of the config's task on random inputs,
examples/s (median over repeats after compile). Generation: `generate()` with greedy or beam
search, jitted with static shapes, `stop_early=False` so that every caption runs the full
`max_len` steps (random weights would otherwise stop at arbitrary points): decoder tokens/s =
batch · max_len / time, each step reading the KV cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.ceiling import median_seconds  # noqa: E402
from bench.workload import load_config, random_batch  # noqa: E402


def _median_rate(fn, items: int, repeats: int) -> float:
    """items / median seconds of `fn()` run to completion (after one untimed call)."""
    import jax

    return items / median_seconds(lambda: jax.block_until_ready(fn()), repeats)


def measure(config_path: str, batch: int, beams: tuple[int, ...] = (), repeats: int = 5) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from mmjax.training.setup import build_task

    config = load_config(config_path)
    task = build_task(config)
    host = random_batch(config, batch)
    inputs = {k: jnp.asarray(v) for k, v in host.items()}
    # Initialised on the task's own example batch (some tasks need more fields than these two).
    spec = task.example_batch(config, batch)
    params = nn.unbox(jax.jit(task.init)(jax.random.key(0), {k: jnp.zeros(v.shape, v.dtype) for k, v in spec.items()}))
    encode_images = jax.jit(task.encode_images)
    encode_texts = jax.jit(task.encode_texts)
    row = {
        "config": os.path.basename(config_path),
        "batch_size": batch,
        "image_embed_per_s": _median_rate(lambda: encode_images(params, inputs["images"]), batch, repeats),
        "text_embed_per_s": _median_rate(lambda: encode_texts(params, inputs["token_ids"]), batch, repeats),
    }
    if beams:
        from mmjax.models.captioner import EOS_ID, START_ID, generate
        from mmjax.training.tasks import normalize_images

        max_len = config.data.text_len
        images = normalize_images(inputs["images"])
        for beam in beams:
            caption = jax.jit(lambda p, x, beam=beam: generate(
                task.model, p, x, max_len=max_len, start_id=START_ID, eos_id=EOS_ID,
                beam_size=beam, stop_early=False))
            rate = _median_rate(lambda: caption(params, images), batch, max(2, repeats // 2))
            row[f"generate_beam{beam}_captions_per_s"] = rate
            row[f"generate_beam{beam}_tokens_per_s"] = rate * max_len
        row["max_len"] = max_len
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--beam", type=int, nargs="*", default=[], help="beam sizes to time generate() with")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    row = measure(args.config, args.batch, tuple(args.beam))
    if args.json:
        print(json.dumps(row))
        return
    print(f"{row['config']} batch {row['batch_size']}: images {row['image_embed_per_s']:.0f}/s, "
          f"texts {row['text_embed_per_s']:.0f}/s")
    for beam in args.beam:
        print(f"  generate beam {beam}: {row[f'generate_beam{beam}_captions_per_s']:.1f} captions/s, "
              f"{row[f'generate_beam{beam}_tokens_per_s']:.0f} tokens/s (max_len {row['max_len']})")


if __name__ == "__main__":
    main()
