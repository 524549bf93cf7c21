"""The `moving_shapes` world: short synthetic clips whose captions and sound track are true by
construction.

A clip (8 frames of 32x32 pixels by default, one second at 8 frames per second) shows 1 or 2
coloured shapes of the `shapes` world on a dark, slightly noisy background. The objects move one
after the other, each in a straight line:

    frame:    0    1    2    3    4    5    6    7         2 objects: two slots of 4 frames
    slot:     |---- object 0 ----|---- object 1 ----|
    object 0: o -> o -> o -> o    o    o    o    o          moves during slot 0 only
    object 1: x    x    x    x    x -> x -> x -> x          moves during slot 1 only

    each object: shape     (circle, square, triangle, cross, diamond)
                 colour    (red, green, blue, yellow, purple, white; all different in a clip)
                 size      (small, large)
                 direction (left, right, up, down)

The physics, exactly:
  - with n objects the clip is cut into n equal slots of num_frames / n frames; object k moves
    during slot k only and stands still before (at its start box) and after (at its end box);
  - a move always covers _MOVE_DISTANCE = 0.375 of the image side, spread evenly over the slot's
    num_frames / n - 1 frame-to-frame steps (the first frame of the slot shows the start box, its
    last frame the end box);
  - every object is visible in every frame: its whole path stays inside the image, and objects
    never overlap, not even between frames (a scene is resampled until they do not);
  - each object makes a sound while it moves, and only then (see `sound_of_scene`):
        sound kind = its shape   circle -> beep, square -> buzz, triangle -> whistle,
                                 cross -> hiss, diamond -> trill
        pitch      = its size    large -> low, small -> high
        timing     = its slot    it starts when the slot starts and lasts the whole slot
        duration   = "long" with one object (a one-slot clip), "short" with two or more.
    A sound shows neither colour nor direction: `MovingScene.sound_key()` is what the audio alone
    tells, e.g. "large:circle|small:cross".

Captions name the objects in the order they move: "a large red circle moves left", "a small blue
cross slides up, then a big white square travels to the right". One call,
`generate_example(config, split, index)`, makes (T = num_frames, S = image_size, n = objects):

    video             uint8   [T, S, S, 3]   the rendered clip
    audio             int16   [A]            the sound track, A = round(sample_rate * T / fps)
    captions          list[str], num_captions different phrasings of the whole clip
    scene             MovingScene            the structured truth
    scene_key         str                    canonical description: equal keys = the same clip
    sound_key         str                    what the sound track alone shows
    label             int                    class id (shape, direction) of the first mover
    object_shape, object_colour, object_size, object_direction    int64 [n]
    object_start_box, object_end_box                              float32 [n, 4]
    background        uint8   [3]            the background's base tone

The object arrays hold the whole scene (`scene_from_arrays` rebuilds it), so a stored dataset
keeps the truth without pickling Python objects.

Determinism. As in `shapes`, an example is a function of (config.seed, split, index) only: its
generator is seeded with `np.random.SeedSequence([seed, split_id, index])`, scenes use integer
draws, uniform floats and `+ - * /` only, and every frame is drawn by `shapes.render_scene`, so
scenes, captions and videos are the same bytes on every machine; the sound track is rendered by
`sounds.render_sound`, whose `sin` and FFTs make it the same bytes on one machine (see `sounds`).
The scene and captions are drawn first and the noise last, from two generators spawned for it (one
for the pictures, one for the sound), so the clips at 32, 64 or 224 pixels show the same scenes
and the sound track does not depend on the resolution.

Splits. Every scene key belongs to exactly one split:
  - a clip in which an object of shape s moves in direction d, for (s, d) one of
    `config.heldout_pairs` (e.g. a circle moving up), belongs to `compositional_test`; the other
    splits never show or name those combinations, so this split measures generalisation to new
    combinations of a shape and a motion, each seen before on its own;
  - any other clip goes to `train` (80%), `validation` (10%) or `test` (10%) by the SHA-256 bucket
    of its key (`shapes.scene_bucket`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmjax.data import shapes, sounds
from mmjax.data.shapes import COLOUR_NAMES, SHAPE_NAMES, SIZE_NAMES, SIZE_WORDS, SPLITS  # noqa: F401

# --- Vocabulary -----------------------------------------------------------------------------------

DIRECTION_NAMES = ("left", "right", "up", "down")
# (dy, dx) of a move in each direction, in units of the move's distance (y grows downwards)
_DIRECTION_STEPS = ((0, -1), (0, 1), (-1, 0), (1, 0))

# --- Caption grammar: the words a caption may use ------------------------------------------------

VERBS = ("moves", "goes", "slides", "travels")
DIRECTION_WORDS = (
    ("left", "to the left"),
    ("right", "to the right"),
    ("up", "upward"),
    ("down", "downward"),
)
# What separates two events: each says the second happens after the first.
JOINERS = (", then ", " and then ", " then ", ", and after that ")
# "{events}" is replaced by the events joined in move order; each template keeps a sentence.
CAPTION_TEMPLATES = (
    "{events}",
    "in this clip {events}",
    "in this video {events}",
    "a clip in which {events}",
    "{events} on a dark background",
)

# --- Geometry (fractions of the image side, so scenes do not depend on the resolution) -----------

# Half the box side, per size (small, large). At 32 pixels a small shape is 5 to 6.4 pixels wide,
# a large one 9 to 11: the smallest large shape is 1.4 times as wide as the largest small one.
_HALF_SIDE_RANGE = ((0.08, 0.10), (0.14, 0.17))
_MOVE_DISTANCE = 0.375  # how far every move goes (12 pixels at 32)
_BORDER = 0.02  # every box keeps this far from the image's border, all along its path
_MIN_GAP = 0.05  # the least distance between two objects' boxes at any time (1.6 pixels at 32)
# The tightest case, two large objects whose paths cross, finds a free placement 1 time in 40.
_MAX_PLACEMENT_TRIES = 1000


# --- Data types -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MovingObject:
    """One object: indices into SHAPE_NAMES, COLOUR_NAMES, SIZE_NAMES, DIRECTION_NAMES, and its
    boxes before and after its move.

    `start_box` and `end_box` are normalised [y0, x0, y1, x1] tight extents of the drawn shape (a
    square of side 2 * half side, as in `shapes`); `end_box` is `start_box` moved by
    _MOVE_DISTANCE in `direction`.
    """

    shape: int
    colour: int
    size: int
    direction: int
    start_box: tuple[float, float, float, float]
    end_box: tuple[float, float, float, float]

    def item(self) -> str:
        """This object's part of the scene key: "size:colour:shape:direction"."""
        return _item(self.size, self.colour, self.shape, self.direction)


