"""The `shapes` world: synthetic scenes whose every caption, answer and box is true by construction.

A scene is 1 to 3 coloured shapes on a 3x3 grid over a dark, slightly noisy background:

    +---------+---------+---------+
    |top left |   top   |top right|        each object: shape  (circle, square, triangle, cross,
    |         |    o    |         |                             diamond)
    +---------+---------+---------+                     colour (red, green, blue, yellow,
    |  left   | center  |  right  |                             purple, white)
    |  [#]    |         |         |                     size   (small, large)
    +---------+---------+---------+                     cell   (one of the 9; at most one
    |bottom l.| bottom  |bottom r.|                             object per cell)
    |         |         |    x    |                     box    (its tight extent, normalised)
    +---------+---------+---------+

Because the program that draws the picture also writes the text, everything an example carries is
exactly right, and a model's mistakes can be explained (in the spirit of SHAPES, Andreas et al.
2016, and CLEVR, Johnson et al. 2017). One call, `generate_example(config, split, index)`, makes

    image           uint8   [S, S, 3]       the rendered scene (S = config.image_size)
    captions        list[str], num_captions different phrasings of the whole scene
    scene           Scene                   the structured truth (objects with boxes)
    scene_key       str                     canonical description: equal keys = the same scene
    questions       list[str], num_questions questions with one correct answer each
    answers         list[str]
    question_types  list[str]               "colour", "shape", "size", "count", "position",
                                            "existence" or "relation"
    label           int                     class id (shape, colour) of the largest object
    boxes           float32 [n, 4]          normalised [y0, x0, y1, x1], one row per object
    box_labels      int64   [n]             class id of each object

It is pure NumPy, so tests, evaluation and the TFDS builder (`shapes_tfds.py`) share it.

Determinism. An example is a function of (config.seed, split, index) only: its random generator is
seeded with `np.random.SeedSequence([seed, split_id, index])`, and the pipeline uses only integer
draws, uniform floats and IEEE-exact arithmetic (`+ - * / sqrt`, no `exp`/`log`), so the same seed
gives the same bytes on any machine. Scenes (and so captions and answers) do not depend on
`image_size`: the 32, 64 and 224 pixel datasets show the same scenes at different resolutions.

Splits. Every scene key belongs to exactly one split, so no test scene is ever trained on:
  - a scene holding one of `config.heldout_pairs` (a colour-shape combination such as "red
    triangle") belongs to `compositional_test`; those pairs never appear in the other splits'
    images, captions or questions, so this split measures generalisation to new combinations;
  - any other scene goes to `train` (80%), `validation` (10%) or `test` (10%) by a stable hash
    (SHA-256) of its key. Python's `hash()` would not do: it is salted per process.
Sampling for a split draws scenes until one falls in that split.

Truth survives a horizontal flip: `mirror_scene` and `mirror_text` swap left and right, so a flipped
image keeps true captions, questions and answers (`np.fliplr(image)` is exactly the noiseless
rendering of `mirror_scene(scene)`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# --- Vocabulary -----------------------------------------------------------------------------------

SHAPE_NAMES = ("circle", "square", "triangle", "cross", "diamond")
SHAPE_PLURALS = ("circles", "squares", "triangles", "crosses", "diamonds")
COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple", "white")
# Bright, well-separated colours: the nearest palette entry of any drawn pixel is unambiguous, and
# each stands out from the dark background (every channel of the background is <= 70).
COLOUR_RGB = (
    (230, 40, 40),  # red
    (40, 200, 60),  # green
    (50, 100, 255),  # blue
    (245, 225, 40),  # yellow
    (170, 60, 220),  # purple
    (240, 240, 240),  # white
)
SIZE_NAMES = ("small", "large")
# Cell index = row * 3 + column, rows top to bottom, columns left to right.
CELL_NAMES = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUESTION_TYPES = ("colour", "shape", "size", "count", "position", "existence", "relation")
SPLITS = ("train", "validation", "test", "compositional_test")
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}

# --- Caption grammar: the words a caption may use for each property ------------------------------

SIZE_WORDS = (("small", "little"), ("large", "big"))
CELL_WORDS = (
    ("top left", "upper left"),
    ("top", "top middle", "top center"),
    ("top right", "upper right"),
    ("left", "middle left", "center left"),
    ("center", "middle"),
    ("right", "middle right", "center right"),
    ("bottom left", "lower left"),
    ("bottom", "bottom middle", "bottom center"),
    ("bottom right", "lower right"),
)
# Prepositions per cell: "in the top left", "on the left", "at" anywhere (the parser accepts any).
CORNER_PREPOSITIONS, EDGE_PREPOSITIONS = ("at", "in"), ("at", "on")
PREPOSITIONS = tuple(sorted(set(CORNER_PREPOSITIONS + EDGE_PREPOSITIONS)))
# "{objects}" is replaced by the list of object phrases.
CAPTION_TEMPLATES = (
    "{objects}",
    "there is {objects}",
    "a picture of {objects}",
    "an image of {objects}",
    "this image shows {objects}",
    "{objects} on a dark background",
)

# --- Geometry (in units of a cell's side, so scenes do not depend on the resolution) --------------

_HALF_SIDE_RANGE = ((0.17, 0.23), (0.34, 0.42))  # half the box side, per size: small, large
_CELL_MARGIN = 0.04  # an object keeps this far from its cell's border
_MAX_JITTER = 0.12  # the most an object's centre moves from its cell's centre
_BACKGROUND_LEVEL = (15, 55)  # grey level of the background, before a tint of +-_BACKGROUND_TINT
_BACKGROUND_TINT = 12
_NOISE = 4  # background pixels get uniform integer noise in [-_NOISE, _NOISE]


# --- Data types -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One object: indices into SHAPE_NAMES, COLOUR_NAMES, SIZE_NAMES, CELL_NAMES, and its box.

    `box` is the normalised [y0, x0, y1, x1] of the drawn shape's tight extent (every shape fills
    a square box of side 2 * half_side; the triangle points up with its base on the box's bottom).
    """

    shape: int
    colour: int
    size: int
    cell: int
    box: tuple[float, float, float, float]

    def item(self) -> str:
        """This object's part of the scene key: "cell:size:colour:shape"."""
        return _item(self.cell, self.size, self.colour, self.shape)


