"""Video, audio and text of the same clip in one space (VATT / ImageBind), sized for 2 CPU cores.

    python train.py --config configs/triple_tiny.py --workdir runs/triple_tiny
    python train.py --config configs/triple_tiny.py:video_audio --workdir runs/triple_tiny_video_audio

`moving_shapes` clips come with a sound track: each object, while it moves, makes the sound of its
shape (a circle beeps, a square buzzes, ...) at the pitch of its size (large: low). The towers of
video_clip_tiny and audio_clip_tiny (32 video tokens, 16 audio tokens) and one text tower are
trained with pairwise InfoNCE on video-text and audio-text only; video and audio never meet in the
loss, and their retrieval measures the alignment that comes through text (ImageBind's "emergent"
alignment). The `:video_audio` variant adds the video-audio pair to the loss, for comparison.

A sound cannot show colour or direction, so a retrieval that involves audio counts a hit when the
retrieved clip makes the same sounds in the same order (`MediaWorldData.hit_key`).
"""

import ml_collections

from configs import audio_clip_tiny, video_clip_tiny


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in ("", "video_audio"):
        raise ValueError(f"configs/triple_tiny.py takes no variant or ':video_audio'; got {variant!r}")
    config = video_clip_tiny.get_config()
    audio = audio_clip_tiny.get_config()
    config.model.modalities = ("video", "audio", "text")
    config.model.towers.audio = audio.model.towers.audio
    config.model.pairs = (("video", "text"), ("audio", "text")) + ((("video", "audio"),) if variant else ())
    # A step runs three towers: fewer steps than either two-tower config keep the run near 15 minutes.
    config.num_steps = 800
    config.checkpoint_every = 400
    return config
