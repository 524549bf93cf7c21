"""Tables, results.json and the PNG writers, on synthetic data."""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from mmjax.evaluation.report import (
    format_table,
    plot_retrieval_grid,
    plot_text_to_image_grid,
    plot_training_curves,
    read_metrics_jsonl,
    write_results,
)


def assert_valid_png(path, min_colours=2):
    assert os.path.getsize(path) > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    assert rgb.shape[0] > 100 and rgb.shape[1] > 100
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) >= min_colours
    return rgb


def assert_no_temporary_files(directory):
    leftovers = [name for name in os.listdir(directory) if name.endswith(".tmp")]
    assert leftovers == []


def test_format_table_has_headers_rounded_values_and_markdown_separator():
    rows = [
        {"model": "clip-tiny", "i2t_r1": 0.123456, "steps": 1000, "learning_rate": 3e-5},
        {"model": "clip|small", "i2t_r1": np.float32(0.5), "steps": 2000},
    ]
    table = format_table(rows, title="Retrieval")
    lines = table.splitlines()
    assert lines[0] == "Retrieval" and lines[1] == ""
    header, separator, first, second = lines[2:]
    for name in ("model", "i2t_r1", "steps", "learning_rate"):
        assert name in header
    assert "0.1235" in first and "3.000e-05" in first and "1000" in first
    assert "0.5000" in second and "clip\\|small" in second  # pipes escaped for Markdown
    # Markdown: text columns left-aligned, number columns right-aligned
    assert separator.split("|")[1].strip().startswith(":") and separator.split("|")[2].strip().endswith(":")
    # aligned: every line equally long
    assert len({len(line) for line in lines[2:]}) == 1


def test_format_table_keeps_the_requested_columns_in_order():
    table = format_table([{"a": 1.0, "b": 2.0, "c": 3.0}], columns=["c", "a"])
    assert table.splitlines()[0].split() == ["|", "c", "|", "a", "|"]
    assert "2.0000" not in table


def test_write_results_round_trips_with_sorted_keys(tmp_path):
    results = {"t2i_r1": np.float32(0.25), "i2t_r1": 0.5, "num_images": np.int64(1000),
               "zero_shot": {"top1": np.float64(0.75)}, "diverged": float("nan")}
    path = write_results(str(tmp_path / "run"), results)
    assert path == str(tmp_path / "run" / "results.json")
    with open(path) as file:
        text = file.read()
    loaded = json.loads(text)
    assert loaded == {"t2i_r1": 0.25, "i2t_r1": 0.5, "num_images": 1000, "zero_shot": {"top1": 0.75},
                      "diverged": "nan"}
    assert list(loaded) == sorted(loaded)
    assert_no_temporary_files(tmp_path / "run")


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    write_results(str(tmp_path), {"i2t_r1": 0.5})
    with pytest.raises(TypeError):
        write_results(str(tmp_path), {"i2t_r1": object()})
    with open(tmp_path / "results.json") as file:
        assert json.load(file) == {"i2t_r1": 0.5}
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


def write_metrics_jsonl(path, num_steps=200):
    rng = np.random.default_rng(0)
    with open(path, "w") as file:
        for step in range(1, num_steps + 1):
            row = {"step": step, "loss": 4.0 * math.exp(-step / 80) + 0.1 * rng.random(),
                   "learning_rate": 1e-3 * min(1.0, step / 20), "grad_norm": 1.0 + rng.random(),
                   "logit_scale": 14.3 + step / 100, "examples_per_sec": 300.0}
            file.write(json.dumps(row) + "\n")
            if step % 50 == 0:
                eval_row = {"step": step, "eval/i2t_r1": step / 400, "eval/t2i_r1": step / 500}
                file.write(json.dumps(eval_row) + "\n")
        file.write(json.dumps({"step": num_steps + 1, "loss": "nan"}) + "\n")
        file.write('{"step": 202, "lo')  # the half-written last line of a crashed run