def _item(size: int, colour: int, shape: int, direction: int) -> str:
    names = (SIZE_NAMES[size], COLOUR_NAMES[colour], SHAPE_NAMES[shape], DIRECTION_NAMES[direction])
    return ":".join(names)


def _slot_frames(slot: int, num_slots: int, num_frames: int) -> tuple[int, int]:
    """(first, last) frame of a slot: num_frames is cut into num_slots equal slots."""
    length = num_frames // num_slots
    return slot * length, (slot + 1) * length - 1


@dataclasses.dataclass(frozen=True)
class MovingScene:
    """The structured truth of one clip: its objects in the order they move and the background's
    base RGB tone."""

    objects: tuple[MovingObject, ...]
    background: tuple[int, int, int]

    def key(self) -> str:
        """Canonical description of the clip: "size:colour:shape:direction" per object, in move
        order, e.g. "large:red:circle:left|small:blue:cross:up".

        Independent of positions and of the background: two clips are the same clip (for
        retrieval, split assignment, caption parsing) iff their keys are equal.
        """
        return "|".join(o.item() for o in self.objects)

    def sound_key(self) -> str:
        """What the sound track alone shows: "size:shape" per object in move order, e.g.
        "large:circle|small:cross" (a sound has no colour and no direction)."""
        return "|".join(f"{SIZE_NAMES[o.size]}:{SHAPE_NAMES[o.shape]}" for o in self.objects)

    def box_at(self, object_index: int, frame: int, num_frames: int) -> tuple[float, ...]:
        """The normalised box of object `object_index` in frame `frame` of a `num_frames` clip.

        The start box up to the first frame of the object's slot, the end box from its last
        frame on, evenly spaced in between.
        """
        obj = self.objects[object_index]
        first, last = _slot_frames(object_index, len(self.objects), num_frames)
        if frame <= first:
            return obj.start_box
        if frame >= last:
            return obj.end_box
        progress = (frame - first) / (last - first)
        return tuple(a + progress * (b - a) for a, b in zip(obj.start_box, obj.end_box))