@dataclasses.dataclass(frozen=True)
class Scene:
    """The structured truth of one image: its objects and the background's base RGB tone."""

    objects: tuple[ShapeObject, ...]
    background: tuple[int, int, int]

    def key(self) -> str:
        """Canonical description of the scene's content: "cell:size:colour:shape" per object.

        e.g. "top left:large:red:circle|center:small:blue:square" (objects in cell order).

        Independent of the objects' order, of jitter and of the background: two scenes are the same
        scene (for retrieval, split assignment, caption parsing) iff their keys are equal.
        """
        return "|".join(o.item() for o in sorted(self.objects, key=lambda o: o.cell))


def _item(cell: int, size: int, colour: int, shape: int) -> str:
    return f"{CELL_NAMES[cell]}:{SIZE_NAMES[size]}:{COLOUR_NAMES[colour]}:{SHAPE_NAMES[shape]}"


def field_check(config_name: str) -> Callable[[bool, str, str, Any], None]:
    """A world config's validator: `require(ok, field, expected, actual)` raises
    ValueError("<config_name>.<field> must be <expected>; got <actual>") unless `ok`.

    Shared by the synthetic worlds (shapes, moving_shapes, sounds), so their errors read alike.
    """

    def require(ok: bool, field: str, expected: str, actual: Any) -> None:
        if not ok:
            raise ValueError(f"{config_name}.{field} must be {expected}; got {actual!r}")

    return require


