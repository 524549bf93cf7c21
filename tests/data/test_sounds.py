"""Tests of the `sounds` world: determinism, truth of captions against the waveform, splits."""

import dataclasses
import functools
import re

import jax
import numpy as np
import pytest

from mmjax.data import sounds as S
from mmjax.data.audio import SpectrogramConfig, log_mel_spectrogram

CONFIG = S.SoundsConfig()  # 8 kHz, 1 s
RATE = CONFIG.sample_rate
NUM_PER_SPLIT = 100


@functools.cache
def examples(split: str, num: int = NUM_PER_SPLIT, config: S.SoundsConfig = CONFIG) -> list[dict]:
    return [S.generate_example(config, split, i) for i in range(num)]


def all_examples() -> list[dict]:
    return [ex for split in S.SPLITS for ex in examples(split)]


def in_time_order(scene: S.SoundScene) -> list[S.SoundEvent]:
    return sorted(scene.events, key=lambda e: e.start)


# --- A small independent analyser: what a listener can tell from the waveform alone ---------------
# It knows what the world promises (two pitches, 400 and 1200 Hz; short is about 0.1 s, long about
# 0.25 s; five kinds) but none of its synthesis code.

_FRAME = 40  # 5 ms at 8 kHz: the envelope's resolution
_LOUD = 0.02  # frame RMS above this is an event: 22 dB over the noise floor, 17 dB under a hiss
_BRIDGE = 4  # quiet runs of <= 4 frames (20 ms) inside an event are dips of a hiss, not gaps
_TRIM = 80  # 10 ms cut from both ends of an event before its spectrum is taken (the fades)


def find_events(x: np.ndarray) -> list[tuple[int, int]]:
    """[(first sample, end sample)] of each loud stretch of a float waveform, in time order."""
    num_frames = len(x) // _FRAME
    rms = np.sqrt((x[: num_frames * _FRAME].reshape(num_frames, _FRAME) ** 2).mean(axis=1))
    runs: list[list[int]] = []
    for frame in np.flatnonzero(rms > _LOUD):
        if runs and frame - runs[-1][1] <= _BRIDGE + 1:
            runs[-1][1] = frame
        else:
            runs.append([frame, frame])
    return [(first * _FRAME, (last + 1) * _FRAME) for first, last in runs]


def _band_power(power: np.ndarray, freqs: np.ndarray, centre: float, half_width: float) -> float:
    return float(power[np.abs(freqs - centre) < half_width].sum())


def frequency_track(segment: np.ndarray) -> np.ndarray:
    """The peak frequency of 16 ms Hann windows every 4 ms (zero-padded FFT, ~2 Hz steps)."""
    length, hop, n_fft = 128, 32, 4096
    freqs = np.fft.rfftfreq(n_fft, 1 / RATE)
    window = np.hanning(length)
    track = []
    for start in range(0, len(segment) - length + 1, hop):
        power = np.abs(np.fft.rfft(segment[start : start + length] * window, n_fft)) ** 2
        track.append(freqs[np.argmax(power)])
    return np.array(track)


def describe(segment: np.ndarray) -> dict[str, float]:
    """The statistics that tell the kinds and pitches apart, of one event's (trimmed) samples."""
    # the whole segment's spectrum: its strongest frequency and the power at 3 times it
    n_fft = 1 << int(np.ceil(np.log2(8 * len(segment))))
    power = np.abs(np.fft.rfft(segment * np.hanning(len(segment)), n_fft)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1 / RATE)
    dominant = float(freqs[np.argmax(power)])
    third = _band_power(power, freqs, 3 * dominant, 40) / _band_power(power, freqs, dominant, 40)
    # noise has a fluctuating envelope, a tone (of any frequency track) a flat one
    num_frames = len(segment) // _FRAME
    rms = np.sqrt((segment[: num_frames * _FRAME].reshape(num_frames, _FRAME) ** 2).mean(axis=1))
    # how the peak frequency moves over time
    track = frequency_track(segment)
    steps = np.arange(len(track))
    slope, intercept = np.polyfit(steps, track, 1)
    residual = ((slope * steps + intercept - track) ** 2).sum()
    variance = ((track - track.mean()) ** 2).sum()
    low_level = np.percentile(track, 10)
    at_low = np.abs(track / low_level - 1) < 0.03
    at_high = np.abs(track / (1.25 * low_level) - 1) < 0.03
    return {
        "dominant_hz": dominant,
        "third_harmonic": third,  # power at 3f over power at f
        "envelope_variation": float(rms.std() / rms.mean()),
        "track_spread": float(np.percentile(track, 90) / low_level),
        "track_linearity": float(1 - residual / variance) if variance > 0 else 0.0,
        "track_slope": float(slope),
        "at_two_levels": float((at_low | at_high).mean()),
        "at_rarer_level": float(min(at_low.mean(), at_high.mean())),
    }