_require = shapes.field_check("MovingShapesConfig")


@dataclasses.dataclass(frozen=True)
class MovingShapesConfig:
    """What a `moving_shapes` dataset contains. Defaults give a one-second 32-pixel clip."""

    # Side of the square frames in pixels.
    image_size: int = 32
    # Frames per clip; each object count n in [min_objects, max_objects] must divide it, leaving
    # each object a slot of at least 2 frames.
    num_frames: int = 8
    # Frames per second: the clip lasts num_frames / fps seconds.
    fps: int = 8
    # Audio samples per second of the sound track.
    sample_rate: int = 8000
    # Objects per clip, drawn uniformly from [min_objects, max_objects].
    min_objects: int = 1
    max_objects: int = 2
    # Different phrasings of the whole clip per example.
    num_captions: int = 5
    # (shape, direction) combinations that appear only in the `compositional_test` split.
    heldout_pairs: tuple[tuple[str, str], ...] = (
        ("circle", "up"),
        ("square", "left"),
        ("triangle", "down"),
        ("cross", "right"),
        ("diamond", "up"),
    )
    # Seed of the whole dataset: every example is a function of (seed, split, index).
    seed: int = 0

    def __post_init__(self):
        # accept lists too (e.g. from a config file), store hashable tuples
        pairs = tuple(tuple(pair) for pair in self.heldout_pairs)
        object.__setattr__(self, "heldout_pairs", pairs)
        for field in (
            "image_size", "num_frames", "fps", "sample_rate", "min_objects", "max_objects",
            "num_captions", "seed",
        ):  # fmt: skip
            _require(isinstance(getattr(self, field), int), field, "an int", getattr(self, field))
        _require(
            self.image_size >= 32, "image_size", ">= 32 (small shapes of >= 5 pixels)",
            self.image_size,
        )  # fmt: skip
        _require(1 <= self.min_objects <= 2, "min_objects", "in [1, 2]", self.min_objects)
        # three objects do not always fit: three large ones moving the same way need more room
        # across their paths than the image has
        _require(
            self.min_objects <= self.max_objects <= 2,
            "max_objects",
            f"in [min_objects={self.min_objects}, 2]",
            self.max_objects,
        )
        counts = range(self.min_objects, self.max_objects + 1)
        _require(
            all(self.num_frames % n == 0 and self.num_frames >= 2 * n for n in counts),
            "num_frames",
            f"a multiple of every object count in {list(counts)} with >= 2 frames per object",
            self.num_frames,
        )
        _require(1 <= self.fps <= 1000, "fps", "in [1, 1000]", self.fps)
        # `sounds` keeps every partial below the Nyquist frequency of 8 kHz audio
        _require(
            8000 <= self.sample_rate <= 96000, "sample_rate", "in [8000, 96000]", self.sample_rate
        )
        _require(1 <= self.num_captions <= 20, "num_captions", "in [1, 20]", self.num_captions)
        _require(self.seed >= 0, "seed", "an int >= 0", self.seed)
        for pair in pairs:
            _require(len(pair) == 2, "heldout_pairs", "made of (shape, direction) pairs", pair)
            _require(pair[0] in SHAPE_NAMES, "heldout_pairs", f"shapes in {SHAPE_NAMES}", pair)
            _require(
                pair[1] in DIRECTION_NAMES,
                "heldout_pairs",
                f"directions in {DIRECTION_NAMES}",
                pair,
            )
        _require(len(set(pairs)) == len(pairs), "heldout_pairs", "free of duplicates", pairs)
        _require(
            len(pairs) < len(SHAPE_NAMES) * len(DIRECTION_NAMES),
            "heldout_pairs",
            "fewer than all 20 shape-direction pairs",
            len(pairs),
        )

    @property
    def heldout_ids(self) -> frozenset[tuple[int, int]]:
        """The held-out pairs as (shape index, direction index)."""
        return frozenset(
            (SHAPE_NAMES.index(s), DIRECTION_NAMES.index(d)) for s, d in self.heldout_pairs
        )

    @property
    def num_samples(self) -> int:
        """Samples of the sound track: the clip's duration times the sample rate."""
        return round(self.sample_rate * self.num_frames / self.fps)


# --- Classes (zero-shot classification labels) ----------------------------------------------------