_require = field_check("ShapesConfig")


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """What a `shapes` dataset contains. Defaults give the standard benchmark."""

    # Side of the square image in pixels.
    image_size: int = 64
    # Objects per scene, drawn uniformly from [min_objects, max_objects]; at most one per cell.
    min_objects: int = 1
    max_objects: int = 3
    # Different phrasings of the whole scene per example.
    num_captions: int = 5
    # Question-answer pairs per example: question i has type QUESTION_TYPES[i % 7], so the default
    # asks each type once (see `make_questions` for the rare substitution).
    num_questions: int = 7
    # (colour, shape) combinations that appear only in the `compositional_test` split.
    heldout_pairs: tuple[tuple[str, str], ...] = (
        ("red", "triangle"),
        ("blue", "cross"),
        ("green", "diamond"),
        ("yellow", "circle"),
        ("purple", "square"),
    )
    # Seed of the whole dataset: every example is a function of (seed, split, index).
    seed: int = 0

    def __post_init__(self):
        # accept lists too (e.g. from a config file), store hashable tuples
        pairs = tuple(tuple(pair) for pair in self.heldout_pairs)
        object.__setattr__(self, "heldout_pairs", pairs)
        for field in ("image_size", "min_objects", "max_objects", "num_captions", "num_questions"):
            _require(isinstance(getattr(self, field), int), field, "an int", getattr(self, field))
        _require(
            self.image_size >= 24, "image_size", ">= 24 (cells of >= 8 pixels)", self.image_size
        )
        _require(1 <= self.min_objects <= 9, "min_objects", "in [1, 9]", self.min_objects)
        _require(
            self.min_objects <= self.max_objects <= 9,
            "max_objects",
            f"in [min_objects={self.min_objects}, 9]",
            self.max_objects,
        )
        _require(1 <= self.num_captions <= 20, "num_captions", "in [1, 20]", self.num_captions)
        _require(self.num_questions >= 0, "num_questions", ">= 0", self.num_questions)
        _require(isinstance(self.seed, int) and self.seed >= 0, "seed", "an int >= 0", self.seed)
        for pair in pairs:
            _require(len(pair) == 2, "heldout_pairs", "made of (colour, shape) pairs", pair)
            _require(pair[0] in COLOUR_NAMES, "heldout_pairs", f"colours in {COLOUR_NAMES}", pair)
            _require(pair[1] in SHAPE_NAMES, "heldout_pairs", f"shapes in {SHAPE_NAMES}", pair)
        _require(len(set(pairs)) == len(pairs), "heldout_pairs", "free of duplicates", pairs)
        _require(
            len(pairs) < len(COLOUR_NAMES) * len(SHAPE_NAMES),
            "heldout_pairs",
            "fewer than all 30 colour-shape pairs",
            len(pairs),
        )

    @property
    def heldout_ids(self) -> frozenset[tuple[int, int]]:
        """The held-out pairs as (colour index, shape index)."""
        return frozenset(
            (COLOUR_NAMES.index(c), SHAPE_NAMES.index(s)) for c, s in self.heldout_pairs
        )


# --- Classes (zero-shot classification labels) ----------------------------------------------------


def class_id(shape: int, colour: int) -> int:
    """Class of a (shape, colour) pair: shape * len(COLOUR_NAMES) + colour."""
    return shape * len(COLOUR_NAMES) + colour


def class_names() -> list[str]:
    """Text name of every class, e.g. class_names()[class_id(0, 0)] == "red circle" (30 classes)."""
    return [f"{colour} {shape}" for shape in SHAPE_NAMES for colour in COLOUR_NAMES]


def scene_label(scene: Scene) -> int:
    """Class of the largest object (largest box; on an exact tie, the lowest cell index)."""
    largest = min(scene.objects, key=lambda o: (-(o.box[2] - o.box[0]), o.cell))
    return class_id(largest.shape, largest.colour)


# --- Splits ---------------------------------------------------------------------------------------


