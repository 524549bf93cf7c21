"""CLIP on real images that need no download: scikit-learn's handwritten digits, captioned from
their labels (mmjax/data/digits.py), built as a folder dataset and trained like any other.

    make digits     # writes the folder, builds data/digits, trains and evaluates (README: numbers, time)
    python train.py --config configs/clip_digits.py --workdir runs/clip_digits   # once data/digits exists

1,797 scans of 8 x 8 pixels, upscaled to 32 x 32; a quarter of them held out (`validation`).
Zero-shot classification names the digit from prompts such as "a handwritten seven"; retrieval
counts a hit when the retrieved caption or image is of the same digit (`eval.retrieval_hit =
"label"`), since a caption says nothing else about its image.
"""

import ml_collections

from configs import clip_tiny


def get_config() -> ml_collections.ConfigDict:
    config = clip_tiny.get_config()
    # The folder dataset `python -m mmjax.data.build --name digits` writes (its tokenizer with it).
    config.data.name = "digits"
    config.data.data_dir = "data"
    config.data.image_size = 32
    config.data.text_len = 16
    config.data.vocab_size = 256
    # A mirrored 2 or 7 is not a digit: no flips.
    config.data.flip_probability = 0.0
    # 8 px patches: 16 tokens of 32 x 32.
    config.model.image.update(dict(patch_size=8, width=128, depth=4, num_heads=4, mlp_dim=512))
    config.model.text.update(dict(vocab_size=256, max_len=16, width=128, depth=2))
    config.batch_size = 128
    config.num_steps = 500
    config.optimizer.warmup_steps = 50
    config.checkpoint_every = 250
    config.eval.split = "validation"
    config.eval.during_training_split = "validation"
    config.eval.retrieval_hit = "label"
    config.eval.prompt_templates = (
        "a handwritten {}", "the handwritten digit {}", "a scan of the handwritten digit {}",
        "the number {} written with a pen",
    )
    return config
