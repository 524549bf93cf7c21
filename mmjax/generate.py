"""Draw pictures from captions with a trained text-to-image run (`configs/dalle_tiny.py`).

    python -m mmjax.generate --checkpoint runs/dalle_tiny --config configs/dalle_tiny.py \\
        --prompt "a large red circle at the top left" --num 8

writes a PNG grid (one row per prompt, `--num` samples each; `--output`, default generated.png).
Repeat --prompt for several rows. A prompt that the `shapes` grammar can read is also checked:
each sample has a green border where the scene parser reads the picture as exactly the prompt's
scene and a red one where it does not, and the count is printed. Sampling: --temperature,
--top_k and classifier-free guidance --guidance_scale (defaults: the run's config.eval); --seed
fixes the pictures. A prompt that is empty, has a word the tokenizer does not know, or is longer
than the prior reads (config.data.text_len tokens) is refused in one line.
"""

from __future__ import annotations

import types
from collections.abc import Sequence

import numpy as np


def generate_pictures(task, params, tokenizer, config, prompts: Sequence[str], num: int, seed: int = 0,
                      guidance_scale: float | None = None) -> np.ndarray:
    """uint8 [len(prompts), num, H, W, 3]: `num` pictures per prompt (fixed by `seed`)."""
    import jax

    from mmjax.training.text_to_image_task import encode_prompts

    token_ids = encode_prompts(list(prompts), tokenizer, config.data.text_len)
    images = task.generate(params, np.repeat(token_ids, num, axis=0), jax.random.key(seed), config,
                           guidance_scale, batch_size=config.eval.batch_size)
    return images.reshape(len(prompts), num, *images.shape[1:])


def main(argv: Sequence[str]) -> None:
    from mmjax.training.user_errors import command_main

    command_main(list(argv), lambda: _run(_FLAGS))


def _run(flags: types.SimpleNamespace) -> None:
    from mmjax.data import shapes
    from mmjax.evaluation.report import plot_text_to_image_grid
    from mmjax.evaluation.scene_parser import parse_scene
    from mmjax.training.evaluate import load_run
    from mmjax.training.library_logs import route_library_logs

    route_library_logs("generate")
    config = flags.config.value
    if config is None:
        raise ValueError("pass --config, the config file the run was trained with")
    prompts = [p.strip() for p in flags.prompt.value]
    if flags.num.value < 1:
        raise ValueError(f"--num must be at least 1; got {flags.num.value}")
    for name in ("temperature", "top_k"):
        value = getattr(flags, name).value
        if value is not None:
            config.eval[name] = value
    if config.eval.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0: the most likely code); got {config.eval.temperature}")
    task, params, step, tokenizer = load_run(flags.checkpoint.value, config)
    if not hasattr(task, "generate"):
        raise ValueError(f"the task of this config ({type(task).__name__}) does not generate pictures: "
                         "use a text-to-image config such as configs/dalle_tiny.py")
    pictures = generate_pictures(task, params, tokenizer, config, prompts, flags.num.value, flags.seed.value,
                                 flags.guidance_scale.value)
    marks = []
    for prompt, row in zip(prompts, pictures):
        key = shapes.parse_caption(prompt)
        if key is None:
            print(f"{prompt!r}: {len(row)} pictures (not a caption of the shapes grammar: not checked)")
            marks.append(None)
            continue
        matched = [parse_scene(picture) == key for picture in row]
        print(f"{prompt!r}: {sum(matched)} of {len(row)} pictures show exactly this scene (scene parser)")
        marks.append(matched)
    hits = None if any(m is None for m in marks) else np.asarray(marks)
    out = plot_text_to_image_grid(prompts, pictures, hits, flags.output.value)
    scale = config.eval.guidance_scale if flags.guidance_scale.value is None else flags.guidance_scale.value
    print(f"Wrote {out} (step {step} of {flags.checkpoint.value}; guidance scale {scale:g}, temperature "
          f"{config.eval.temperature:g}, top-k {config.eval.top_k}, seed {flags.seed.value}).")


def _define_flags() -> types.SimpleNamespace:
    from absl import flags
    from ml_collections import config_flags

    return types.SimpleNamespace(
        checkpoint=flags.DEFINE_string("checkpoint", None, "A text-to-image run folder.", required=True),
        config=config_flags.DEFINE_config_file("config", None, "The config file the run was trained with."),
        prompt=flags.DEFINE_multi_string("prompt", None, "A caption to draw (repeat for more rows).", required=True),
        num=flags.DEFINE_integer("num", 8, "Pictures per prompt."),
        output=flags.DEFINE_string("output", "generated.png", "Where to write the PNG grid."),
        seed=flags.DEFINE_integer("seed", 0, "Random seed of the sampler."),
        guidance_scale=flags.DEFINE_float("guidance_scale", None,
                                          "Classifier-free guidance scale (1: none; default: the config's)."),
        temperature=flags.DEFINE_float("temperature", None, "Sampling temperature (default: the config's)."),
        top_k=flags.DEFINE_integer("top_k", None, "Sample among the k most likely codes (0: all)."),
    )


if __name__ == "__main__":
    from absl import app

    _FLAGS = _define_flags()
    app.run(main)