def scene_bucket(key: str) -> int:
    """A stable bucket in [0, 100) for a scene key (SHA-256, identical on every machine)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100


def split_of_key(key: str, has_heldout: bool) -> str:
    """The split of a scene of any world: `compositional_test` if it shows a held-out combination,
    else train (80%), validation (10%) or test (10%) by the stable bucket of its key."""
    if has_heldout:
        return "compositional_test"
    bucket = scene_bucket(key)
    return "train" if bucket < 80 else "validation" if bucket < 90 else "test"


def split_of_scene(scene: Scene, config: ShapesConfig) -> str:
    """The one split a scene belongs to (see the module docstring)."""
    heldout = config.heldout_ids
    return split_of_key(scene.key(), any((o.colour, o.shape) in heldout for o in scene.objects))


# --- Sampling -------------------------------------------------------------------------------------


def sample_scene(
    config: ShapesConfig, rng: np.random.Generator, with_heldout: bool = False
) -> Scene:
    """A random scene: colour-shape pairs outside the held-out ones, or (with_heldout) with >= 1.

    Each object gets a distinct cell, a size, a half side jittered within its size's range, and a
    centre jittered by at most _MAX_JITTER cells, always inside its cell with a margin.
    """
    num_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    cells = rng.permutation(9)[:num_objects]
    heldout = sorted(config.heldout_ids)
    allowed = [
        (c, s)
        for c in range(len(COLOUR_NAMES))
        for s in range(len(SHAPE_NAMES))
        if (c, s) not in heldout
    ]
    if with_heldout and not heldout:
        raise ValueError("the compositional_test split needs ShapesConfig.heldout_pairs; got none")
    # Which object shows a held-out pair (if asked for); the others are drawn from every pair.
    forced = int(rng.integers(num_objects)) if with_heldout else -1
    objects = []
    for i, cell in enumerate(cells):
        if i == forced:
            colour, shape = heldout[int(rng.integers(len(heldout)))]
        elif with_heldout:
            colour, shape = (
                int(rng.integers(len(COLOUR_NAMES))),
                int(rng.integers(len(SHAPE_NAMES))),
            )
        else:
            colour, shape = allowed[int(rng.integers(len(allowed)))]
        size = int(rng.integers(2))
        low, high = _HALF_SIDE_RANGE[size]
        half = low + (high - low) * rng.random()  # in cells
        room = min(0.5 - half - _CELL_MARGIN, _MAX_JITTER)
        row, col = divmod(int(cell), 3)
        cy = row + 0.5 + room * (2 * rng.random() - 1)
        cx = col + 0.5 + room * (2 * rng.random() - 1)
        box = ((cy - half) / 3, (cx - half) / 3, (cy + half) / 3, (cx + half) / 3)
        objects.append(ShapeObject(shape, colour, size, int(cell), tuple(float(v) for v in box)))
    level = int(rng.integers(*_BACKGROUND_LEVEL))
    tint = rng.integers(-_BACKGROUND_TINT, _BACKGROUND_TINT + 1, size=3)
    background = tuple(int(v) for v in np.clip(level + tint, 0, 255))
    return Scene(tuple(objects), background)


# --- Rendering ------------------------------------------------------------------------------------
# Each shape is a signed distance function (SDF) of the offset (y, x) from its centre, in pixels:
# negative inside, positive outside. The coverage of a pixel is clip(0.5 - sdf(pixel centre), 0, 1),
# a cheap analytic anti-aliasing: 1 inside, 0 beyond half a pixel outside, a ramp across the edge.


def _box_sdf(y: np.ndarray, x: np.ndarray, half_y: float, half_x: float) -> np.ndarray:
    qy, qx = np.abs(y) - half_y, np.abs(x) - half_x
    outside = np.sqrt(np.maximum(qy, 0.0) ** 2 + np.maximum(qx, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qy, qx), 0.0)


def _shape_sdf(shape: int, y: np.ndarray, x: np.ndarray, half: float) -> np.ndarray:
    """sdf of SHAPE_NAMES[shape] with half side `half`; y: [h, 1], x: [1, w] -> [h, w]."""
    name = SHAPE_NAMES[shape]
    if name == "circle":
        return np.sqrt(y**2 + x**2) - half
    if name == "square":
        return _box_sdf(y, x, half, half)
    if name == "triangle":  # apex (-half, 0), base corners (half, +-half)
        base = y - half
        sides = (2 * np.abs(x) - y - half) / np.sqrt(5.0)
        return np.maximum(base, sides)
    if name == "cross":  # a plus sign: two bars of width 0.6 * half
        arm = 0.3 * half
        return np.minimum(_box_sdf(y, x, half, arm), _box_sdf(y, x, arm, half))
    if name == "diamond":
        return (np.abs(x) + np.abs(y) - half) / np.sqrt(2.0)
    raise ValueError(f"unknown shape index {shape}")


def render_scene(
    scene: Scene, image_size: int, noise_rng: np.random.Generator | None = None
) -> np.ndarray:
    """Draws `scene` -> uint8 [image_size, image_size, 3].

    The background is the scene's tone plus uniform integer noise in [-4, 4] per pixel and channel
    (when `noise_rng` is given); objects are flat colours (COLOUR_RGB), alpha-blended at the edges.
    """
    size = image_size
    canvas = np.empty((size, size, 3), np.float64)
    canvas[:] = scene.background
    if noise_rng is not None:
        canvas += noise_rng.integers(-_NOISE, _NOISE + 1, size=(size, size, 3))
    for obj in scene.objects:
        y0, x0, y1, x1 = (v * size for v in obj.box)
        cy, cx, half = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2
        # only the pixels near the box can be covered
        r0, r1 = max(int(np.floor(y0)) - 1, 0), min(int(np.ceil(y1)) + 1, size)
        c0, c1 = max(int(np.floor(x0)) - 1, 0), min(int(np.ceil(x1)) + 1, size)
        ys = (np.arange(r0, r1) + 0.5 - cy)[:, None]
        xs = (np.arange(c0, c1) + 0.5 - cx)[None, :]
        # The triangle's and diamond's distances (to their edges' lines) are too small beyond a
        # corner; the bounding square's exact distance keeps the anti-aliasing inside the box.
        sdf = np.maximum(_shape_sdf(obj.shape, ys, xs, half), _box_sdf(ys, xs, half, half))
        alpha = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]
        window = canvas[r0:r1, c0:c1]
        canvas[r0:r1, c0:c1] = (
            window * (1 - alpha) + np.asarray(COLOUR_RGB[obj.colour], np.float64) * alpha
        )
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


# --- Captions -------------------------------------------------------------------------------------


def _object_phrase(obj: ShapeObject, rng: np.random.Generator) -> str:
    size_word = SIZE_WORDS[obj.size][int(rng.integers(len(SIZE_WORDS[obj.size])))]
    cell_word = CELL_WORDS[obj.cell][int(rng.integers(len(CELL_WORDS[obj.cell])))]
    # edge cells (top, left, right, bottom) have an odd cell index
    prepositions = EDGE_PREPOSITIONS if obj.cell % 2 else CORNER_PREPOSITIONS
    preposition = prepositions[int(rng.integers(len(prepositions)))]
    colour, shape = COLOUR_NAMES[obj.colour], SHAPE_NAMES[obj.shape]
    return f"a {size_word} {colour} {shape} {preposition} the {cell_word}"


def _join(phrases: Sequence[str], oxford_comma: bool) -> str:
    if len(phrases) == 1:
        return phrases[0]
    head = ", ".join(phrases[:-1])
    return f"{head}{',' if oxford_comma and len(phrases) > 2 else ''} and {phrases[-1]}"


def make_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One random phrasing of the whole scene, naming every object's size, colour, shape and cell.

    e.g. "there is a big blue square in the middle and a small red circle at the upper left".
    """
    order = rng.permutation(len(scene.objects))
    phrases = [_object_phrase(scene.objects[i], rng) for i in order]
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    return template.format(objects=_join(phrases, oxford_comma=bool(rng.integers(2))))


