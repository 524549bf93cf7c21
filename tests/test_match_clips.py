"""The clip readers of `python -m mmjax.match_clips`: .wav files and animated images as the towers read them."""

import wave

import numpy as np
import pytest
from PIL import Image

from mmjax.match_clips import list_clips, parse_texts, read_video, read_wav


def write_wav(path, samples, rate=8000, channels=1):
    with wave.open(str(path), "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(np.asarray(samples, np.int16).tobytes())


def test_a_stereo_wav_is_averaged_to_mono_and_padded_or_cut_to_the_training_length(tmp_path):
    rng = np.random.default_rng(0)
    left, right = rng.integers(-20000, 20000, 6000), rng.integers(-20000, 20000, 6000)
    write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1).reshape(-1), channels=2)
    clip, note = read_wav(str(tmp_path / "stereo.wav"), 8000, 8000)
    assert clip.dtype == np.int16 and clip.shape == (8000,)
    np.testing.assert_array_equal(clip[:6000], np.rint((left + right) / 2).astype(np.int16))
    assert not clip[6000:].any() and note == "padded with silence to 1.00 s"
    clip, note = read_wav(str(tmp_path / "stereo.wav"), 8000, 4000)
    assert clip.shape == (4000,) and note == "cut to the first 0.50 s"


def test_a_wav_at_another_sample_rate_is_named_with_both_rates(tmp_path):
    write_wav(tmp_path / "cd.wav", np.zeros(100), rate=44100)
    with pytest.raises(ValueError, match="cd.wav is sampled at 44100 Hz but the audio tower expects 8000 Hz: "
                                         "resample it first"):
        read_wav(str(tmp_path / "cd.wav"), 8000, 8000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....not a wave file")
    with pytest.raises(ValueError, match="broken.wav is not a PCM .wav file"):
        read_wav(str(tmp_path / "broken.wav"), 8000, 8000)


def test_an_animated_image_or_a_folder_of_frames_becomes_evenly_spaced_square_frames(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(16, 8, 8, 3), dtype=np.uint8)
    images = [Image.fromarray(f).resize((40, 32), Image.NEAREST) for f in frames]  # 40 x 32: cropped to 32 x 32
    images[0].save(tmp_path / "clip.png", save_all=True, append_images=images[1:])  # an animated PNG (lossless)
    (tmp_path / "frames").mkdir()
    for i, image in enumerate(images):
        image.save(tmp_path / "frames" / f"{i:02d}.png")
    for path in (tmp_path / "clip.png", tmp_path / "frames"):
        clip = read_video(str(path), 8, 16)
        assert clip.shape == (8, 16, 16, 3) and clip.dtype == np.uint8
        # frames 0, 2, ..., 15 (evenly spaced), each the centre square, halved
        for k, i in enumerate(np.linspace(0, 15, 8).round().astype(int)):
            np.testing.assert_array_equal(clip[k], np.asarray(images[i].crop((4, 0, 36, 32)).resize((16, 16), Image.BILINEAR)))
    with pytest.raises(ValueError, match="has 16 frame\\(s\\) but the video tower reads clips of 32 frames"):
        read_video(str(tmp_path / "clip.png"), 32, 16)


def test_clip_folders_and_captions_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no audio clips \\(.wav\\) in"):
        list_clips(str(tmp_path), "audio")
    write_wav(tmp_path / "b.wav", np.zeros(10))
    write_wav(tmp_path / "a.wav", np.zeros(10))
    assert [p.split("/")[-1] for p in list_clips(str(tmp_path), "audio")] == ["a.wav", "b.wav"]
    assert parse_texts(" a long low beep , a short high hiss,", None) == ["a long low beep", "a short high hiss"]
    with pytest.raises(ValueError, match="exactly one of --texts or --texts_file"):
        parse_texts(None, None)
