"""Folder datasets: the manifest readers, every bad-data rule, the all-or-nothing build, training.

Every file is made by the test: good photos (random pixels), and each way a file can be bad.
"""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from mmjax.data import folder
from mmjax.data.build import main as build_main
from mmjax.data.folder import BadDataError, BuildOptions, build_folder_dataset, load_folder_split, split_of


def save(path, image: Image.Image, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **kwargs)


def photo(seed, size=(40, 30), mode="RGB"):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(pixels, "RGB")


def write_manifest(root, rows, kind="jsonl"):
    if kind == "jsonl":
        (root / "captions.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    else:
        lines = ["image,caption,label"] + [f'{r["image"]},"{r["caption"]}",{r.get("label", "")}' for r in rows]
        (root / "captions.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def messy_folder(tmp_path):
    """A folder with good images and one of every kind of bad data."""
    root = tmp_path / "photos"
    for i in range(6):
        save(str(root / "good" / f"{i}.jpg"), photo(i), quality=95)
    save(str(root / "grey.png"), photo(10, mode="L"))
    rgba = photo(11).convert("RGBA")
    rgba.putpixel((0, 0), (10, 20, 30, 0))  # one fully transparent pixel
    save(str(root / "rgba.png"), rgba)
    save(str(root / "cmyk.jpg"), photo(12, mode="CMYK"))
    save(str(root / "palette.png"), photo(13).convert("P"))
    Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)).save(root / "deep.png")
    save(str(root / "tiny.png"), photo(14, size=(4, 3)))
    (root / "empty.jpg").write_bytes(b"")
    (root / "garbage.jpg").write_bytes(b"this is not a picture at all" * 10)
    good_png = io.BytesIO()
    photo(15).save(good_png, format="PNG")
    (root / "truncated.png").write_bytes(good_png.getvalue()[: len(good_png.getvalue()) // 2])
    rows = [{"image": f"good/{i}.jpg", "caption": [f"photo number {i}", f"another view {i}"], "label": "cat" if i % 2 else "dog"}
            for i in range(6)]
    rows += [
        {"image": "grey.png", "caption": "a grey photo", "label": "dog"},
        {"image": "rgba.png", "caption": "a see-through photo", "label": "cat"},
        {"image": "cmyk.jpg", "caption": "a print photo", "label": "dog"},
        {"image": "palette.png", "caption": "a few colours", "label": "cat"},
        {"image": "deep.png", "caption": "sixteen bits", "label": "dog"},
        {"image": "tiny.png", "caption": "a very small picture", "label": "cat"},
        {"image": "empty.jpg", "caption": "nothing", "label": "dog"},
        {"image": "garbage.jpg", "caption": "not an image", "label": "dog"},
        {"image": "truncated.png", "caption": "half a file", "label": "cat"},
        {"image": "missing.jpg", "caption": "never there", "label": "cat"},
        {"image": "good/0.jpg", "caption": ["photo number 0", "listed twice"], "label": "dog"},  # a duplicate
        {"image": "good/1.jpg", "caption": "  ", "label": "cat"},  # an empty caption (merged: still has others)
        {"image": "../outside.jpg", "caption": "escapes the folder"},
        {"image": "good/2.jpg", "caption": " ".join(["very"] * 60) + " long caption", "label": "dog"},
        '{"image": "broken.jpg", "caption": ',  # not JSON
        {"caption": "no image field"},
    ]
    write_manifest(root, rows)
    return root


def test_every_bad_data_rule_is_applied_and_counted(messy_folder, tmp_path):
    output = tmp_path / "data"
    options = BuildOptions(image_size=16, validation_fraction=0.3, text_len=32, vocab_size=64)
    summary = build_folder_dataset(str(messy_folder), str(output), "messy", options)
    reasons = {s["path"]: s["reason"] for s in summary.skipped_examples}
    last_line = len((messy_folder / "captions.jsonl").read_text().splitlines())  # the line without "image"
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["garbage.jpg"].startswith("cannot be decoded as an image")
    assert reasons["truncated.png"].startswith("cannot be decoded as an image")
    assert reasons["missing.jpg"] == "listed in the manifest but missing"
    assert reasons["../outside.jpg"].startswith("outside the input folder")
    assert reasons[f"captions.jsonl line {last_line - 1}"].startswith("not valid JSON")
    assert reasons[f"captions.jsonl line {last_line}"] == 'no "image" path'
    assert summary.skipped == 7
    assert summary.converted == 5 and set(summary.converted_modes) == {"L", "RGBA", "CMYK", "P", "I;16"}
    assert summary.upscaled == 1  # tiny.png (4 x 3): kept, resized up, since no --min-size is given
    assert summary.duplicates == 3 and summary.empty_captions == 1
    assert summary.truncated == 1
    assert summary.examples == 12 == summary.train + summary.validation

    # What was written: summary.json with the same counts, the class names, RGB squares.
    on_disk = json.loads((output / "messy" / "summary.json").read_text())
    assert {k: on_disk[k] for k in ("examples", "skipped", "truncated", "converted", "duplicates")} == {
        "examples": 12, "skipped": 7, "truncated": 1, "converted": 5, "duplicates": 3}
    assert json.loads((output / "messy" / "class_names.json").read_text()) == ["cat", "dog"]
    examples = {}
    for split in ("train", "validation"):
        source = load_folder_split(str(output), "messy", split)
        examples.update({e["scene_key"].decode(): e for e in (source[i] for i in range(len(source)))})
    assert set(examples) == {f"good/{i}.jpg" for i in range(6)} | {"grey.png", "rgba.png", "cmyk.jpg",
                                                                   "palette.png", "deep.png", "tiny.png"}
    assert all(e["image"].shape == (16, 16, 3) and e["image"].dtype == np.uint8 for e in examples.values())
    assert [c.decode() for c in examples["good/0.jpg"]["captions"]] == ["photo number 0", "another view 0", "listed twice"]
    long_caption = examples["good/2.jpg"]["captions"][-1].decode()
    assert long_caption.startswith("very very") and "long caption" not in long_caption  # cut at a word
    assert examples["good/1.jpg"]["label"] == 0 and examples["good/0.jpg"]["label"] == 1  # cat, dog
    # Each image is in the split its path hashes to.
    validation = load_folder_split(str(output), "messy", "validation")
    held_out = {validation[i]["scene_key"].decode() for i in range(len(validation))}
    assert held_out and held_out == {key for key in examples if split_of(key, 0, 0.3) == "validation"}


def test_strict_names_the_first_bad_file_and_a_minimum_size_skips_small_images(messy_folder, tmp_path):
    with pytest.raises(BadDataError, match=r"^captions.jsonl line 19: outside the input folder|^\.\./outside.jpg: outside"):
        build_folder_dataset(str(messy_folder), str(tmp_path / "strict"), "messy",
                             BuildOptions(image_size=16, strict=True, vocab_size=64))
    assert not (tmp_path / "strict" / "messy").exists()
    summary = build_folder_dataset(str(messy_folder), str(tmp_path / "sized"), "messy",
                                   BuildOptions(image_size=16, min_size=10, vocab_size=64))
    assert any(s["path"] == "tiny.png" and "smaller than --min-size 10" in s["reason"] for s in summary.skipped_examples)


def test_rgba_is_composited_on_white_and_16_bit_scaled_to_8():
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (200, 100, 50, 255))
    assert np.asarray(folder.to_rgb(rgba)).tolist() == [[[255, 255, 255], [200, 100, 50]]]
    deep = Image.fromarray(np.array([[0, 65535]], np.uint16))
    assert np.asarray(folder.to_rgb(deep))[0, :, 0].tolist() == [0, 255]


def test_csv_and_jsonl_manifests_give_the_same_dataset(tmp_path):
    rows = [{"image": f"{i}.png", "caption": f"picture {i}", "label": str(i % 3)} for i in range(8)]
    for kind in ("jsonl", "csv"):
        root = tmp_path / kind
        for i in range(8):
            save(str(root / f"{i}.png"), photo(i))
        write_manifest(root, rows, kind)
        build_folder_dataset(str(root), str(tmp_path / f"out_{kind}"), "pictures", BuildOptions(image_size=8, vocab_size=40))
    jsonl, csv = (load_folder_split(str(tmp_path / f"out_{k}"), "pictures", "train") for k in ("jsonl", "csv"))
    assert len(jsonl) == len(csv) and sorted(jsonl[i]["scene_key"] for i in range(len(jsonl))) == sorted(
        csv[i]["scene_key"] for i in range(len(csv)))
    # Integer labels sort as numbers.
    assert json.loads((tmp_path / "out_csv" / "pictures" / "class_names.json").read_text()) == ["0", "1", "2"]
    # The same folder and seed give the same dataset, byte for byte.
    build_folder_dataset(str(tmp_path / "jsonl"), str(tmp_path / "again"), "pictures", BuildOptions(image_size=8, vocab_size=40))
    files = sorted((tmp_path / "out_jsonl" / "pictures" / "1.0.0").glob("*.array_record*"))
    assert files and [f.read_bytes() for f in files] == [
        (tmp_path / "again" / "pictures" / "1.0.0" / f.name).read_bytes() for f in files]
    assert (tmp_path / "out_jsonl" / "pictures" / "tokenizer.model").read_bytes() == (
        tmp_path / "again" / "pictures" / "tokenizer.model").read_bytes()


def test_an_interrupted_build_leaves_nothing_and_the_next_one_starts_clean(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    for i in range(5):
        save(str(root / f"{i}.png"), photo(i))
    write_manifest(root, [{"image": f"{i}.png", "caption": f"photo {i}"} for i in range(5)])
    output = tmp_path / "data"
    real_load, calls = folder.load_image, []

    def load_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing the training split
        return real_load(*args, **kwargs)

    monkeypatch.setattr(folder, "load_image", load_then_crash)
    with pytest.raises(KeyboardInterrupt):
        build_folder_dataset(str(root), str(output), "photos", BuildOptions(image_size=8, vocab_size=40))
    assert os.listdir(output) == []  # no dataset, no staging folder
    monkeypatch.setattr(folder, "load_image", real_load)
    (output / ".photos.incomplete-12345").mkdir()  # what a kill -9 would have left
    build_folder_dataset(str(root), str(output), "photos", BuildOptions(image_size=8, vocab_size=40))
    assert sorted(os.listdir(output)) == ["photos"]
    with pytest.raises(FileExistsError, match="already exists: pass --overwrite"):
        build_folder_dataset(str(root), str(output), "photos", BuildOptions(image_size=8, vocab_size=40))


def test_the_command_line_prints_a_summary_or_one_error_line(tmp_path, capsys):
    root = tmp_path / "photos"
    for i in range(4):
        save(str(root / f"{i}.png"), photo(i))
    write_manifest(root, [{"image": f"{i}.png", "caption": f"photo {i}"} for i in range(4)] +
                   [{"image": "gone.png", "caption": "lost"}])
    assert build_main(["--input", str(root), "--output", str(tmp_path / "data"), "--name", "photos",
                       "--image-size", "8", "--vocab-size", "40"]) == 0
    out = capsys.readouterr().out
    assert "Built " in out and "4 examples" in out and "skipped gone.png: listed in the manifest but missing" in out
    assert build_main(["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "data"), "--name", "x"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --input ") and err.endswith("is not a folder") and "\n" not in err
    assert build_main(["--input", str(root), "--output", str(tmp_path / "data"), "--name", "Bad-Name"]) == 1
    assert "--name 'Bad-Name': a dataset name is lower-case letters" in capsys.readouterr().err


def test_a_folder_dataset_trains_and_evaluates_by_name(tmp_path):
    from mmjax.training.loop import train_and_evaluate
    from tests.training.test_loop import tiny_config

    root = tmp_path / "photos"
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    rows = []
    for i in range(48):
        name = list(colours)[i % 3]
        noise = np.random.default_rng(i).integers(0, 30, (16, 16, 3))
        save(str(root / f"{i}.png"), Image.fromarray((np.array(colours[name]) + noise).clip(0, 255).astype(np.uint8)))
        rows.append({"image": f"{i}.png", "caption": [f"a {name} square", f"something {name}"], "label": name})
    write_manifest(root, rows)
    build_folder_dataset(str(root), str(tmp_path / "data"), "colours",
                         BuildOptions(image_size=16, validation_fraction=0.25, vocab_size=48, text_len=8))
    config = tiny_config(tmp_path / "data", num_steps=4)
    config.data.name = "colours"
    config.data.image_size = 16
    config.data.text_len = 8
    config.data.flip_probability = 0.0
    config.model.image.patch_size = 8
    config.eval.split = config.eval.during_training_split = "validation"
    config.mesh.data = 1
    config.batch_size = 8
    results = train_and_evaluate(config, str(tmp_path / "run"))
    assert 0.0 <= results["i2t_r1"] <= 1.0 and 0.0 <= results["zero_shot_top1"] <= 1.0
    assert os.path.exists(tmp_path / "run" / "retrieval_image_to_text.png")

    # Wrong sizes and missing splits are named with the fix.
    config.data.image_size = 32
    with pytest.raises(ValueError, match=r"holds 16 px images but config.data.image_size is 32: set --config.data.image_size=16"):
        train_and_evaluate(config, str(tmp_path / "run2"))
    config.data.image_size = 16
    config.data.flip_probability = 0.5
    with pytest.raises(ValueError, match=r"flip_probability=0.5.*cannot mirror.*set --config.data.flip_probability=0"):
        train_and_evaluate(config, str(tmp_path / "run3"))
    shutil.rmtree(tmp_path / "data" / "colours")
    with pytest.raises(ValueError, match=r"config.data.name=.colours. is not a dataset built in \S+data \(build it with `python -m mmjax.data.build --input DIR --output \S+data --name colours`"):
        train_and_evaluate(config, str(tmp_path / "run4"))