def distinct_captions(make: Callable[[Any, np.random.Generator], str], scene: Any, num_captions: int,
                      rng: np.random.Generator) -> list[str]:
    """`num_captions` different captions `make(scene, rng)` of one scene (of any world)."""
    captions: list[str] = []
    for _ in range(1000 * num_captions):
        caption = make(scene, rng)
        if caption not in captions:
            captions.append(caption)
            if len(captions) == num_captions:
                return captions
    raise RuntimeError(f"found only {len(captions)} different captions for scene {scene.key()!r}")


def make_captions(scene: Scene, num_captions: int, rng: np.random.Generator) -> list[str]:
    """`num_captions` different captions of `scene` (the grammar has >= 72 for any scene)."""
    return distinct_captions(make_caption, scene, num_captions, rng)


def join_in_order(items: Sequence[Any], phrase: Callable[[Any, np.random.Generator], str],
                  joiners: Sequence[str], templates: Sequence[str], rng: np.random.Generator) -> str:
    """The items' phrases told in order ("... then ..."), each joined by a random joiner, in a
    random template with an "{events}" slot: the captions of the worlds where order matters
    (moving_shapes, sounds). Draws phrase, joiner, phrase, ..., then the template."""
    text = phrase(items[0], rng)
    for item in items[1:]:
        text += pick(rng, joiners) + phrase(item, rng)
    return pick(rng, templates).format(events=text)


def in_order_parser(templates: Sequence[str], joiners: Sequence[str], phrase: re.Pattern,
                    item: Callable[..., str]) -> Callable[[str], str | None]:
    """The inverse of `join_in_order`: text -> the items of its phrases joined by "|", or None.

    `phrase` matches one phrase; `item(*phrase.groups())` is its part of the scene key. Case,
    outer whitespace and a final full stop are ignored.
    """
    template_res = [re.compile("^" + re.escape(t).replace(re.escape("{events}"), "(?P<events>.+)") + "$")
                    for t in templates]
    # at one position the longer joiners are tried first: ", then " before " then "
    joiner_re = re.compile(alternation(joiners))

    def parse(text: str) -> str | None:
        text = " ".join(text.lower().strip().rstrip(".").split())
        for template in template_res:
            match = template.match(text)
            if match is None:
                continue
            items = []
            for part in joiner_re.split(match.group("events")):
                found = phrase.fullmatch(part)
                if found is None:
                    break
                items.append(item(*found.groups()))
            else:
                return "|".join(items)
        return None

    return parse


