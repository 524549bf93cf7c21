"""Tests of the `moving_shapes` world: determinism, truth of captions and sound against the pixels
and the audio, splits, config validation."""

import dataclasses
import functools
import re

import numpy as np
import pytest

from mmjax.data import moving_shapes as M
from mmjax.data import shapes as S
from mmjax.data import sounds

CONFIG = M.MovingShapesConfig()  # 8 frames of 32 px, 1 s at 8 fps, 8 kHz sound
NUM_PER_SPLIT = 100


@functools.cache
def examples(
    split: str, num: int = NUM_PER_SPLIT, config: M.MovingShapesConfig = CONFIG
) -> list[dict]:
    return [M.generate_example(config, split, i) for i in range(num)]


def all_examples() -> list[dict]:
    return [ex for split in M.SPLITS for ex in examples(split)]


# --- An independent reader of the pixels ----------------------------------------------------------
# It knows the palette and the shapes' geometry, nothing of the scene: it finds the background
# (the median pixel), explains each pixel as a palette colour alpha-blended over it, and measures
# each colour's coverage, centroid, area and shape.

PALETTE = np.asarray(S.COLOUR_RGB, np.float64)  # [colours, 3]


def coverage_by_colour(frame: np.ndarray) -> np.ndarray:
    """uint8 [S, S, 3] -> [colours, S, S]: how much of each pixel each palette colour covers.

    A pixel is given to the one colour that, blended over the background with the best alpha,
    explains it best (edge pixels are such blends; two objects never share a pixel).
    """
    pixels = frame.reshape(-1, 3).astype(np.float64)
    background = np.median(pixels, axis=0)
    offset = pixels - background  # [p, 3]
    direction = PALETTE - background  # [colours, 3]
    alpha = np.clip(offset @ direction.T / (direction**2).sum(-1), 0.0, 1.0)  # [p, colours]
    residual = ((offset[:, None, :] - alpha[..., None] * direction[None]) ** 2).sum(-1)
    best = np.argmin(residual, axis=1)  # [p]
    coverage = np.zeros_like(alpha)
    coverage[np.arange(len(best)), best] = alpha[np.arange(len(best)), best]
    size = frame.shape[0]
    return coverage.T.reshape(len(PALETTE), size, size)


def centroid(coverage: np.ndarray) -> np.ndarray:
    """[S, S] coverage -> (y, x) of its coverage-weighted centre, in pixels."""
    weights = np.where(coverage > 0.1, coverage, 0.0)
    ys, xs = np.mgrid[: coverage.shape[0], : coverage.shape[1]] + 0.5
    return np.array([(weights * ys).sum(), (weights * xs).sum()]) / weights.sum()


