"""LiT-tiny: clip_tiny's text tower trained against clip_tiny's locked, pre-trained image tower.

    python train.py --config configs/clip_tiny.py --workdir runs/clip_tiny     # first: the image tower
    python train.py --config configs/lit_tiny.py  --workdir runs/lit_tiny

LiT (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning"): the image tower
and its projection into the embedding space come from a trained run and are frozen; a new text
tower (and the temperature) learns to map captions onto those fixed image embeddings. Here the
image side is taken from a clip_tiny run on the same data, so the question is whether a text tower
trained alone can catch up with one trained jointly. Frozen parameters get no optimizer state and
no weight decay, and the gradients are clipped by the norm of the trained ones only
(mmjax/training/freeze.py); the weights are read from the other run's latest checkpoint when this
run starts from scratch (mmjax/training/pretrained.py), never when it resumes.

On 2 CPU cores (300 steps, 5 min), with the image tower of a 500-step clip_tiny run: retrieval
R@1 0.991 image -> text and 0.989 text -> image, zero-shot top-1 0.545, against that clip_tiny's
0.990 / 0.991 / 0.514 (same prompts). 908 k of the 1.36 M parameters are frozen; the optimizer
state is 3.6 MB instead of 10.9 MB.
"""

import ml_collections

from configs import clip_tiny


def get_config() -> ml_collections.ConfigDict:
    config = clip_tiny.get_config()

    # Where the locked tower comes from: the latest checkpoint of this run folder, read once, when
    # this run starts. The image tower's config must be the one it was trained with (clip_tiny's).
    config.init_from = ml_collections.ConfigDict(dict(
        workdir="runs/clip_tiny",
        subtrees=("image_encoder", "image_projection"),
    ))
    # Regexes on "/"-joined parameter names: these parameters are never updated.
    config.freeze = ("^image_encoder/", "^image_projection/")

    # The text tower alone has less to learn than both towers: fewer steps than clip_tiny's 400.
    config.num_steps = 300
    config.checkpoint_every = 150
    return config
