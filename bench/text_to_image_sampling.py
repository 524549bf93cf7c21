"""Sampling speed of the text-to-image priors: autoregressive (cached) against MaskGIT's rounds.

    python bench/text_to_image_sampling.py --batch 800
    python bench/text_to_image_sampling.py --batch 800 --rounds 4 8 12

Times the jitted code sampling of `configs/dalle_tiny.py` (N = 36 cached steps of one code) and
of `configs/maskgit_tiny.py` (S rounds of a full bidirectional pass over the T + N tokens), with
classifier-free guidance (the batch doubled), on random weights and random captions: the work is
the same whatever the weights. The tokenizer's decoding is left out (it is the same for both).
Seconds after a compiling call (the median over `repeats`), and pictures/s; each row is printed
as soon as it is measured (a 16-round MaskGIT at batch 800 takes minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.ceiling import median_seconds  # noqa: E402
from bench.workload import load_config  # noqa: E402


def measure(batch: int, rounds: tuple[int, ...], repeats: int = 1, guidance: float = 1.5) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mmjax.training.setup import build_task

    rows = []
    text = None
    for name, config_path, settings in [("autoregressive", "configs/dalle_tiny.py", [None]),
                                        ("maskgit", "configs/maskgit_tiny.py", list(rounds))]:
        for steps in settings:
            config = load_config(config_path)
            if steps is not None:
                config.eval.num_decode_steps = steps
            task = build_task(config)
            if text is None:
                rng = np.random.default_rng(0)
                text = jnp.asarray(rng.integers(3, config.data.vocab_size, (batch, config.data.text_len)), jnp.int32)
            codes = jnp.zeros((1, task.prior.image_len), jnp.int32)
            params = jax.jit(task.prior.init)(jax.random.key(0), text[:1], codes)["params"]
            run = jax.jit(lambda p, t, k: task.sample_codes(p, t, k, 0.5, 0, jnp.float32(guidance)))
            seconds = median_seconds(lambda: jax.block_until_ready(run(params, text, jax.random.key(1))), repeats)
            rows.append({"sampler": name, "steps": steps or task.prior.image_len, "batch": batch,
                         "seconds": seconds, "pictures_per_s": batch / seconds})
            print(f"{name:>14} {rows[-1]['steps']:>3} steps, batch {batch}: {seconds:.2f} s, "
                  f"{batch / seconds:.0f} pictures/s", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=800)
    parser.add_argument("--rounds", type=int, nargs="*", default=[8], help="MaskGIT's numbers of rounds to time")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = measure(args.batch, tuple(args.rounds))  # prints each row (stderr) as it is measured
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
