"""Which caption fits each of your own sounds or videos: a trained video or audio CLIP from the
command line.

    python -m mmjax.match_clips --checkpoint runs/audio_clip_tiny --config configs/audio_clip_tiny.py \
        --clips my_sounds/ --texts "a short high beep,a long low hiss then a short high whistle"
    python -m mmjax.match_clips --checkpoint runs/video_clip_tiny --config configs/video_clip_tiny.py \
        --clips my_gifs/ --texts_file captions.txt [--top_k 3] [--output scores.json]

Every clip of the folder is read as the run's tower reads its training data, and each is
embedded beside every text; for each clip the texts are ranked by cosine similarity (with their
softmax probability at the learned temperature, CLIP's zero-shot recipe without prompts, since
the texts are whole captions). Clips:
  audio  .wav files (PCM 8/16/32-bit, any channels: averaged to mono), at the tower's sample rate
         (a file at another rate is an error naming both: resample it first); longer clips are
         cut to the training length, shorter ones padded with silence (both reported).
  video  animated .gif / .png / .webp files, or a folder of frames (image files, in name order),
         with at least the clip's frame count: evenly spaced frames are kept, each resized to the
         training side (a square crop of the centre first).
"""

from __future__ import annotations

import json
import os
import types
import wave
from typing import Sequence

import numpy as np
from PIL import Image, ImageSequence

AUDIO_EXTENSIONS = (".wav",)
VIDEO_EXTENSIONS = (".gif", ".png", ".webp", ".apng")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_wav(path: str, sample_rate: int, num_samples: int) -> tuple[np.ndarray, str]:
    """A .wav file -> (int16 [num_samples] mono at `sample_rate`, a note on cutting or padding)."""
    try:
        with wave.open(path, "rb") as file:
            rate, channels, width, frames = (file.getframerate(), file.getnchannels(), file.getsampwidth(),
                                             file.readframes(file.getnframes()))
    except (wave.Error, EOFError) as error:
        raise ValueError(f"{path} is not a PCM .wav file that can be read ({error})") from None
    if rate != sample_rate:
        raise ValueError(f"{path} is sampled at {rate} Hz but the audio tower expects {sample_rate} Hz: resample it "
                         f"first (e.g. `sox {os.path.basename(path)} -r {sample_rate} out.wav`)")
    dtypes = {1: np.uint8, 2: np.int16, 4: np.int32}
    if width not in dtypes:
        raise ValueError(f"{path} has {8 * width}-bit samples; use 8, 16 or 32-bit PCM")
    samples = np.frombuffer(frames, dtypes[width]).reshape(-1, channels).astype(np.float64).mean(axis=1)
    # to the int16 scale the tower's inputs use (full scale = 32767)
    samples = {1: (samples - 128) * 256, 2: samples, 4: samples / 65536}[width]
    note = ""
    if len(samples) > num_samples:
        note = f"cut to the first {num_samples / sample_rate:.2f} s"
    elif len(samples) < num_samples:
        note = f"padded with silence to {num_samples / sample_rate:.2f} s"
    clip = np.zeros(num_samples, np.int16)
    kept = samples[:num_samples]
    clip[: len(kept)] = np.clip(np.rint(kept), -32768, 32767)
    return clip, note


def _square(frame: Image.Image, size: int) -> np.ndarray:
    frame = frame.convert("RGB")
    side = min(frame.size)
    left, top = (frame.width - side) // 2, (frame.height - side) // 2
    return np.asarray(frame.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR))


def read_video(path: str, num_frames: int, image_size: int) -> np.ndarray:
    """An animated image or a folder of frames -> uint8 [num_frames, S, S, 3] (evenly spaced frames)."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS))
        frames = [Image.open(os.path.join(path, n)) for n in names]
    else:
        try:
            frames = [frame.copy() for frame in ImageSequence.Iterator(Image.open(path))]
        except OSError as error:
            raise ValueError(f"{path} is not an image file that can be read ({error})") from None
    if len(frames) < num_frames:
        raise ValueError(f"{path} has {len(frames)} frame(s) but the video tower reads clips of {num_frames} frames")
    keep = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    return np.stack([_square(frames[i], image_size) for i in keep])


def list_clips(folder: str, medium: str) -> list[str]:
    """The clips of `folder` for a video or an audio tower, in name order."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--clips {folder} is not a folder")
    if medium == "audio":
        paths = [n for n in sorted(os.listdir(folder)) if n.lower().endswith(AUDIO_EXTENSIONS)]
    else:
        paths = [n for n in sorted(os.listdir(folder))
                 if n.lower().endswith(VIDEO_EXTENSIONS) or os.path.isdir(os.path.join(folder, n))]
    if not paths:
        kinds = AUDIO_EXTENSIONS if medium == "audio" else VIDEO_EXTENSIONS + ("folders of frames",)
        raise FileNotFoundError(f"no {medium} clips ({', '.join(kinds)}) in {folder}")
    return [os.path.join(folder, n) for n in paths]