def inside(shape: str, y: np.ndarray, x: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Whether offsets (y, x) from a shape's centre lie inside it (half side `half`); the triangle
    points up with its base on the bottom of its square, the cross's bars are 0.6 * half wide."""
    if shape == "circle":
        return y**2 + x**2 <= half**2
    if shape == "square":
        return (np.abs(y) <= half) & (np.abs(x) <= half)
    if shape == "triangle":
        return (y <= half) & (2 * np.abs(x) <= y + half)
    if shape == "cross":
        bar = 0.3 * half
        vertical = (np.abs(x) <= bar) & (np.abs(y) <= half)
        return vertical | ((np.abs(y) <= bar) & (np.abs(x) <= half))
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= half
    raise AssertionError(shape)


# Area of each shape over its half side squared: the cross is two bars of 2 x 0.6 half sides.
AREA_PER_HALF_SQUARED = {"circle": np.pi, "square": 4.0, "triangle": 2.0, "cross": 2.04,
                         "diamond": 2.0}  # fmt: skip


def shape_misfits(coverage: np.ndarray) -> dict[str, tuple[float, float]]:
    """[S, S] coverage of one object -> {shape: (misfit, half side in pixels)}.

    Each shape is placed where the coverage's moments put it (its area gives the half side, its
    centroid the centre; a triangle's centroid lies a third of the half side below its box's
    centre), its exact coverage is computed by 8 x 8 supersampling of each pixel, and the misfit
    is the summed absolute difference over the object's area.
    """
    rows, cols = np.nonzero(coverage > 0.5)
    r0, r1 = max(rows.min() - 2, 0), min(rows.max() + 3, coverage.shape[0])
    c0, c1 = max(cols.min() - 2, 0), min(cols.max() + 3, coverage.shape[1])
    window = np.where(coverage[r0:r1, c0:c1] > 0.05, coverage[r0:r1, c0:c1], 0.0)  # [h, w]
    area = window.sum()
    cy, cx = centroid(np.pad(window, ((r0, 0), (c0, 0))))
    sub = (np.arange(8) + 0.5) / 8
    ys = (np.arange(r0, r1)[:, None] + sub[None, :]).reshape(-1)  # [h * 8] sample rows
    xs = (np.arange(c0, c1)[:, None] + sub[None, :]).reshape(-1)
    misfits = {}
    for name in S.SHAPE_NAMES:
        half = np.sqrt(area / AREA_PER_HALF_SQUARED[name])
        centre_y = cy - half / 3 if name == "triangle" else cy
        samples = inside(name, ys[:, None] - centre_y, xs[None, :] - cx, half)
        model = samples.reshape(r1 - r0, 8, c1 - c0, 8).mean((1, 3))
        misfits[name] = (float(np.abs(model - window).sum() / area), float(half))
    return misfits


def read_clip(video: np.ndarray) -> str:
    """The scene key the pixels show: each colour's object, its size, shape and direction, in the
    order the objects move. Checks on the way that each object moves in one slot only."""
    num_frames, size = video.shape[0], video.shape[1]
    coverage = np.stack([coverage_by_colour(frame) for frame in video])  # [T, colours, S, S]
    colours = [c for c in range(len(PALETTE)) if (coverage[0, c] > 0.5).sum() >= 4]
    n = len(colours)
    slot_frames = num_frames // n
    found = {}  # slot -> item
    for colour in colours:
        # every object is visible in every frame
        assert all((coverage[t, colour] > 0.5).sum() >= 4 for t in range(num_frames))
        centres = np.stack([centroid(coverage[t, colour]) for t in range(num_frames)])  # [T, 2]
        steps = np.diff(centres, axis=0)  # [T - 1, 2]
        moving = np.abs(steps).max(-1) > 0.25
        # it moves during one slot's steps only, a straight line at a constant speed
        moving_slots = {int(t) // slot_frames for t in np.nonzero(moving)[0]}
        assert len(moving_slots) == 1, (colour, steps)
        (slot,) = moving_slots
        in_slot = [slot * slot_frames + i for i in range(slot_frames - 1)]
        assert set(np.nonzero(moving)[0]) == set(in_slot), (colour, steps)
        total = centres[-1] - centres[0]
        even_steps = np.broadcast_to(total / (slot_frames - 1), steps[in_slot].shape)
        np.testing.assert_allclose(steps[in_slot], even_steps, atol=0.3)
        # direction: the axis and sign of the move; its length is 0.375 of the side
        axis = int(np.argmax(np.abs(total)))
        assert abs(total[1 - axis]) < 0.3 and abs(abs(total[axis]) / size - 0.375) < 0.02, total
        direction = (("up", "down"), ("left", "right"))[axis][int(total[axis] > 0)]
        # shape: the best fit to the first frame; size: the half side its area gives that shape
        misfits = shape_misfits(coverage[0, colour])
        shape = min(misfits, key=lambda name: misfits[name][0])
        runner_up = min(misfit for name, (misfit, _) in misfits.items() if name != shape)
        assert misfits[shape][0] < 0.2 and runner_up > misfits[shape][0] + 0.05, misfits
        half = misfits[shape][1] / size
        # half sides: small in [0.08, 0.10], large in [0.14, 0.17] of the side
        assert 0.07 < half < 0.11 or 0.13 < half < 0.18, (half, shape)
        size_name = "large" if half > 0.12 else "small"
        assert slot not in found, "two objects move in one slot"
        found[slot] = f"{size_name}:{S.COLOUR_NAMES[colour]}:{shape}:{direction}"
    return "|".join(found[k] for k in sorted(found))


# --- Determinism ----------------------------------------------------------------------------------


@pytest.mark.parametrize("split", M.SPLITS)
def test_same_seed_gives_same_bytes(split):
    for index in (0, 7, 123):
        a, b = M.generate_example(CONFIG, split, index), M.generate_example(CONFIG, split, index)
        assert set(a) == set(b)
        for key, value in a.items():
            if isinstance(value, np.ndarray):
                assert value.dtype == b[key].dtype and value.tobytes() == b[key].tobytes(), key
            else:
                assert value == b[key], key


def test_different_seed_or_index_gives_different_examples():
    other = dataclasses.replace(CONFIG, seed=1)
    for index in range(5):
        a, b = M.generate_example(CONFIG, "train", index), M.generate_example(other, "train", index)
        assert a["video"].tobytes() != b["video"].tobytes()
        assert a["captions"] != b["captions"]
    videos = [ex["video"].tobytes() for ex in examples("train")[:50]]
    assert len(set(videos)) == 50
    keys = [ex["scene_key"] for ex in examples("train")[:50]]
    assert len(set(keys)) > 30  # one-object clips are few (180 keys outside compositional_test)


def test_known_example_is_stable():
    """A fingerprint of example 0: fails if any change alters the generated scenes or captions."""
    example = M.generate_example(CONFIG, "train", 0)
    assert example["scene_key"] == "large:red:diamond:left|small:yellow:triangle:left"
    assert example["captions"][0] == (
        "a big red diamond moves left, and after that a small yellow triangle travels to the left "
        "on a dark background"
    )


def test_scenes_captions_and_sound_do_not_depend_on_resolution():
    config = dataclasses.replace(CONFIG, image_size=64)
    for index in range(3):
        example, small = M.generate_example(config, "test", index), examples("test")[index]
        assert example["video"].shape == (8, 64, 64, 3)
        for key in ("scene_key", "captions", "sound_key", "label"):
            assert example[key] == small[key]
        np.testing.assert_array_equal(example["object_start_box"], small["object_start_box"])
        assert example["audio"].tobytes() == small["audio"].tobytes()


# --- Structure ------------------------------------------------------------------------------------


def test_example_has_documented_fields_and_types():
    for ex in examples("train")[:20] + examples("compositional_test")[:20]:
        n = len(ex["scene"].objects)
        assert CONFIG.min_objects <= n <= CONFIG.max_objects
        assert ex["video"].dtype == np.uint8 and ex["video"].shape == (8, 32, 32, 3)
        assert ex["video"].max() >= 200 and ex["video"].std() > 10  # never all zero
        assert len(ex["captions"]) == CONFIG.num_captions == len(set(ex["captions"]))
        assert ex["scene_key"] == ex["scene"].key() and ex["sound_key"] == ex["scene"].sound_key()
        for name in ("object_shape", "object_colour", "object_size", "object_direction"):
            assert ex[name].dtype == np.int64 and ex[name].shape == (n,), name
        for name in ("object_start_box", "object_end_box"):
            assert ex[name].dtype == np.float32 and ex[name].shape == (n, 4), name
        assert ex["background"].dtype == np.uint8 and ex["background"].shape == (3,)
        assert ex["audio"].dtype == np.int16 and ex["audio"].shape == (CONFIG.num_samples,)
        assert max(ex["scene"].background) <= 70  # dark
        # the objects of a clip have different colours
        assert len(set(ex["object_colour"].tolist())) == n


def test_scene_from_arrays_rebuilds_the_scene():
    for ex in all_examples():
        rebuilt = M.scene_from_arrays(ex)
        assert rebuilt.key() == ex["scene_key"] and rebuilt.background == ex["scene"].background
        for got, want in zip(rebuilt.objects, ex["scene"].objects):
            np.testing.assert_allclose(got.start_box, want.start_box, atol=1e-6)
            np.testing.assert_allclose(got.end_box, want.end_box, atol=1e-6)


def test_class_names_follow_class_id_and_label_is_the_first_mover():
    names = M.class_names()
    assert len(names) == 20 == len(set(names))
    assert names[M.class_id(S.SHAPE_NAMES.index("cross"), M.DIRECTION_NAMES.index("up"))] == (
        "cross moving up"
    )
    for ex in all_examples():
        first = ex["scene"].objects[0]
        assert ex["label"] == M.class_id(first.shape, first.direction)


def test_moves_follow_the_physics():
    """From the structured truth: fixed distance, straight path inside the image, one mover at a
    time, and no two boxes ever closer than the minimum gap."""
    for ex in all_examples():
        scene, n = ex["scene"], len(ex["scene"].objects)
        for obj in scene.objects:
            dy, dx = ((0, -1), (0, 1), (-1, 0), (1, 0))[obj.direction]
            moved = np.subtract(obj.end_box, obj.start_box)
            np.testing.assert_allclose(moved, 0.375 * np.array([dy, dx, dy, dx]), atol=1e-12)
            side = obj.start_box[2] - obj.start_box[0]
            assert (0.28 <= side <= 0.34) if obj.size == 1 else (0.16 <= side <= 0.20), obj
        for frame in range(CONFIG.num_frames):
            boxes = [scene.box_at(k, frame, CONFIG.num_frames) for k in range(n)]
            assert all(0.0 < v < 1.0 for box in boxes for v in box), boxes
            if n == 2:
                a, b = boxes
                assert max(a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3]) >= 0.05
        for k in range(n):
            path = [scene.box_at(k, t, CONFIG.num_frames) for t in range(CONFIG.num_frames)]
            moving = [path[t] != path[t + 1] for t in range(CONFIG.num_frames - 1)]
            slot = CONFIG.num_frames // n
            assert moving == [t // slot == k and t % slot != slot - 1 for t in range(len(moving))]
            assert path[0] == scene.objects[k].start_box and path[-1] == scene.objects[k].end_box


# --- Pixels agree with the truth ------------------------------------------------------------------


@pytest.mark.parametrize("size, num", [(32, NUM_PER_SPLIT), (64, 15)])
def test_pixels_show_what_every_caption_says(size, num):
    """The independent reader's key of the video equals the key every caption parses to."""
    config = dataclasses.replace(CONFIG, image_size=size)
    for split in M.SPLITS:
        for ex in examples(split, num, config):
            seen = read_clip(ex["video"])
            for caption in ex["captions"]:
                assert M.parse_caption(caption) == seen, (caption, seen)


def test_first_and_last_frames_are_shapes_renderings_of_the_start_and_end_boxes():
    for ex in examples("validation")[:30]:
        scene = ex["scene"]
        clip = M.render_clip(scene, 32, CONFIG.num_frames)
        for frame, box in ((0, "start_box"), (-1, "end_box")):
            still = S.Scene(
                tuple(
                    S.ShapeObject(o.shape, o.colour, o.size, 4, getattr(o, box))
                    for o in scene.objects
                ),
                scene.background,
            )
            np.testing.assert_array_equal(clip[frame], S.render_scene(still, 32))
        # the stored video is this clip plus background noise of at most 4, new in every frame
        assert np.abs(ex["video"].astype(np.int64) - clip).max() <= 4
        assert ex["video"][0].tobytes() != ex["video"][-1].tobytes()
        differences = [np.abs(ex["video"][t].astype(np.int64) - ex["video"][t + 1]) for t in (0, 3)]
        assert all(d.max() > 0 for d in differences)


# --- Captions -------------------------------------------------------------------------------------


def test_every_caption_parses_back_to_the_scene_key():
    for ex in all_examples():
        assert len(set(ex["captions"])) == len(ex["captions"])
        for caption in ex["captions"]:
            assert M.parse_caption(caption) == ex["scene_key"], caption


def test_single_object_clips_still_get_different_captions():
    config = dataclasses.replace(CONFIG, min_objects=1, max_objects=1, num_captions=20)
    for index in range(5):
        ex = M.generate_example(config, "train", index)
        assert len(ex["scene"].objects) == 1 and len(set(ex["captions"])) == 20


def test_captions_vary_verbs_directions_joiners_and_templates():
    captions = [c for ex in all_examples() for c in ex["captions"]]
    text = " ".join(captions)
    for word in M.VERBS + ("big", "little", "to the left", "upward", "downward", "to the right"):
        assert f" {word} " in f" {text} ", word
    for joiner in M.JOINERS:
        assert joiner in text, joiner
    for template in M.CAPTION_TEMPLATES:
        prefix, suffix = template.split("{events}")
        assert any(c.startswith(prefix) and c.endswith(suffix) for c in captions), template


def test_captions_name_objects_in_move_order():
    ex = next(ex for ex in all_examples() if len(ex["scene"].objects) == 2)
    first, second = (S.COLOUR_NAMES[o.colour] for o in ex["scene"].objects)
    for caption in ex["captions"]:
        assert caption.index(f" {first} ") < caption.index(f" {second} ")


def test_parse_caption_tolerates_case_and_full_stop_and_rejects_others():
    assert M.parse_caption("A Big Red Circle slides To The Left.") == "large:red:circle:left"
    assert M.parse_caption(
        "in this clip a small blue cross goes up, and after that a large white square moves right"
    ) == "small:blue:cross:up|large:white:square:right"
    assert M.parse_caption("a large red circle") is None
    assert M.parse_caption("a large red circle moves sideways") is None
    assert M.parse_caption("a large pink circle moves left") is None
    assert M.parse_caption("a large red circle moves left and a small blue cross moves up") is None
    assert M.parse_caption("") is None


# --- Splits ---------------------------------------------------------------------------------------


def _pairs(scene: M.MovingScene) -> set[tuple[str, str]]:
    return {(S.SHAPE_NAMES[o.shape], M.DIRECTION_NAMES[o.direction]) for o in scene.objects}


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_heldout_pairs_never_appear_outside_compositional_test(split):
    heldout = set(CONFIG.heldout_pairs)
    words = {d: "|".join(w) for d, w in zip(M.DIRECTION_NAMES, M.DIRECTION_WORDS)}
    for ex in examples(split):
        assert not _pairs(ex["scene"]) & heldout
        for caption in ex["captions"]:
            for shape, direction in heldout:
                named = rf"\b{shape} (?:{'|'.join(M.VERBS)}) (?:{words[direction]})\b"
                assert not re.search(named, caption), caption


def test_every_compositional_test_scene_has_a_heldout_pair():
    heldout = set(CONFIG.heldout_pairs)
    for ex in examples("compositional_test"):
        assert _pairs(ex["scene"]) & heldout
        assert M.split_of_scene(ex["scene"], CONFIG) == "compositional_test"


def test_each_scene_belongs_to_the_split_it_was_drawn_for_and_to_no_other():
    keys = {}
    for split in M.SPLITS:
        for ex in examples(split):
            assert M.split_of_scene(ex["scene"], CONFIG) == split
            keys.setdefault(ex["scene_key"], set()).add(split)
    assert all(len(splits) == 1 for splits in keys.values())
    # one-object clips are few, so training repeats them; the split rule still keeps them apart
    assert any(len(ex["scene"].objects) == 1 for ex in examples("test"))


# --- Config validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        ({"image_size": 16}, "image_size", "16"),
        ({"image_size": 32.0}, "image_size", "32.0"),
        ({"num_frames": 7}, "num_frames", "7"),
        ({"num_frames": 2}, "num_frames", "2"),
        ({"fps": 0}, "fps", "0"),
        ({"sample_rate": 4000}, "sample_rate", "4000"),
        ({"min_objects": 0}, "min_objects", "0"),
        ({"min_objects": 2, "max_objects": 1}, "max_objects", "1"),
        ({"max_objects": 3}, "max_objects", "3"),
        ({"num_captions": 0}, "num_captions", "0"),
        ({"seed": -1}, "seed", "-1"),
        ({"heldout_pairs": (("hexagon", "up"),)}, "heldout_pairs", "hexagon"),
        ({"heldout_pairs": (("circle", "sideways"),)}, "heldout_pairs", "sideways"),
        ({"heldout_pairs": (("circle", "up"), ("circle", "up"))}, "heldout_pairs", "duplicates"),
    ],
)
def test_config_validation_names_field_expected_and_actual(kwargs, field, value):
    message = rf"MovingShapesConfig\.{field} must be .*{re.escape(value)}"
    with pytest.raises(ValueError, match=message):
        M.MovingShapesConfig(**kwargs)


