"""The `sounds` world: synthetic audio clips whose every caption is true by construction.

A clip is 1 to 3 sound events in sequence, separated by short silences, over a quiet noise floor:

    amplitude
      0.5 |        ______           _______________           _______
          |       | beep |         | long low hiss |         | trill |
        0 +-------+------+---------+---------------+---------+-------+-----------> time
          0 offset       gap 40-80 ms                                          1 s

    each event: kind      (beep, buzz, whistle, hiss, trill)
                pitch     (low: 400 Hz, high: 1200 Hz; the base frequency f)
                duration  (short: 0.10 s, long: 0.25 s, each +-10%)
                start     (in seconds; events never overlap and the order matters)

The five kinds, each synthesised from its base frequency f:

    beep      a pure sine tone at f
    buzz      a band-limited square wave: the odd harmonics k·f below the Nyquist frequency, with
              amplitudes 1/k (so it has energy at 3f, 9.5 dB below the fundamental)
    whistle   a sine sweeping linearly from f up to 1.5 f
    hiss      white noise band-passed to [f / 1.4, 1.4 f] (an FFT mask)
    trill     a sine alternating between f and 1.25 f every 25 ms

Tones use phase-continuous synthesis: the phase is the running sum of the instantaneous
frequency, so a sweep or a trill's jumps make no clicks. Every event is scaled to a peak of 0.5
and faded in and out linearly over 5 ms; the background is Gaussian noise 50 dB below that peak.
The high pitch is 1200 Hz, not higher, so that a high buzz keeps its third harmonic (3600 Hz)
below the 4 kHz Nyquist frequency of 8 kHz audio; every other partial lies below it too.

As in the `shapes` world (`mmjax.data.shapes`), the program that makes the sound also writes the
text, so a caption such as "a short high beep then a long low hiss" is exactly right. One call,
`generate_example(config, split, index)`, makes (n = number of events, N = config.num_samples)

    audio           int16   [N]             the clip at config.sample_rate Hz (1.0 = 32767)
    captions        list[str], num_captions different phrasings of the whole clip
    scene           SoundScene              the structured truth (events with times)
    scene_key       str                     canonical description: equal keys = the same scene
    label           int                     class id (kind, pitch) of the first event
    event_kind      int64   [n]             index into KIND_NAMES, per event in time order
    event_pitch     int64   [n]             index into PITCH_NAMES
    event_duration  int64   [n]             index into DURATION_NAMES
    event_start     float32 [n]             seconds from the clip's start
    event_length    float32 [n]             the event's actual length in seconds

(the event arrays are the scene in a storable form; `scene_from_arrays` rebuilds it). It is pure
NumPy; `mmjax.data.audio.log_mel_spectrogram` turns the clip into what an audio tower reads.

Determinism. An example is a function of (config.seed, split, index) only: its random generator is
seeded with `np.random.SeedSequence([seed, split_id, index])`. Scenes and captions use only integer
draws, uniform floats and IEEE-exact arithmetic (`+ - * /`), so they are equal on every machine.
The waveform also uses `sin` from the C math library (and FFTs), whose results may differ in the
last bit between machines: its bytes are equal on one machine, not necessarily across machines.
Scenes (and so captions) do not depend on `sample_rate`: 8 and 16 kHz datasets hold the same
scenes at different rates.

Splits. Every scene key belongs to exactly one split (the rule of `shapes.split_of_scene`):
  - a scene holding one of `config.heldout_pairs` (a pitch-kind combination such as "high hiss")
    belongs to `compositional_test`; those pairs never appear in the other splits' clips or
    captions, so this split measures generalisation to new combinations;
  - any other scene goes to `train` (80%), `validation` (10%) or `test` (10%) by a stable hash
    (SHA-256, `shapes.scene_bucket`) of its key.
Sampling for a split draws scenes until one falls in that split.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmjax.data import shapes
from mmjax.data.shapes import SPLITS  # noqa: F401 (this world has the same splits)

# --- Vocabulary -----------------------------------------------------------------------------------

KIND_NAMES = ("beep", "buzz", "whistle", "hiss", "trill")
PITCH_NAMES = ("low", "high")
DURATION_NAMES = ("short", "long")

# --- Caption grammar: the words a caption may use for each property ------------------------------

DURATION_WORDS = (("short", "brief", "quick"), ("long", "lengthy"))
PITCH_WORDS = (("low", "deep", "low-pitched"), ("high", "high-pitched", "shrill"))
# Between two events, in time order: "a short high beep, then a long low hiss".
EVENT_JOINERS = (" then ", ", then ", " followed by ", " and then ")
# "{events}" is replaced by the joined event phrases.
CAPTION_TEMPLATES = (
    "{events}",
    "the sound of {events}",
    "you can hear {events}",
    "a recording of {events}",
)

# --- Synthesis and timing -------------------------------------------------------------------------

PITCH_HZ = (400.0, 1200.0)  # base frequency f, per pitch: low, high
DURATION_SECONDS = (0.10, 0.25)  # nominal length, per duration: short, long
_LENGTH_JITTER = 0.10  # an event's actual length is its nominal one times 1 +- this
_GAP_SECONDS = (0.04, 0.08)  # silence between two events, drawn uniformly
_FADE_SECONDS = 0.005  # linear fade in and out of every event
_PEAK = 0.5  # every event's peak amplitude (before the fades)
_NOISE_STD = _PEAK * 10 ** (-50 / 20)  # the background floor, 50 dB below an event's peak
_WHISTLE_RATIO = 1.5  # a whistle sweeps f -> 1.5 f
_TRILL_RATIO, _TRILL_SECONDS = 1.25, 0.025  # a trill alternates f, 1.25 f, f, ... every 25 ms
_HISS_WIDTH = 1.4  # a hiss's band is [f / 1.4, 1.4 f]
# The lowest rate at which every partial lies below the Nyquist frequency (a high buzz has energy
# at 3 x 1200 = 3600 Hz).
_MIN_SAMPLE_RATE = 8000
_LONGEST = DURATION_SECONDS[1] * (1 + _LENGTH_JITTER)  # the longest an event can be


# --- Data types -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SoundEvent:
    """One event: indices into KIND_NAMES, PITCH_NAMES, DURATION_NAMES, and its time in seconds.

    `duration` is the category (short or long); `length` the actual seconds it lasts (the nominal
    DURATION_SECONDS[duration] +-10%). The event sounds over [start, start + length).
    """

    kind: int
    pitch: int
    duration: int
    start: float
    length: float

    def item(self) -> str:
        """This event's part of the scene key: "duration:pitch:kind", e.g. "short:high:beep"."""
        return _item(self.duration, self.pitch, self.kind)