def classify(stats: dict[str, float]) -> str:
    """The kind a segment's statistics show, each by its own evidence; "unknown" if none fits."""
    if stats["envelope_variation"] > 0.08:
        return "hiss"  # (measured: >= 0.17 for a hiss, <= 0.03 for the tones)
    if stats["track_spread"] < 1.05:  # one steady frequency
        return "buzz" if stats["third_harmonic"] > 0.03 else "beep"  # a buzz's is 1/9
    if stats["track_linearity"] > 0.9 and stats["track_slope"] > 0:
        return "whistle"  # a steady rise
    if stats["at_two_levels"] > 0.6 and stats["at_rarer_level"] > 0.2:
        return "trill"  # two frequencies 1.25 apart, both held often
    return "unknown"


def analyse(audio: np.ndarray) -> tuple[str, list[tuple[int, int]]]:
    """(the scene key the waveform shows, the event spans it found) of an int16 clip."""
    x = audio.astype(np.float64) / 32767
    spans = find_events(x)
    items = []
    for first, end in spans:
        duration = "short" if (end - first) / RATE < 0.175 else "long"
        stats = describe(x[first + _TRIM : end - _TRIM])
        pitch = "low" if stats["dominant_hz"] < 720 else "high"  # low sounds < 600, high > 850
        items.append(f"{duration}:{pitch}:{classify(stats)}")
    return "|".join(items), spans


# --- Determinism ----------------------------------------------------------------------------------


@pytest.mark.parametrize("split", S.SPLITS)
def test_same_seed_gives_same_bytes(split):
    for index in (0, 1, 17):
        a, b = S.generate_example(CONFIG, split, index), S.generate_example(CONFIG, split, index)
        assert a["audio"].tobytes() == b["audio"].tobytes()
        for key in ("captions", "scene", "scene_key", "label"):
            assert a[key] == b[key]
        for key in S.EVENT_FIELDS:
            assert a[key].tobytes() == b[key].tobytes()


def test_different_seed_or_index_gives_different_examples():
    other = dataclasses.replace(CONFIG, seed=1)
    for index in range(5):
        a, b = S.generate_example(CONFIG, "train", index), S.generate_example(other, "train", index)
        assert a["audio"].tobytes() != b["audio"].tobytes()
        assert a["captions"] != b["captions"]
    clips = [ex["audio"].tobytes() for ex in examples("train")]
    assert len(set(clips)) == len(clips)
    keys = [ex["scene_key"] for ex in examples("train")[:50]]
    assert len(set(keys)) > 40


def test_known_example_is_stable():
    """A fingerprint of example 0's scene and text (equal on every machine; the waveform's bytes
    may differ in the last bit between machines, so they are not fingerprinted)."""
    example = S.generate_example(CONFIG, "train", 0)
    assert example["scene_key"] == "long:high:buzz|short:low:hiss|long:low:beep"
    assert example["captions"][0] == (
        "a lengthy high buzz and then a quick low hiss, then a lengthy deep beep"
    )


def test_scenes_do_not_depend_on_sample_rate():
    config = dataclasses.replace(CONFIG, sample_rate=16_000)
    for index in range(3):
        example = S.generate_example(config, "test", index)
        assert example["audio"].shape == (16_000,)
        assert example["scene"] == examples("test")[index]["scene"]
        assert example["captions"] == examples("test")[index]["captions"]


# --- Structure ------------------------------------------------------------------------------------