def alternation(words: Sequence[str]) -> str:
    """A regular expression matching any of `words`, longest first (so "top left" is tried
    before "top")."""
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))



_WORD_TO_SIZE = {w: i for i, words in enumerate(SIZE_WORDS) for w in words}
_WORD_TO_CELL = {w: i for i, words in enumerate(CELL_WORDS) for w in words}
_PHRASE_RE = re.compile(
    rf"a ({alternation(_WORD_TO_SIZE)}) ({alternation(COLOUR_NAMES)})"
    rf" ({alternation(SHAPE_NAMES)})"
    rf" (?:{alternation(PREPOSITIONS)}) the ({alternation(_WORD_TO_CELL)})"
)
_TEMPLATE_RES = [
    re.compile("^" + re.escape(t).replace(re.escape("{objects}"), "(?P<objects>.+)") + "$")
    for t in CAPTION_TEMPLATES
]
_LIST_SEPARATOR = re.compile(r",? and |, ")


def parse_caption(text: str) -> str | None:
    """The scene key a caption of this grammar describes, or None if it is not such a caption.

    Accepts every caption `make_caption` writes (and their `mirror_text`), ignoring case, outer
    whitespace and a final full stop. A caption naming two objects in one cell is rejected.
    Used to score generated captions by exact scene match.
    """
    text = " ".join(text.lower().strip().rstrip(".").split())
    for template in _TEMPLATE_RES:
        match = template.match(text)
        if match is None:
            continue
        items = {}
        for phrase in _LIST_SEPARATOR.split(match.group("objects")):
            obj = _PHRASE_RE.fullmatch(phrase)
            if obj is None:
                break
            size, colour, shape, cell = obj.groups()
            cell_id = _WORD_TO_CELL[cell]
            if cell_id in items:
                break
            items[cell_id] = _item(
                cell_id, _WORD_TO_SIZE[size], COLOUR_NAMES.index(colour), SHAPE_NAMES.index(shape)
            )
        else:
            return "|".join(items[c] for c in sorted(items))
    return None


# --- Mirroring (horizontal flip) ------------------------------------------------------------------

_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def mirror_text(text: str) -> str:
    """Swaps the words "left" and "right", so text stays true of a horizontally flipped image."""
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


def mirror_cell(cell: int) -> int:
    """The cell in the same row, on the other side: top left (0) <-> top right (2)."""
    row, col = divmod(cell, 3)
    return row * 3 + (2 - col)


def mirror_scene(scene: Scene) -> Scene:
    """The scene seen in a mirror: cells change column (left <-> right), boxes x -> 1 - x."""
    objects = tuple(
        dataclasses.replace(
            o, cell=mirror_cell(o.cell), box=(o.box[0], 1.0 - o.box[3], o.box[2], 1.0 - o.box[1])
        )
        for o in scene.objects
    )
    return Scene(objects, scene.background)


# --- Questions ------------------------------------------------------------------------------------
# A question refers to an object by a description ("the red circle", "the object at the top left")
# that fits exactly one object of the scene, so every answer is unambiguous. Answers use the
# canonical names (COLOUR_NAMES, SHAPE_NAMES, SIZE_NAMES, CELL_NAMES, COUNT_WORDS, "yes"/"no",
# "<colour> <shape>"/"nothing"), a small closed vocabulary.

_PROPERTIES = ("size", "colour", "shape", "cell")
_RELATIONS = (("left of", 0, -1), ("right of", 0, 1), ("above", -1, 0), ("below", 1, 0))


def _matches(obj: ShapeObject, description: dict[str, int]) -> bool:
    return all(getattr(obj, name) == value for name, value in description.items())


def _noun_phrase(description: dict[str, int]) -> str:
    """{"size": 1, "colour": 0} -> "large red object"; {"shape": 0, "cell": 4} -> "circle at the
    center"."""
    words = []
    if "size" in description:
        words.append(SIZE_NAMES[description["size"]])
    if "colour" in description:
        words.append(COLOUR_NAMES[description["colour"]])
    words.append(SHAPE_NAMES[description["shape"]] if "shape" in description else "object")
    phrase = " ".join(words)
    if "cell" in description:
        phrase += f" at the {CELL_NAMES[description['cell']]}"
    return phrase