@dataclasses.dataclass(frozen=True)
class SoundScene:
    """The structured truth of one clip: its events (non-overlapping)."""

    events: tuple[SoundEvent, ...]

    def key(self) -> str:
        """Canonical description of the clip's content: "duration:pitch:kind" per event.

        e.g. "short:high:beep|long:low:hiss" (events in time order).

        Independent of exact start times, lengths and noise: two scenes are the same scene (for
        retrieval, split assignment, caption parsing) iff their keys are equal.
        """
        return "|".join(e.item() for e in sorted(self.events, key=lambda e: e.start))


def _item(duration: int, pitch: int, kind: int) -> str:
    return f"{DURATION_NAMES[duration]}:{PITCH_NAMES[pitch]}:{KIND_NAMES[kind]}"


_require = shapes.field_check("SoundsConfig")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def max_events_that_fit(clip_seconds: float) -> int:
    """The most events a clip can hold when all are as long as possible, with the longest gaps."""
    longest, gap = _LONGEST, _GAP_SECONDS[1]
    return int((clip_seconds + gap) // (longest + gap))


@dataclasses.dataclass(frozen=True)
class SoundsConfig:
    """What a `sounds` dataset contains. Defaults give the standard benchmark."""

    # Samples per second of the clips (>= 8000, so that every partial is below Nyquist).
    sample_rate: int = 8000
    # Length of every clip in seconds.
    clip_seconds: float = 1.0
    # Events per clip, drawn uniformly from [min_events, max_events]; max_events long events and
    # the longest gaps between them must fit in the clip.
    min_events: int = 1
    max_events: int = 3
    # Different phrasings of the whole clip per example.
    num_captions: int = 5
    # (pitch, kind) combinations that appear only in the `compositional_test` split.
    heldout_pairs: tuple[tuple[str, str], ...] = (("high", "hiss"), ("low", "whistle"))
    # Seed of the whole dataset: every example is a function of (seed, split, index).
    seed: int = 0

    def __post_init__(self):
        # accept lists too (e.g. from a config file), store hashable tuples
        pairs = tuple(tuple(pair) for pair in self.heldout_pairs)
        object.__setattr__(self, "heldout_pairs", pairs)
        for field in ("sample_rate", "min_events", "max_events", "num_captions", "seed"):
            _require(_is_int(getattr(self, field)), field, "an int", getattr(self, field))
        _require(
            self.sample_rate >= _MIN_SAMPLE_RATE,
            "sample_rate",
            f">= {_MIN_SAMPLE_RATE} (a high buzz has energy at 3600 Hz, below Nyquist)",
            self.sample_rate,
        )
        clip = self.clip_seconds
        _require(
            isinstance(clip, (int, float)) and not isinstance(clip, bool),
            "clip_seconds",
            "a number",
            clip,
        )
        _require(
            _LONGEST <= clip <= 60,
            "clip_seconds",
            f"in [{_LONGEST:g}, 60] (room for one long event)",
            clip,
        )
        fit = max_events_that_fit(clip)
        _require(1 <= self.min_events <= fit, "min_events", f"in [1, {fit}]", self.min_events)
        _require(
            self.min_events <= self.max_events <= fit,
            "max_events",
            f"in [min_events={self.min_events}, {fit}] ({fit} long events of up to "
            f"{_LONGEST:g} s with gaps of up to {_GAP_SECONDS[1]:g} s fit in clip_seconds={clip})",
            self.max_events,
        )
        _require(1 <= self.num_captions <= 20, "num_captions", "in [1, 20]", self.num_captions)
        _require(self.seed >= 0, "seed", "an int >= 0", self.seed)
        for pair in pairs:
            _require(len(pair) == 2, "heldout_pairs", "made of (pitch, kind) pairs", pair)
            _require(pair[0] in PITCH_NAMES, "heldout_pairs", f"pitches in {PITCH_NAMES}", pair)
            _require(pair[1] in KIND_NAMES, "heldout_pairs", f"kinds in {KIND_NAMES}", pair)
        _require(len(set(pairs)) == len(pairs), "heldout_pairs", "free of duplicates", pairs)
        _require(
            len(pairs) < len(PITCH_NAMES) * len(KIND_NAMES),
            "heldout_pairs",
            "fewer than all 10 pitch-kind pairs",
            len(pairs),
        )

    @property
    def num_samples(self) -> int:
        """Samples per clip: round(sample_rate * clip_seconds)."""
        return round(self.sample_rate * self.clip_seconds)

    @property
    def heldout_ids(self) -> frozenset[tuple[int, int]]:
        """The held-out pairs as (pitch index, kind index)."""
        return frozenset((PITCH_NAMES.index(p), KIND_NAMES.index(k)) for p, k in self.heldout_pairs)


# --- Classes (zero-shot classification labels) ----------------------------------------------------


def class_id(kind: int, pitch: int) -> int:
    """Class of a (kind, pitch) pair: kind * len(PITCH_NAMES) + pitch."""
    return kind * len(PITCH_NAMES) + pitch


def class_names() -> list[str]:
    """Text name of every class, e.g. class_names()[class_id(0, 1)] == "high beep" (10 classes)."""
    return [f"{pitch} {kind}" for kind in KIND_NAMES for pitch in PITCH_NAMES]


def scene_label(scene: SoundScene) -> int:
    """Class of the first event in time."""
    first = min(scene.events, key=lambda e: e.start)
    return class_id(first.kind, first.pitch)


# --- Splits ---------------------------------------------------------------------------------------


def split_of_scene(scene: SoundScene, config: SoundsConfig) -> str:
    """The one split a scene belongs to (see the module docstring)."""
    heldout = config.heldout_ids
    return shapes.split_of_key(scene.key(), any((e.pitch, e.kind) in heldout for e in scene.events))


# --- Sampling -------------------------------------------------------------------------------------


def sample_scene(
    config: SoundsConfig, rng: np.random.Generator, with_heldout: bool = False
) -> SoundScene:
    """A random scene: pitch-kind pairs outside the held-out ones, or (with_heldout) with >= 1.

    Each event gets a duration and a length within +-10% of it; consecutive events are separated by
    a gap of 40 to 80 ms, and the whole sequence starts at a random offset that keeps it inside
    the clip (always possible: the config checks that max_events longest events fit).
    """
    num_events = int(rng.integers(config.min_events, config.max_events + 1))
    heldout = sorted(config.heldout_ids)
    allowed = [
        (p, k)
        for p in range(len(PITCH_NAMES))
        for k in range(len(KIND_NAMES))
        if (p, k) not in heldout
    ]
    if with_heldout and not heldout:
        raise ValueError("the compositional_test split needs SoundsConfig.heldout_pairs; got none")
    # Which event shows a held-out pair (if asked for); the others are drawn from every pair.
    forced = int(rng.integers(num_events)) if with_heldout else -1
    drawn = []
    for i in range(num_events):
        if i == forced:
            pitch, kind = heldout[int(rng.integers(len(heldout)))]
        elif with_heldout:
            pitch, kind = int(rng.integers(len(PITCH_NAMES))), int(rng.integers(len(KIND_NAMES)))
        else:
            pitch, kind = allowed[int(rng.integers(len(allowed)))]
        duration = int(rng.integers(len(DURATION_NAMES)))
        length = DURATION_SECONDS[duration] * (1 + _LENGTH_JITTER * (2 * rng.random() - 1))
        drawn.append((kind, pitch, duration, length))
    low, high = _GAP_SECONDS
    gaps = [low + (high - low) * rng.random() for _ in range(num_events - 1)]
    total = sum(length for *_, length in drawn) + sum(gaps)
    start = (config.clip_seconds - total) * rng.random()
    events = []
    for i, (kind, pitch, duration, length) in enumerate(drawn):
        events.append(SoundEvent(kind, pitch, duration, float(start), float(length)))
        start += length + (gaps[i] if i < len(gaps) else 0.0)
    return SoundScene(tuple(events))


# --- Rendering ------------------------------------------------------------------------------------


def _event_span(event: SoundEvent, sample_rate: int) -> tuple[int, int]:
    """The samples [first, end) an event sounds over."""
    first = int(np.floor(event.start * sample_rate))
    end = int(np.floor((event.start + event.length) * sample_rate))
    return first, end


def _event_wave(event: SoundEvent, first: int, num: int, sample_rate: int) -> np.ndarray:
    """The event's `num` samples (float64, peak _PEAK, faded), before the background noise."""
    f = PITCH_HZ[event.pitch]
    kind = KIND_NAMES[event.kind]
    n = np.arange(num)
    if kind == "hiss":
        # its own generator, seeded by where it sounds: the clean rendering is a function of the
        # scene alone
        noise_rng = np.random.default_rng(np.random.SeedSequence([first, num, event.pitch]))
        spectrum = np.fft.rfft(noise_rng.standard_normal(num))
        frequencies = np.fft.rfftfreq(num, 1.0 / sample_rate)
        spectrum[(frequencies < f / _HISS_WIDTH) | (frequencies > f * _HISS_WIDTH)] = 0.0
        wave = np.fft.irfft(spectrum, n=num)
    else:
        # instantaneous frequency per sample, then phase = 2 pi * its running sum / sample_rate
        if kind == "whistle":
            frequency = f * (1 + (_WHISTLE_RATIO - 1) * n / max(num - 1, 1))
        elif kind == "trill":
            step = round(_TRILL_SECONDS * sample_rate)
            frequency = np.where((n // step) % 2 == 0, f, _TRILL_RATIO * f)
        else:
            frequency = np.full(num, f)
        phase = 2 * np.pi * np.concatenate([[0.0], np.cumsum(frequency[:-1])]) / sample_rate
        if kind == "buzz":
            # odd harmonics below Nyquist, amplitude 1/k: a band-limited square wave
            top = int(sample_rate / (2 * f))
            harmonics = [k for k in range(1, top + 1, 2) if k * f < sample_rate / 2]
            wave = sum(np.sin(k * phase) / k for k in harmonics)
        else:
            wave = np.sin(phase)
    peak = np.max(np.abs(wave))
    if peak > 0:  # (a hiss of a few samples can have no frequency inside its band)
        wave = wave * (_PEAK / peak)
    # linear fades, symmetric: sample i gets min(1, (i + 0.5) / fade, (num - i - 0.5) / fade)
    fade = _FADE_SECONDS * sample_rate
    envelope = np.minimum(1.0, np.minimum(n + 0.5, num - n - 0.5) / fade)
    return wave * envelope


def render_sound(
    scene: SoundScene,
    sample_rate: int,
    num_samples: int,
    noise_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Synthesises `scene` -> float32 [num_samples] in [-1, 1].

    Events (see the module docstring) have a peak of 0.5 and sound over the samples
    [floor(start * rate), floor((start + length) * rate)); elsewhere the clip is silent, or (when
    `noise_rng` is given) a Gaussian noise floor 50 dB below the events' peak.
    """
    if sample_rate < _MIN_SAMPLE_RATE:
        raise ValueError(
            f"sample_rate must be >= {_MIN_SAMPLE_RATE} (every partial below Nyquist); "
            f"got {sample_rate}"
        )
    clip = np.zeros(num_samples, np.float64)
    if noise_rng is not None:
        clip += noise_rng.normal(0.0, _NOISE_STD, num_samples)
    for event in scene.events:
        first, end = _event_span(event, sample_rate)
        if first < 0 or end > num_samples or end <= first:
            raise ValueError(
                f"event {event} spans samples [{first}, {end}), outside the clip of {num_samples}"
            )
        clip[first:end] += _event_wave(event, first, end - first, sample_rate)
    # a guard only: events peak at 0.5 and never overlap, the floor is ~0.0016
    return np.clip(clip, -1.0, 1.0).astype(np.float32)


# --- Captions -------------------------------------------------------------------------------------


def _event_phrase(event: SoundEvent, rng: np.random.Generator) -> str:
    duration_word = shapes.pick(rng, DURATION_WORDS[event.duration])
    pitch_word = shapes.pick(rng, PITCH_WORDS[event.pitch])
    return f"a {duration_word} {pitch_word} {KIND_NAMES[event.kind]}"


def make_caption(scene: SoundScene, rng: np.random.Generator) -> str:
    """One random phrasing of the whole clip, naming every event's duration, pitch and kind in
    time order, e.g. "you can hear a brief shrill beep followed by a long deep hiss"."""
    events = sorted(scene.events, key=lambda e: e.start)
    return shapes.join_in_order(events, _event_phrase, EVENT_JOINERS, CAPTION_TEMPLATES, rng)


def make_captions(scene: SoundScene, num_captions: int, rng: np.random.Generator) -> list[str]:
    """`num_captions` different captions of `scene` (the grammar has >= 24 for any scene)."""
    return shapes.distinct_captions(make_caption, scene, num_captions, rng)


_WORD_TO_DURATION = {w: i for i, words in enumerate(DURATION_WORDS) for w in words}
_WORD_TO_PITCH = {w: i for i, words in enumerate(PITCH_WORDS) for w in words}
_PHRASE_RE = re.compile(
    rf"a ({shapes.alternation(_WORD_TO_DURATION)}) ({shapes.alternation(_WORD_TO_PITCH)})"
    rf" ({shapes.alternation(KIND_NAMES)})"
)
_PARSE = shapes.in_order_parser(
    CAPTION_TEMPLATES, EVENT_JOINERS, _PHRASE_RE,
    lambda duration, pitch, kind: _item(_WORD_TO_DURATION[duration], _WORD_TO_PITCH[pitch], KIND_NAMES.index(kind)),
)


def parse_caption(text: str) -> str | None:
    """The scene key a caption of this grammar describes, or None if it is not such a caption.

    Accepts every caption `make_caption` writes, ignoring case, outer whitespace and a final full
    stop. Used to score generated captions by exact scene match.
    """
    return _PARSE(text)


# --- One example ----------------------------------------------------------------------------------

# The keys of an example that hold its scene as arrays (one entry per event, in time order).
EVENT_FIELDS = ("event_kind", "event_pitch", "event_duration", "event_start", "event_length")


def scene_from_arrays(example: Mapping[str, Any]) -> SoundScene:
    """Rebuilds the scene of a stored example from its EVENT_FIELDS arrays (other keys ignored).

    The key and captions of the rebuilt scene are the original's; start and length come back as
    float32, so a rendering of it may move an event boundary by one sample.
    """
    columns = [np.asarray(example[name]).reshape(-1) for name in EVENT_FIELDS]
    if len({len(c) for c in columns}) != 1:
        raise ValueError(f"the event arrays differ in length: {[len(c) for c in columns]}")
    kinds, pitches, durations, starts, lengths = columns
    return SoundScene(
        tuple(
            SoundEvent(int(k), int(p), int(d), float(s), float(n))
            for k, p, d, s, n in zip(kinds, pitches, durations, starts, lengths)
        )
    )


# The generator of example `index` of `split`, seeded by (config.seed, split id, index) as in shapes.
example_rng = shapes.example_rng


def sample_split_scene(config: SoundsConfig, split: str, rng: np.random.Generator) -> SoundScene:
    """A random scene of `split`: resampled until `split_of_scene` agrees (10 tries on average)."""
    return shapes.draw_split_scene(sample_scene, split_of_scene, config, split, rng)


def generate_example(config: SoundsConfig, split: str, index: int) -> dict[str, Any]:
    """Example `index` of `split`: a deterministic function of (config.seed, split, index).

    Returns a dict with (n = number of events, N = config.num_samples):
      audio           int16 [N]  (render_sound * 32767, rounded)
      captions        list[str]  (config.num_captions, all different)
      scene           SoundScene
      scene_key       str        (scene.key())
      label           int        (class of the first event; see class_names())
      event_kind, event_pitch, event_duration   int64 [n]    (the events in time order)
      event_start, event_length                 float32 [n]  (seconds)
    """
    rng = example_rng(config, split, index)
    scene = sample_split_scene(config, split, rng)
    captions = make_captions(scene, config.num_captions, rng)
    # the noise is drawn last: its amount depends on the sample rate, everything before must not
    clip = render_sound(scene, config.sample_rate, config.num_samples, noise_rng=rng)
    events = sorted(scene.events, key=lambda e: e.start)
    return {
        "audio": np.rint(clip * 32767).astype(np.int16),
        "captions": captions,
        "scene": scene,
        "scene_key": scene.key(),
        "label": scene_label(scene),
        "event_kind": np.array([e.kind for e in events], np.int64),
        "event_pitch": np.array([e.pitch for e in events], np.int64),
        "event_duration": np.array([e.duration for e in events], np.int64),
        "event_start": np.array([e.start for e in events], np.float32),
        "event_length": np.array([e.length for e in events], np.float32),
    }