def test_config_error_says_what_was_expected():
    with pytest.raises(ValueError, match=r"num_frames must be a multiple of every object count"):
        M.MovingShapesConfig(num_frames=9)
    with pytest.raises(ValueError, match=r"split must be one of"):
        M.generate_example(CONFIG, "training", 0)


# --- Sound track ----------------------------------------------------------------------------------


def slot_rms(audio: np.ndarray, num_slots: int) -> np.ndarray:
    """RMS (full scale 1) of each of `num_slots` equal parts of an int16 track."""
    parts = np.split(audio.astype(np.float64) / 32767, num_slots)
    return np.array([np.sqrt(np.mean(part**2)) for part in parts])


def test_audio_has_the_clips_length_and_sounds_during_every_move():
    for ex in all_examples():
        audio, n = ex["audio"], len(ex["scene"].objects)
        assert audio.dtype == np.int16 and audio.shape == (8000,)  # 8000 Hz * 8 frames / 8 fps
        assert np.all(slot_rms(audio, n) > 0.02), (ex["scene_key"], slot_rms(audio, n))
    config = dataclasses.replace(CONFIG, fps=4, sample_rate=11025)
    assert M.generate_example(config, "train", 0)["audio"].shape == (22050,)


def test_each_sound_lasts_exactly_its_objects_move():
    for ex in [ex for ex in all_examples() if len(ex["scene"].objects) == 2][:20]:
        sound = M.sound_of_scene(ex["scene"], CONFIG)
        for k, event in enumerate(sound.events):
            alone = sounds.render_sound(sounds.SoundScene((event,)), 8000, 8000)
            rms = slot_rms(np.rint(alone * 32767).astype(np.int16), 2)
            assert rms[k] > 0.02 and rms[1 - k] < 0.1 * rms[k], (k, rms)