def test_example_has_documented_fields_and_types():
    for ex in examples("train")[:20]:
        n = len(ex["scene"].events)
        assert CONFIG.min_events <= n <= CONFIG.max_events
        assert ex["audio"].dtype == np.int16 and ex["audio"].shape == (CONFIG.num_samples,)
        assert len(ex["captions"]) == CONFIG.num_captions
        assert ex["scene_key"] == ex["scene"].key()
        for key in ("event_kind", "event_pitch", "event_duration"):
            assert ex[key].dtype == np.int64 and ex[key].shape == (n,)
        for key in ("event_start", "event_length"):
            assert ex[key].dtype == np.float32 and ex[key].shape == (n,)
    assert CONFIG.num_samples == 8000


def test_events_are_in_order_fit_the_clip_and_have_their_durations():
    for ex in all_examples():
        events = in_time_order(ex["scene"])
        assert list(ex["event_start"]) == sorted(ex["event_start"])
        assert events[0].start >= 0 and events[-1].start + events[-1].length <= 1.0
        for before, after in zip(events, events[1:]):
            gap = after.start - (before.start + before.length)
            assert 0.04 - 1e-9 <= gap <= 0.08 + 1e-9
        for event in events:
            nominal = (0.10, 0.25)[event.duration]
            assert abs(event.length / nominal - 1) <= 0.1 + 1e-9


def test_scene_from_arrays_rebuilds_the_scene():
    for ex in all_examples():
        rebuilt = S.scene_from_arrays(ex)
        assert rebuilt.key() == ex["scene_key"]
        for a, b in zip(rebuilt.events, in_time_order(ex["scene"])):
            assert (a.kind, a.pitch, a.duration) == (b.kind, b.pitch, b.duration)
            assert abs(a.start - b.start) < 1e-6 and abs(a.length - b.length) < 1e-6


def test_class_names_follow_class_id_and_label_is_the_first_event():
    names = S.class_names()
    assert len(names) == 10 == len(set(names))
    assert names[S.class_id(S.KIND_NAMES.index("hiss"), S.PITCH_NAMES.index("high"))] == "high hiss"
    for ex in all_examples():
        first = in_time_order(ex["scene"])[0]
        assert names[ex["label"]] == f"{S.PITCH_NAMES[first.pitch]} {S.KIND_NAMES[first.kind]}"


def test_scene_key_is_in_time_order_and_ignores_exact_times():
    scene = next(ex["scene"] for ex in examples("train") if len(ex["scene"].events) > 1)
    shuffled = S.SoundScene(tuple(reversed(scene.events)))
    shifted = S.SoundScene(
        tuple(dataclasses.replace(e, start=e.start + 0.003) for e in scene.events)
    )
    assert scene.key() == shuffled.key() == shifted.key()
    beep = S.SoundEvent(kind=0, pitch=1, duration=0, start=0.1, length=0.1)
    hiss = S.SoundEvent(kind=3, pitch=0, duration=1, start=0.3, length=0.25)
    beep_then_hiss = S.SoundScene((hiss, beep))
    assert beep_then_hiss.key() == "short:high:beep|long:low:hiss"


# --- The waveform agrees with the truth -----------------------------------------------------------


@pytest.mark.parametrize("split", S.SPLITS)
def test_analysed_waveform_shows_the_captioned_scene(split):
    for ex in examples(split):
        heard, spans = analyse(ex["audio"])
        for caption in ex["captions"]:
            assert heard == S.parse_caption(caption), (caption, heard)
        # and the events are where the scene says (to the envelope's 5 ms frames and the fades)
        for (first, end), event in zip(spans, in_time_order(ex["scene"])):
            assert abs(first / RATE - event.start) <= 0.010, (ex["scene_key"], event)
            assert abs((end - first) / RATE - event.length) <= 0.015, (ex["scene_key"], event)


def test_clip_is_its_clean_rendering_plus_a_quiet_floor():
    for ex in examples("validation")[:30]:
        clean = S.render_sound(ex["scene"], RATE, CONFIG.num_samples)
        assert clean.dtype == np.float32 and np.abs(clean).max() <= 0.5 + 1e-6
        floor = ex["audio"] / 32767 - clean
        assert 0.001 < floor.std() < 0.0025  # -50 dB under the 0.5 peak: 0.0016
        assert np.abs(floor).max() < 0.015
        # silence outside the events
        assert np.all(clean[: int(in_time_order(ex["scene"])[0].start * RATE)] == 0)