def class_id(shape: int, direction: int) -> int:
    """Class of a (shape, direction) pair: shape * len(DIRECTION_NAMES) + direction."""
    return shape * len(DIRECTION_NAMES) + direction


def class_names() -> list[str]:
    """Text name of every class, e.g. class_names()[class_id(0, 0)] == "circle moving left" (20
    classes)."""
    return [f"{shape} moving {direction}" for shape in SHAPE_NAMES for direction in DIRECTION_NAMES]


def scene_label(scene: MovingScene) -> int:
    """Class of the object that moves first."""
    first = scene.objects[0]
    return class_id(first.shape, first.direction)


# --- Splits ---------------------------------------------------------------------------------------


def split_of_scene(scene: MovingScene, config: MovingShapesConfig) -> str:
    """The one split a clip belongs to (see the module docstring)."""
    heldout = config.heldout_ids
    return shapes.split_of_key(scene.key(), any((o.shape, o.direction) in heldout for o in scene.objects))


# --- Sampling -------------------------------------------------------------------------------------


def _boxes_apart(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two [y0, x0, y1, x1] boxes are at least _MIN_GAP apart along some axis."""
    gap = max(a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3])
    return gap >= _MIN_GAP


def _swept_box(obj: MovingObject) -> tuple[float, float, float, float]:
    """Everything an object's box covers during its straight move."""
    a, b = obj.start_box, obj.end_box
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _never_overlap(objects: Sequence[MovingObject]) -> bool:
    """Whether the objects stay apart all the time, between frames too: while object k moves, the
    ones before it stand at their end boxes and the ones after it at their start boxes."""
    for k, mover in enumerate(objects):
        path = _swept_box(mover)
        for j, other in enumerate(objects):
            if j != k and not _boxes_apart(path, other.end_box if j < k else other.start_box):
                return False
    return True


def _place(
    shape: int, colour: int, size: int, direction: int, half: float, rng: np.random.Generator
) -> MovingObject:
    """An object at a random start from which its whole move stays _BORDER inside the image."""
    low, high = _BORDER + half, 1.0 - _BORDER - half  # where the centre may be
    dy, dx = _DIRECTION_STEPS[direction]
    centre = []
    for step in (dy, dx):
        # along the move the start leaves room for the move's distance
        start_low = low + _MOVE_DISTANCE if step < 0 else low
        start_high = high - _MOVE_DISTANCE if step > 0 else high
        centre.append(start_low + (start_high - start_low) * rng.random())
    cy, cx = centre
    ey, ex = cy + dy * _MOVE_DISTANCE, cx + dx * _MOVE_DISTANCE
    start_box = (cy - half, cx - half, cy + half, cx + half)
    end_box = (ey - half, ex - half, ey + half, ex + half)
    return MovingObject(
        shape, colour, size, direction, tuple(map(float, start_box)), tuple(map(float, end_box))
    )


def sample_scene(
    config: MovingShapesConfig, rng: np.random.Generator, with_heldout: bool = False
) -> MovingScene:
    """A random clip: shape-direction pairs outside the held-out ones, or (with_heldout) with >= 1.

    Each object gets a colour of its own, a size, a half side within its size's range, and a start
    from which its path stays inside the image; the starts are redrawn until no two objects
    overlap at any time.
    """
    num_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    colours = rng.permutation(len(COLOUR_NAMES))[:num_objects]
    heldout = sorted(config.heldout_ids)
    allowed = [
        (s, d)
        for s in range(len(SHAPE_NAMES))
        for d in range(len(DIRECTION_NAMES))
        if (s, d) not in heldout
    ]
    if with_heldout and not heldout:
        raise ValueError(
            "the compositional_test split needs MovingShapesConfig.heldout_pairs; got none"
        )
    # Which object shows a held-out pair (if asked for); the others are drawn from every pair.
    forced = int(rng.integers(num_objects)) if with_heldout else -1
    kinds = []  # (shape, colour, size, direction, half side) per object
    for i, colour in enumerate(colours):
        if i == forced:
            shape, direction = heldout[int(rng.integers(len(heldout)))]
        elif with_heldout:
            shape = int(rng.integers(len(SHAPE_NAMES)))
            direction = int(rng.integers(len(DIRECTION_NAMES)))
        else:
            shape, direction = allowed[int(rng.integers(len(allowed)))]
        size = int(rng.integers(2))
        low, high = _HALF_SIDE_RANGE[size]
        half = low + (high - low) * rng.random()
        kinds.append((shape, int(colour), size, direction, half))
    for _ in range(_MAX_PLACEMENT_TRIES):
        objects = tuple(_place(*kind, rng) for kind in kinds)
        if _never_overlap(objects):
            break
    else:
        raise RuntimeError(
            f"could not place {kinds} without overlap in {_MAX_PLACEMENT_TRIES} tries"
        )
    # the same dark background as `shapes`
    level = int(rng.integers(*shapes._BACKGROUND_LEVEL))
    tint = rng.integers(-shapes._BACKGROUND_TINT, shapes._BACKGROUND_TINT + 1, size=3)
    background = tuple(int(v) for v in np.clip(level + tint, 0, 255))
    return MovingScene(objects, background)


def sample_split_scene(
    config: MovingShapesConfig, split: str, rng: np.random.Generator
) -> MovingScene:
    """A random clip of `split`: resampled until `split_of_scene` agrees."""
    return shapes.draw_split_scene(sample_scene, split_of_scene, config, split, rng)


# --- Rendering ------------------------------------------------------------------------------------


def render_clip(
    scene: MovingScene,
    image_size: int,
    num_frames: int,
    noise_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Draws `scene` -> uint8 [num_frames, image_size, image_size, 3].

    Frame t is `shapes.render_scene` of the objects at their boxes of frame t (`box_at`); with
    `noise_rng`, each frame gets its own background noise, drawn in frame order.
    """
    frames = []
    for frame in range(num_frames):
        still = shapes.Scene(
            tuple(
                shapes.ShapeObject(o.shape, o.colour, o.size, 0, scene.box_at(i, frame, num_frames))
                for i, o in enumerate(scene.objects)
            ),
            scene.background,
        )
        frames.append(shapes.render_scene(still, image_size, noise_rng=noise_rng))
    return np.stack(frames)


def sound_of_scene(scene: MovingScene, config: MovingShapesConfig) -> sounds.SoundScene:
    """The sound track's truth: one sound per object, during its move (the module's physics).

    Kind = shape index (circle -> beep, ..., diamond -> trill), pitch = low for a large object and
    high for a small one, start = its slot's first frame time, length = the slot's seconds,
    duration category "long" when the object has the whole clip and "short" otherwise.
    """
    num_objects = len(scene.objects)
    events = []
    for k, obj in enumerate(scene.objects):
        first, last = _slot_frames(k, num_objects, config.num_frames)
        pitch = "low" if SIZE_NAMES[obj.size] == "large" else "high"
        events.append(
            sounds.SoundEvent(
                kind=obj.shape,
                pitch=sounds.PITCH_NAMES.index(pitch),
                duration=sounds.DURATION_NAMES.index("long" if num_objects == 1 else "short"),
                start=first / config.fps,
                length=(last + 1 - first) / config.fps,
            )
        )
    return sounds.SoundScene(tuple(events))


def render_audio(
    scene: MovingScene,
    config: MovingShapesConfig,
    noise_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The sound track of `scene` -> int16 [config.num_samples] (full scale = 32767): the sounds
    of `sound_of_scene` rendered by `sounds.render_sound`, with its noise floor when `noise_rng`
    is given."""
    wave = sounds.render_sound(
        sound_of_scene(scene, config), config.sample_rate, config.num_samples, noise_rng=noise_rng
    )
    return np.rint(np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)


# --- Captions -------------------------------------------------------------------------------------


def _event_phrase(obj: MovingObject, rng: np.random.Generator) -> str:
    size_word = shapes.pick(rng, SIZE_WORDS[obj.size])
    verb = shapes.pick(rng, VERBS)
    direction_word = shapes.pick(rng, DIRECTION_WORDS[obj.direction])
    colour, shape = COLOUR_NAMES[obj.colour], SHAPE_NAMES[obj.shape]
    return f"a {size_word} {colour} {shape} {verb} {direction_word}"


def make_caption(scene: MovingScene, rng: np.random.Generator) -> str:
    """One random phrasing of the whole clip, naming every object's size, colour, shape and
    direction in the order they move.

    e.g. "in this clip a little blue cross slides upward, and after that a big white square goes
    to the right".
    """
    return shapes.join_in_order(scene.objects, _event_phrase, JOINERS, CAPTION_TEMPLATES, rng)


def make_captions(scene: MovingScene, num_captions: int, rng: np.random.Generator) -> list[str]:
    """`num_captions` different captions of `scene` (the grammar has >= 80 for any clip)."""
    return shapes.distinct_captions(make_caption, scene, num_captions, rng)


_WORD_TO_SIZE = {w: i for i, words in enumerate(SIZE_WORDS) for w in words}
_WORD_TO_DIRECTION = {w: i for i, words in enumerate(DIRECTION_WORDS) for w in words}
_EVENT_RE = re.compile(
    rf"a ({shapes.alternation(_WORD_TO_SIZE)}) ({shapes.alternation(COLOUR_NAMES)})"
    rf" ({shapes.alternation(SHAPE_NAMES)}) (?:{shapes.alternation(VERBS)})"
    rf" ({shapes.alternation(_WORD_TO_DIRECTION)})"
)
_PARSE = shapes.in_order_parser(
    CAPTION_TEMPLATES, JOINERS, _EVENT_RE,
    lambda size, colour, shape, direction: _item(
        _WORD_TO_SIZE[size], COLOUR_NAMES.index(colour), SHAPE_NAMES.index(shape), _WORD_TO_DIRECTION[direction]),
)


def parse_caption(text: str) -> str | None:
    """The scene key a caption of this grammar describes, or None if it is not such a caption.

    Accepts every caption `make_caption` writes, ignoring case, outer whitespace and a final full
    stop. Used to score generated captions by exact scene match.
    """
    return _PARSE(text)


# --- One example ----------------------------------------------------------------------------------


# The generator of example `index` of `split`, seeded by (config.seed, split id, index) as in shapes.
example_rng = shapes.example_rng


def generate_example(config: MovingShapesConfig, split: str, index: int) -> dict[str, Any]:
    """Example `index` of `split`: a deterministic function of (config.seed, split, index).

    Returns a dict with (n = number of objects, T = num_frames, S = image_size):
      video            uint8 [T, S, S, 3]
      audio            int16 [config.num_samples]
      captions         list[str]  (config.num_captions, all different)
      scene            MovingScene
      scene_key        str        (scene.key())
      sound_key        str        (scene.sound_key())
      label            int        (class of the first mover; see class_names())
      object_shape, object_colour, object_size, object_direction   int64 [n], in move order
      object_start_box, object_end_box   float32 [n, 4] normalised [y0, x0, y1, x1]
      background       uint8 [3]
    """
    rng = example_rng(config, split, index)
    scene = sample_split_scene(config, split, rng)
    captions = make_captions(scene, config.num_captions, rng)
    # the noise is drawn last, each medium from its own generator: the amount of noise depends on
    # the resolution and the sample rate, everything before (and the other medium) must not
    video_rng, audio_rng = rng.spawn(2)
    return {
        "video": render_clip(scene, config.image_size, config.num_frames, noise_rng=video_rng),
        "audio": render_audio(scene, config, noise_rng=audio_rng),
        "captions": captions,
        "scene": scene,
        "scene_key": scene.key(),
        "sound_key": scene.sound_key(),
        "label": scene_label(scene),
        "object_shape": np.array([o.shape for o in scene.objects], np.int64),
        "object_colour": np.array([o.colour for o in scene.objects], np.int64),
        "object_size": np.array([o.size for o in scene.objects], np.int64),
        "object_direction": np.array([o.direction for o in scene.objects], np.int64),
        "object_start_box": np.array([o.start_box for o in scene.objects], np.float32),
        "object_end_box": np.array([o.end_box for o in scene.objects], np.float32),
        "background": np.array(scene.background, np.uint8),
    }


def scene_from_arrays(example: dict[str, Any]) -> MovingScene:
    """The scene an example's object arrays describe (boxes as stored, i.e. float32-rounded)."""
    objects = tuple(
        MovingObject(
            int(shape), int(colour), int(size), int(direction),
            tuple(float(v) for v in start), tuple(float(v) for v in end),
        )  # fmt: skip
        for shape, colour, size, direction, start, end in zip(
            example["object_shape"],
            example["object_colour"],
            example["object_size"],
            example["object_direction"],
            np.asarray(example["object_start_box"]).reshape(-1, 4),
            np.asarray(example["object_end_box"]).reshape(-1, 4),
        )
    )
    return MovingScene(objects, tuple(int(v) for v in example["background"]))