def _with_article(noun_phrase: str) -> str:
    return ("an " if noun_phrase[0] in "aeiou" else "a ") + noun_phrase


def _unique_descriptions(scene: Scene, obj: ShapeObject, exclude: str) -> list[dict[str, int]]:
    """Every description of `obj` (a subset of its properties but `exclude`) that fits it alone."""
    names = [p for p in _PROPERTIES if p != exclude]
    found = []
    for r in range(1, len(names) + 1):
        for subset in itertools.combinations(names, r):
            description = {name: getattr(obj, name) for name in subset}
            if sum(_matches(o, description) for o in scene.objects) == 1:
                found.append(description)
    return found


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """One of `options`, uniformly."""
    return options[int(rng.integers(len(options)))]



def _mentions_heldout(description: dict[str, int], heldout: frozenset[tuple[int, int]]) -> bool:
    return (description.get("colour"), description.get("shape")) in heldout


def _ask(
    qtype: str, scene: Scene, rng: np.random.Generator, forbidden: frozenset
) -> tuple[str, str] | None:
    """One (question, answer) of type `qtype` about `scene`, or None if the scene allows none."""
    objects = scene.objects
    if qtype in ("colour", "shape", "size", "position"):
        asked = "cell" if qtype == "position" else qtype
        candidates = [
            (o, d) for o in objects for d in _unique_descriptions(scene, o, exclude=asked)
        ]
        if not candidates:
            return None
        obj, description = pick(rng, candidates)
        noun = _noun_phrase(description)
        if qtype == "colour":
            return f"what colour is the {noun}?", COLOUR_NAMES[obj.colour]
        if qtype == "shape":
            if list(description) == ["cell"]:
                return f"what shape is at the {CELL_NAMES[obj.cell]}?", SHAPE_NAMES[obj.shape]
            return f"what shape is the {noun}?", SHAPE_NAMES[obj.shape]
        if qtype == "size":
            return f"what size is the {noun}?", SIZE_NAMES[obj.size]
        return f"where is the {noun}?", CELL_NAMES[obj.cell]

    if qtype == "count":
        # half the time about an object that is there (so the answer is rarely "zero")
        kind = pick(
            rng, (("shape",), ("colour",), ("colour", "shape"), ("size", "shape"), ("size",))
        )
        for _ in range(100):
            if rng.random() < 0.5:
                source = pick(rng, objects)
                description = {name: getattr(source, name) for name in kind}
            else:
                description = {name: int(rng.integers(_num_values(name))) for name in kind}
            if not _mentions_heldout(description, forbidden):
                break
        count = sum(_matches(o, description) for o in objects)
        words = [SIZE_NAMES[description["size"]]] if "size" in description else []
        words += [COLOUR_NAMES[description["colour"]]] if "colour" in description else []
        words.append(SHAPE_PLURALS[description["shape"]] if "shape" in description else "objects")
        return f"how many {' '.join(words)} are there?", COUNT_WORDS[count]

    if qtype == "existence":
        # a fair coin decides the answer, so "yes" and "no" are balanced
        want_yes = rng.random() < 0.5
        for _ in range(100):
            names = [p for p in _PROPERTIES if rng.random() < 0.5] or ["shape"]
            if want_yes:
                source = pick(rng, objects)
                description = {name: getattr(source, name) for name in names}
            else:
                description = {name: int(rng.integers(_num_values(name))) for name in names}
            exists = any(_matches(o, description) for o in objects)
            if exists == want_yes and not _mentions_heldout(description, forbidden):
                return (
                    f"is there {_with_article(_noun_phrase(description))}?",
                    "yes" if exists else "no",
                )
        return None

    if qtype == "relation":
        by_cell = {o.cell: o for o in objects}

        def neighbour(obj: ShapeObject, d_row: int, d_col: int) -> ShapeObject | None:
            row, col = divmod(obj.cell, 3)
            row, col = row + d_row, col + d_col
            return by_cell.get(row * 3 + col) if 0 <= row < 3 and 0 <= col < 3 else None

        pairs = [(o, rel) for o in objects for rel in _RELATIONS]
        # half the time a pair with something there (otherwise "nothing" would dominate)
        occupied = [(o, rel) for o, rel in pairs if neighbour(o, rel[1], rel[2]) is not None]
        obj, (words, d_row, d_col) = pick(
            rng, occupied if occupied and rng.random() < 0.5 else pairs
        )
        description = pick(rng, _unique_descriptions(scene, obj, exclude=""))
        other = neighbour(obj, d_row, d_col)
        answer = (
            "nothing"
            if other is None
            else f"{COLOUR_NAMES[other.colour]} {SHAPE_NAMES[other.shape]}"
        )
        return f"what is {words} the {_noun_phrase(description)}?", answer
    raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")