def test_sound_follows_the_mapping_and_the_sound_key():
    for ex in all_examples():
        scene, n = ex["scene"], len(ex["scene"].objects)
        events = M.sound_of_scene(scene, CONFIG).events
        assert len(events) == n
        for k, (obj, event) in enumerate(zip(scene.objects, events)):
            assert sounds.KIND_NAMES[event.kind] == (
                {"circle": "beep", "square": "buzz", "triangle": "whistle", "cross": "hiss",
                 "diamond": "trill"}[S.SHAPE_NAMES[obj.shape]]
            )  # fmt: skip
            assert event.pitch == (0 if S.SIZE_NAMES[obj.size] == "large" else 1)  # low, high
            assert event.duration == (1 if n == 1 else 0)  # long, short
            assert event.start == pytest.approx(k / n) and event.length == pytest.approx(1 / n)
        assert ex["sound_key"] == "|".join(
            f"{S.SIZE_NAMES[o.size]}:{S.SHAPE_NAMES[o.shape]}" for o in scene.objects
        )


def test_sound_key_ignores_colour_and_direction():
    scene = next(ex["scene"] for ex in all_examples() if len(ex["scene"].objects) == 2)
    recoloured = M.MovingScene(
        tuple(
            dataclasses.replace(o, colour=(o.colour + 1) % 6, direction=0) for o in scene.objects
        ),
        scene.background,
    )
    assert recoloured.sound_key() == scene.sound_key() and recoloured.key() != scene.key()