def test_read_metrics_jsonl_skips_a_truncated_line_and_reads_non_finite_values(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_metrics_jsonl(path)
    with pytest.warns(UserWarning, match="not a JSON object"):
        rows = read_metrics_jsonl(str(path))
    assert len(rows) == 200 + 4 + 1
    assert rows[0]["step"] == 1 and "eval/i2t_r1" in rows[50]
    assert math.isnan(rows[-1]["loss"])


def test_plot_training_curves_writes_a_png(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_metrics_jsonl(path)
    out = tmp_path / "plots" / "loss_curve.png"
    with pytest.warns(UserWarning):
        assert plot_training_curves(str(path), str(out)) == str(out)
    assert_valid_png(out, min_colours=5)
    assert_no_temporary_files(tmp_path / "plots")


def test_plot_training_curves_draws_whatever_subset_was_logged(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps({"step": s, "eval/top1": s / 10}) for s in range(3)) + "\n")
    assert_valid_png(plot_training_curves(str(path), str(tmp_path / "eval_only.png")))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_valid_png(plot_training_curves(str(empty), str(tmp_path / "empty.png")))


def test_plot_retrieval_grid_writes_a_png_with_hit_and_miss_colours(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    captions = ["a dog on the grass", "a red car parked on a street", "two people | riding bikes"]
    retrieved = [[f"caption {i}-{j} " + "word " * (5 * j) for j in range(5)] for i in range(3)]
    hits = [[j == i for j in range(5)] for i in range(3)]
    out = tmp_path / "i2t.png"
    assert plot_retrieval_grid(images, captions, retrieved, hits, str(out)) == str(out)
    rgb = assert_valid_png(out, min_colours=10)
    pixels = rgb.reshape(-1, 3).astype(int)
    # some clearly green and some clearly red text pixels
    assert ((pixels[:, 1] > 120) & (pixels[:, 0] < 80) & (pixels[:, 2] < 120)).any()
    assert ((pixels[:, 0] > 180) & (pixels[:, 1] < 90) & (pixels[:, 2] < 90)).any()
    assert_no_temporary_files(tmp_path)


def test_plot_text_to_image_grid_writes_a_png(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8)
    hits = np.array([[True, False, False, True], [False, False, False, False]])
    out = tmp_path / "t2i.png"
    assert plot_text_to_image_grid(["a cat", "a very long caption " * 8], images, hits, str(out)) == str(out)
    assert_valid_png(out, min_colours=10)


def test_text_to_image_grid_without_marks_has_no_red_or_green_borders(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 60, (2, 3, 16, 16, 3), dtype=np.uint8)  # dark: no border colour in them
    marked, plain = tmp_path / "marked.png", tmp_path / "plain.png"
    plot_text_to_image_grid(["a", "b"], images, np.zeros((2, 3), bool), str(marked))
    plot_text_to_image_grid(["a", "b"], images, None, str(plain))
    assert_valid_png(plain)

    def red_pixels(path):
        rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int(np.sum((rgb[..., 0] > 180) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)))

    assert red_pixels(marked) > 1000 and red_pixels(plain) == 0
    with pytest.raises(ValueError, match="retrieved_images has 3 images per row, hits 2"):
        plot_text_to_image_grid(["a", "b"], images, np.zeros((2, 2), bool), str(tmp_path / "x.png"))


def test_grid_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        images = np.zeros((2, 8, 8, 3), np.uint8)
        plot_retrieval_grid(images, ["a"], [["b"]], [[True]], str(tmp_path / "x.png"))
    assert not os.path.exists(tmp_path / "x.png")


def test_write_text_atomically_leaves_only_the_file(tmp_path):
    from mmjax.evaluation.report import write_text_atomically

    path = write_text_atomically(str(tmp_path / "config.json"), '{"a": "é"}')
    assert open(path, encoding="utf-8").read() == '{"a": "é"}'
    assert os.listdir(tmp_path) == ["config.json"]