def _num_values(name: str) -> int:
    return {
        "size": len(SIZE_NAMES),
        "colour": len(COLOUR_NAMES),
        "shape": len(SHAPE_NAMES),
        "cell": 9,
    }[name]


def make_questions(
    scene: Scene,
    num_questions: int,
    rng: np.random.Generator,
    forbidden_pairs: frozenset[tuple[int, int]] = frozenset(),
) -> list[tuple[str, str, str]]:
    """`num_questions` (question, answer, question_type) triples about `scene`.

    Question i has type QUESTION_TYPES[i % 7]. Only a "position" question can be impossible (when
    no description without the cell fits exactly one object, e.g. two large red circles); it is then
    replaced by a "colour" question. Questions never name a (colour index, shape index) pair of
    `forbidden_pairs` (the held-out pairs, outside `compositional_test`).
    """
    questions = []
    for i in range(num_questions):
        qtype = QUESTION_TYPES[i % len(QUESTION_TYPES)]
        qa = _ask(qtype, scene, rng, forbidden_pairs)
        if qa is None:
            qtype = "colour"
            qa = _ask(qtype, scene, rng, forbidden_pairs)
        questions.append((qa[0], qa[1], qtype))
    return questions


# --- One example ----------------------------------------------------------------------------------


def example_rng(config: Any, split: str, index: int) -> np.random.Generator:
    """The generator of example `index` of `split`: seeded by (config.seed, split id, index).

    The same for every synthetic world (`config` is any world config with a `seed`)."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0; got {index}")
    return np.random.default_rng(np.random.SeedSequence([config.seed, _SPLIT_IDS[split], index]))


def draw_split_scene(sample: Callable[..., Any], split_of: Callable[[Any, Any], str], config: Any, split: str,
                     rng: np.random.Generator) -> Any:
    """`sample(config, rng, with_heldout)` until `split_of(scene, config)` is `split` (any world)."""
    for _ in range(10_000):
        scene = sample(config, rng, with_heldout=split == "compositional_test")
        if split_of(scene, config) == split:
            return scene
    raise RuntimeError(
        f"no scene of split {split!r} in 10000 draws: is {type(config).__name__} {config} too narrow?"
    )


def sample_split_scene(config: ShapesConfig, split: str, rng: np.random.Generator) -> Scene:
    """A random scene of `split`: resampled until `split_of_scene` agrees (10 tries on average)."""
    return draw_split_scene(sample_scene, split_of_scene, config, split, rng)


def generate_example(config: ShapesConfig, split: str, index: int) -> dict[str, Any]:
    """Example `index` of `split`: a deterministic function of (config.seed, split, index).

    Returns a dict with (n = number of objects, S = config.image_size):
      image           uint8 [S, S, 3]
      captions        list[str]  (config.num_captions, all different)
      scene           Scene
      scene_key       str        (scene.key())
      questions, answers, question_types   list[str] (config.num_questions each)
      label           int        (class of the largest object; see class_names())
      boxes           float32 [n, 4] normalised [y0, x0, y1, x1]
      box_labels      int64 [n]  (class of each object)
    """
    rng = example_rng(config, split, index)
    scene = sample_split_scene(config, split, rng)
    captions = make_captions(scene, config.num_captions, rng)
    forbidden = frozenset() if split == "compositional_test" else config.heldout_ids
    qa = make_questions(scene, config.num_questions, rng, forbidden)
    # the noise is drawn last: its amount depends on the resolution, everything before must not
    image = render_scene(scene, config.image_size, noise_rng=rng)
    return {
        "image": image,
        "captions": captions,
        "scene": scene,
        "scene_key": scene.key(),
        "questions": [q for q, _, _ in qa],
        "answers": [a for _, a, _ in qa],
        "question_types": [t for _, _, t in qa],
        "label": scene_label(scene),
        "boxes": np.array([o.box for o in scene.objects], np.float32).reshape(-1, 4),
        "box_labels": np.array([class_id(o.shape, o.colour) for o in scene.objects], np.int64),
    }