def match_clips(task, params, tokenizer, config, paths: Sequence[str], texts: Sequence[str]) -> list[dict]:
    """For each clip: its texts ranked, [{"clip", "note", "ranking": [(text, cosine, probability), ...]}]."""
    import jax

    from mmjax.data.prepare import media_shapes
    from mmjax.evaluation.batching import batched_apply

    medium = task.media[0]
    shape = media_shapes(config.data)[medium]
    if medium == "audio":
        rate = task.model.encoders["audio"].spectrogram.sample_rate
        read = [read_wav(p, rate, shape[0]) for p in paths]
        clips, notes = np.stack([c for c, _ in read]), [n for _, n in read]
    else:
        clips, notes = np.stack([read_video(p, shape[0], shape[1]) for p in paths]), [""] * len(paths)
    encode = {m: jax.jit(lambda p, x, m=m: task.encode(p, m, x)) for m in (medium, "text")}
    clip_embeddings = batched_apply(lambda x: encode[medium](params, x), clips, batch_size=32)
    token_ids = tokenizer.encode_batch(list(texts), config.data.text_len)
    text_embeddings = batched_apply(lambda x: encode["text"](params, x), token_ids, batch_size=64)
    scale = float(task.model.apply({"params": params}, method=type(task.model).logit_scales)[f"{medium}_text"])
    cosines = clip_embeddings @ text_embeddings.T
    logits = scale * cosines
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    results = []
    for i, path in enumerate(paths):
        order = np.argsort(-cosines[i])
        results.append({"clip": path, "note": notes[i],
                        "ranking": [(texts[j], float(cosines[i, j]), float(probabilities[i, j])) for j in order]})
    return results


def parse_texts(texts: str | None, texts_file: str | None) -> list[str]:
    """The candidate captions: comma-separated, or one per line of a file."""
    if bool(texts) == bool(texts_file):
        raise ValueError("pass the candidate captions with exactly one of --texts or --texts_file")
    if texts_file:
        with open(texts_file, encoding="utf-8") as file:
            found = [line.strip() for line in file if line.strip()]
    else:
        found = [t.strip() for t in texts.split(",") if t.strip()]
    if not found:
        raise ValueError("no candidate captions: --texts/--texts_file is empty")
    return found


def main(argv: Sequence[str]) -> None:
    from mmjax.training.user_errors import command_main

    command_main(list(argv), lambda: _run(_FLAGS))


def _run(flags: types.SimpleNamespace) -> None:
    from mmjax.training.evaluate import load_run
    from mmjax.training.library_logs import route_library_logs

    route_library_logs("match_clips")
    texts = parse_texts(flags.texts.value, flags.texts_file.value)
    config = flags.config.value
    if config is None:
        raise ValueError("pass --config, the config file the run was trained with")
    task, params, step, tokenizer = load_run(flags.checkpoint.value, config)
    media = getattr(task, "media", ())
    if len(media) != 1:
        raise ValueError(f"the task of this config ({type(task).__name__}) is not a video-text or audio-text "
                         "model (for images, use python -m mmjax.zero_shot)")
    results = match_clips(task, params, tokenizer, config, list_clips(flags.clips.value, media[0]), texts)
    for result in results:
        note = f" ({result['note']})" if result["note"] else ""
        print(f"{os.path.basename(result['clip'])}{note}:")
        for text, cosine, probability in result["ranking"][: flags.top_k.value]:
            print(f"  {probability:6.3f}  {cosine:+.3f}  {text}")
    if flags.output.value:
        with open(flags.output.value, "w", encoding="utf-8") as file:
            json.dump({"checkpoint": flags.checkpoint.value, "step": step, "results": results}, file, indent=2)
        print(f"Scores of every text in {flags.output.value}.")


def _define_flags() -> types.SimpleNamespace:
    from absl import flags
    from ml_collections import config_flags

    return types.SimpleNamespace(
        checkpoint=flags.DEFINE_string("checkpoint", None, "A video_clip or audio_clip run folder.", required=True),
        config=config_flags.DEFINE_config_file("config", None, "The config file the run was trained with."),
        clips=flags.DEFINE_string("clips", None, "Folder of .wav files, or of animated images / frame folders.",
                                  required=True),
        texts=flags.DEFINE_string("texts", None, "Comma-separated candidate captions."),
        texts_file=flags.DEFINE_string("texts_file", None, "A file of candidate captions, one per line."),
        top_k=flags.DEFINE_integer("top_k", 3, "Texts printed per clip."),
        output=flags.DEFINE_string("output", "", "A JSON file for every clip's scores of every text."),
    )


if __name__ == "__main__":
    from absl import app

    _FLAGS = _define_flags()
    app.run(main)