def test_render_sound_rejects_events_outside_the_clip_and_low_rates():
    late = S.SoundScene((S.SoundEvent(0, 0, 1, 0.9, 0.25),))
    with pytest.raises(ValueError, match="outside the clip of 8000"):
        S.render_sound(late, RATE, 8000)
    with pytest.raises(ValueError, match="sample_rate must be >= 8000"):
        S.render_sound(late, 4000, 8000)


def test_log_mel_spectrogram_shows_energy_at_the_events_only():
    """The world is readable through the audio front end: frames whose window lies inside an event
    are far louder than frames whose window lies in silence."""
    config = SpectrogramConfig(sample_rate=RATE, n_fft=256, hop_length=125, n_mels=32)
    batch = examples("test")[:20]
    audio = np.stack([ex["audio"] for ex in batch]).astype(np.float32) / 32767
    log_mel = np.asarray(jax.jit(lambda x: log_mel_spectrogram(x, config, RATE))(audio))
    assert log_mel.shape == (20, config.num_frames(8000), 32)
    frame_db = 10 * np.log10((10 ** (log_mel / 10)).sum(-1))  # [clips, frames] total power
    inside, outside = [], []
    for ex, db in zip(batch, frame_db):
        spans = [
            (int(e.start * RATE), int((e.start + e.length) * RATE)) for e in ex["scene"].events
        ]
        covered_by_event = []
        for frame in range(len(db)):
            lo, hi = frame * 125 - 128, frame * 125 + 128  # the frame's window
            if any(first + 40 <= lo and hi <= end - 40 for first, end in spans):
                inside.append(db[frame])
                covered_by_event.append(frame)
            elif all(hi <= first or end <= lo for first, end in spans) and 0 <= lo and hi <= 8000:
                outside.append(db[frame])
        # every event has frames of its own
        assert len(covered_by_event) >= 2 * len(spans) - 1
    assert len(outside) > 20
    assert min(inside) > max(outside) + 25, (min(inside), max(outside))


# --- Captions -------------------------------------------------------------------------------------


def test_every_caption_parses_back_to_the_scene_key_and_captions_differ():
    for ex in all_examples():
        assert len(set(ex["captions"])) == len(ex["captions"]) == CONFIG.num_captions
        for caption in ex["captions"]:
            assert S.parse_caption(caption) == ex["scene_key"], caption


def test_one_event_allows_twenty_different_captions():
    rng = np.random.default_rng(0)
    for duration in (0, 1):
        scene = S.SoundScene((S.SoundEvent(0, 0, duration, 0.1, 0.1),))
        captions = S.make_captions(scene, 20, rng)
        assert len(set(captions)) == 20
        assert {S.parse_caption(c) for c in captions} == {scene.key()}
    with pytest.raises(RuntimeError, match="only 24 different captions"):
        S.make_captions(S.SoundScene((S.SoundEvent(0, 0, 1, 0.1, 0.25),)), 25, rng)


def test_captions_vary_words_joiners_and_templates():
    captions = [c for ex in examples("train") for c in ex["captions"]]
    text = " ".join(captions)
    for words in S.DURATION_WORDS + S.PITCH_WORDS:
        for word in words:
            assert f" {word} " in f" {text} ", word
    for joiner in S.EVENT_JOINERS:
        assert joiner in text, joiner
    for template in S.CAPTION_TEMPLATES:
        prefix = template.split("{events}")[0]
        assert any(c.startswith(prefix) for c in captions), template


def test_parse_caption_tolerates_case_and_full_stop_and_rejects_others():
    assert S.parse_caption("A Short Shrill Beep, then a LONG deep hiss.") == (
        "short:high:beep|long:low:hiss"
    )
    assert S.parse_caption("the sound of a brief low-pitched trill") == "short:low:trill"
    assert S.parse_caption("a short high beep") == "short:high:beep"
    assert S.parse_caption("a short high honk") is None
    assert S.parse_caption("a high beep") is None
    assert S.parse_caption("a short high beep and a long low hiss") is None
    assert S.parse_caption("") is None


# --- Splits ---------------------------------------------------------------------------------------


def _pairs(scene: S.SoundScene) -> set[tuple[str, str]]:
    return {(S.PITCH_NAMES[e.pitch], S.KIND_NAMES[e.kind]) for e in scene.events}


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_heldout_pairs_never_appear_outside_compositional_test(split):
    heldout = set(CONFIG.heldout_pairs)
    for ex in examples(split):
        assert not _pairs(ex["scene"]) & heldout
        assert S.split_of_scene(ex["scene"], CONFIG) == split
        text = " | ".join(ex["captions"])
        for pitch, kind in heldout:
            for word in S.PITCH_WORDS[S.PITCH_NAMES.index(pitch)]:
                assert f"{word} {kind}" not in text


def test_every_compositional_test_scene_has_a_heldout_pair():
    heldout = set(CONFIG.heldout_pairs)
    for ex in examples("compositional_test"):
        assert _pairs(ex["scene"]) & heldout
        assert S.split_of_scene(ex["scene"], CONFIG) == "compositional_test"


def test_no_scene_key_is_shared_between_splits():
    keys = {split: {ex["scene_key"] for ex in examples(split)} for split in S.SPLITS}
    for i, a in enumerate(S.SPLITS):
        for b in S.SPLITS[i + 1 :]:
            assert not keys[a] & keys[b], (a, b)
    # single-event scenes are few (16 outside the held-out pairs), so training repeats them
    assert any(len(ex["scene"].events) == 1 for ex in examples("train"))


# --- Config validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        ({"sample_rate": 4000}, "sample_rate", "4000"),
        ({"sample_rate": 8000.0}, "sample_rate", "8000.0"),
        ({"clip_seconds": "1"}, "clip_seconds", "'1'"),
        ({"clip_seconds": 0.2}, "clip_seconds", "0.2"),
        ({"min_events": 0}, "min_events", "0"),
        ({"min_events": 3, "max_events": 2}, "max_events", "2"),
        ({"max_events": 9}, "max_events", "9"),
        ({"clip_seconds": 0.5, "max_events": 2}, "max_events", "2"),
        ({"num_captions": 0}, "num_captions", "0"),
        ({"num_captions": 21}, "num_captions", "21"),
        ({"seed": -1}, "seed", "-1"),
        ({"seed": True}, "seed", "True"),
        ({"heldout_pairs": (("medium", "beep"),)}, "heldout_pairs", "medium"),
        ({"heldout_pairs": (("low", "honk"),)}, "heldout_pairs", "honk"),
        ({"heldout_pairs": (("low", "beep"), ("low", "beep"))}, "heldout_pairs", "duplicates"),
    ],
)
def test_config_validation_names_field_expected_and_value(kwargs, field, value):
    with pytest.raises(ValueError, match=rf"SoundsConfig\.{field} must be .*{re.escape(value)}"):
        S.SoundsConfig(**kwargs)


def test_max_events_error_says_what_fits():
    with pytest.raises(ValueError, match=r"max_events must be in \[min_events=1, 3\].*got 9"):
        S.SoundsConfig(max_events=9)
    # a longer clip holds more: 5 events of up to 0.275 s and 4 gaps of up to 0.08 s fit in 2 s
    assert S.SoundsConfig(clip_seconds=2.0, max_events=5).num_samples == 16_000
    with pytest.raises(ValueError, match="max_events"):
        S.SoundsConfig(clip_seconds=2.0, max_events=6)


def test_config_accepts_lists_and_a_longer_clip_gets_more_events():
    config = S.SoundsConfig(heldout_pairs=[["high", "trill"]], clip_seconds=2.0, max_events=5)
    assert config.heldout_pairs == (("high", "trill"),)
    counts = {len(S.generate_example(config, "train", i)["scene"].events) for i in range(40)}
    assert counts == {1, 2, 3, 4, 5}
    for i in range(5):
        ex = S.generate_example(config, "compositional_test", i)
        assert ("high", "trill") in _pairs(ex["scene"])
        assert analyse(ex["audio"])[0] == ex["scene_key"]
