"""Writers for what a finished run leaves behind: a results table, results.json and PNG plots.

- `format_table`: rows of results as an aligned plain-text table that is also valid Markdown, so
  the same string goes to the log, the terminal and a README.
- `write_results`: the final metrics as `results.json` (sorted keys, plain floats).
- `read_metrics_jsonl` / `plot_training_curves`: the training log (one JSON object per line, as
  the trainer's metric writer appends it) drawn as loss, evaluation metrics, learning rate, logit
  scale and gradient norm against the step.
- `plot_retrieval_grid` / `plot_text_to_image_grid`: qualitative retrieval examples: a query and
  its top-k results, green where the result is relevant (a hit) and red where it is not.

Every file is written atomically: the bytes go to a temporary file in the destination folder,
which then replaces the destination with `os.replace` (atomic on POSIX and Windows). A crash or a
full disk mid-write leaves the previous file, never half of a new one, and no temporary file.

Plots use Matplotlib's object API (`Figure` + the Agg canvas) rather than `pyplot`: no global
backend is switched, no figure is registered with a GUI, and nothing leaks between calls.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import textwrap
import warnings
from typing import IO, Any, Callable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

HIT_COLOR = "#1a9850"  # green
MISS_COLOR = "#d73027"  # red
HIT_MARK, MISS_MARK = "✓", "✗"  # also shown, for readers who cannot tell red from green
# Small images are enlarged by an integer factor to at least this many pixels per side, so that
# each source pixel becomes a uniform square block in the PNG.
MIN_DISPLAY_PIXELS = 128
_DPI = 100


# --- tables and results.json -----------------------------------------------------------------------


def format_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None
) -> str:
    """Formats rows of values as an aligned table that is valid Markdown.

    Floats get 4 decimals (scientific notation below 1e-3 or from 1e6 on, so a learning rate of 3e-5
    does not print as 0.0000); a missing value is an empty cell. Columns whose values are all
    numbers are right-aligned (and marked `---:` for Markdown), others left-aligned.

    Args:
      rows: one dict per table row.
      columns: the columns, in order; by default every key, in order of first appearance.
      title: an optional line above the table.

    Returns:
      The table as a string, e.g.

        | model | i2t_r1 |
        | :---- | -----: |
        | clip  | 0.5123 |
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    columns = [str(column) for column in columns]
    values = [[_as_scalar(row.get(column)) for column in columns] for row in rows]
    cells = [[_format_cell(value) for value in line] for line in values]
    numeric = [
        all(_is_number(line[i]) for line in values if line[i] is not None) for i in range(len(columns))
    ]
    header = [_escape(column) for column in columns]
    widths = [max([3, len(name)] + [len(line[i]) for line in cells]) for i, name in enumerate(header)]

    def render(values: Sequence[str]) -> str:
        padded = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric)
        ]
        return "| " + " | ".join(padded) + " |"

    separator = ["-" * (width - 1) + ":" if right else ":" + "-" * (width - 1)
                 for width, right in zip(widths, numeric)]
    lines = [render(header), render(separator)] + [render(line) for line in cells]
    if title:
        lines = [title, ""] + lines
    return "\n".join(lines)


def results_filename(split: str) -> str:
    """Where a split's results go: results.json for `test`, results_<split>.json for the others,
    so evaluating a second split (eval.py --config.eval.split=...) keeps the test numbers."""
    return "results.json" if split == "test" else f"results_{split}.json"


def write_results(workdir: str, results: dict[str, Any], filename: str = "results.json") -> str:
    """Writes `results` to `<workdir>/<filename>`, atomically, with sorted keys.

    NumPy and JAX scalars become plain floats and ints, arrays become lists, and a non-finite float
    becomes the string "nan"/"inf"/"-inf" (JSON has no NaN; the trainer's metrics.jsonl does the
    same).

    Args:
      workdir: the run's folder (created if missing).
      results: a (possibly nested) dict of metric name → value.

    Returns:
      The path written.
    """
    text = json.dumps(_to_jsonable(results), sort_keys=True, indent=2, allow_nan=False) + "\n"
    path = os.path.join(workdir, filename)
    return _atomic_write(path, lambda file: file.write(text.encode("utf-8")))


# --- training curves -------------------------------------------------------------------------------


def read_metrics_jsonl(path: str) -> list[dict[str, Any]]:
    """Reads a metrics.jsonl file: one dict per well-formed line, in file order.

    The strings "nan", "inf" and "-inf" (how the metric writer stores non-finite values) are read
    back as floats. A line that is not a JSON object, e.g. the half-written last line of a crashed
    run, or that line with a resumed run's first line appended to it, is skipped with a warning.
    """
    rows = []
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                warnings.warn(f"{path}:{line_number}: skipping a line that is not a JSON object")
                continue
            rows.append({key: _parse_non_finite(value) for key, value in row.items()})
    return rows


def plot_training_curves(metrics_jsonl_path: str, out_png: str) -> str:
    """Draws the training log as a PNG: one panel per kind of metric, against the step.

    Panels (each only if its metrics were logged):
      - Loss: the training loss (faint: raw; solid: an exponential moving average) and any eval
        metric whose name contains "loss".
      - Evaluation: the other "eval/..." metrics (recall@K, zero-shot accuracy), as points.
      - Learning rate, Logit scale (CLIP's learned temperature s = exp(t)), Gradient norm.

    A resumed run appends the steps after its checkpoint again; for each metric and step the last
    logged value wins, which is the value of the run that went on. Non-finite values are not drawn.

    Args:
      metrics_jsonl_path: the metrics.jsonl written during training.
      out_png: where to write the PNG.

    Returns:
      out_png.
    """
    series = _series_by_metric(read_metrics_jsonl(metrics_jsonl_path))
    loss_keys = [key for key in series if key == "loss" or (key.startswith("eval/") and "loss" in key)]
    eval_keys = [key for key in series if key.startswith("eval/") and key not in loss_keys]
    panels = [
        ("Loss", loss_keys),
        ("Evaluation", eval_keys),
        ("Learning rate", [key for key in ("learning_rate",) if key in series]),
        ("Logit scale", [key for key in ("logit_scale",) if key in series]),
        ("Gradient norm", [key for key in ("grad_norm",) if key in series]),
    ]
    panels = [(title, keys) for title, keys in panels if keys]

    if not panels:
        figure = Figure(figsize=(6, 3))
        axes = figure.add_subplot()
        axes.text(0.5, 0.5, "no metrics logged yet", ha="center", va="center", fontsize=14)
        axes.set_axis_off()
        return _save_figure(figure, out_png)

    num_columns = 1 if len(panels) == 1 else 2
    num_rows = math.ceil(len(panels) / num_columns)
    figure = Figure(figsize=(6.5 * num_columns, 4 * num_rows), layout="constrained")
    for index, (title, keys) in enumerate(panels):
        axes = figure.add_subplot(num_rows, num_columns, index + 1)
        for key in keys:
            steps, values = series[key]
            if key == "loss":
                line, = axes.plot(steps, values, alpha=0.3, linewidth=1)
                # Smooth only long curves: a few logged points are already averages over many steps,
                # and an EMA over them would lag visibly behind the data.
                smoothing = float(np.clip(1.0 - 10.0 / len(values), 0.0, 0.9))
                axes.plot(steps, _ema(values, smoothing), color=line.get_color(), linewidth=2, label="train")
            elif key.startswith("eval/"):
                axes.plot(steps, values, marker="o", markersize=4, label=key.removeprefix("eval/"))
            else:
                axes.plot(steps, values, linewidth=1.5)
        if title == "Learning rate":
            axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        if title == "Gradient norm":
            values = np.concatenate([series[key][1] for key in keys])
            if values.min() > 0 and values.max() > 10 * values.min():  # spikes span decades
                axes.set_yscale("log")
        if len(keys) > 1 or title in ("Loss", "Evaluation"):
            axes.legend(fontsize=9)
        axes.set_title(title, fontsize=13)
        axes.set_xlabel("step", fontsize=11)
        axes.grid(alpha=0.3)
    return _save_figure(figure, out_png)


# --- qualitative retrieval grids ---------------------------------------------------------------------


def plot_retrieval_grid(
    query_images: np.ndarray,
    query_captions: Sequence[str],
    retrieved_captions: Sequence[Sequence[str]],
    hits: Sequence[Sequence[bool]],
    out_png: str,
) -> str:
    """Image → text examples: per row, a query image, its caption and its top-k retrieved captions.

    Retrieved captions are numbered by rank and coloured green (✓, relevant to the image) or red
    (✗, not relevant).

    Args:
      query_images: uint8 [n, H, W, 3] (or floats in [0, 1]; [n, H, W] or [n, H, W, 1] for grey).
      query_captions: n ground-truth captions (one per image).
      retrieved_captions: n lists of k captions, best first.
      hits: n lists of k booleans, True where the retrieved caption is relevant.
      out_png: where to write the PNG.

    Returns:
      out_png.
    """
    num_queries = len(query_images)
    _check_lengths(num_queries, query_captions=query_captions, retrieved_captions=retrieved_captions,
                   hits=hits)
    if num_queries == 0:
        raise ValueError("nothing to plot: no queries")
    line_height = 0.3  # inches per line of text at 11 pt, with spacing
    row_heights = [max(2.0, line_height * (len(retrieved) + 2)) for retrieved in retrieved_captions]
    # Fixed margins instead of a constrained layout: its solver took half of the plot's time, and
    # the rows' contents have known sizes.
    height = sum(row_heights)
    figure = Figure(figsize=(13, height))
    grid = figure.add_gridspec(num_queries, 2, width_ratios=[1, 5], height_ratios=row_heights, left=0.01,
                               right=0.99, top=1 - 0.1 / height, bottom=0.1 / height, wspace=0.02, hspace=0.08)
    for row in range(num_queries):
        image_axes = figure.add_subplot(grid[row, 0])
        _show_image(image_axes, query_images[row])
        text_axes = figure.add_subplot(grid[row, 1])
        text_axes.set_axis_off()
        lines = [("Ground truth: " + _one_line(query_captions[row], 95), "black", "bold")]
        for rank, (caption, hit) in enumerate(zip(retrieved_captions[row], hits[row]), start=1):
            mark, color = (HIT_MARK, HIT_COLOR) if hit else (MISS_MARK, MISS_COLOR)
            lines.append((f"{mark} {rank}. {_one_line(caption, 100)}", color, "normal"))
        # lines from the top of the row down, evenly spaced
        for index, (text, color, weight) in enumerate(lines):
            text_axes.text(0.0, 1.0 - (index + 0.5) / len(lines), text, color=color, fontweight=weight,
                           fontsize=11, va="center", ha="left", transform=text_axes.transAxes)
    return _save_figure(figure, out_png)


def plot_text_to_image_grid(
    query_captions: Sequence[str],
    retrieved_images: np.ndarray,
    hits: np.ndarray | Sequence[Sequence[bool]] | None,
    out_png: str,
) -> str:
    """Text → image examples: per row, a query caption and k images (retrieved, best first, or
    generated from the caption, or an original and its reconstruction).

    Each image has a thick green border (✓, relevant to the caption) or red border (✗, not);
    with `hits=None` the images are shown unmarked, numbered.

    Args:
      query_captions: n captions.
      retrieved_images: uint8 [n, k, H, W, 3] (or floats in [0, 1]), best first.
      hits: bool [n, k], True where the retrieved image is relevant.
      out_png: where to write the PNG.

    Returns:
      out_png.
    """
    marked = hits is not None
    num_queries = len(query_captions)
    if num_queries == 0:
        raise ValueError("nothing to plot: no queries")
    k = np.shape(retrieved_images)[1]
    hits = np.asarray(hits, dtype=bool) if marked else np.ones((num_queries, k), bool)
    _check_lengths(num_queries, retrieved_images=retrieved_images, hits=hits)
    if hits.shape[1] != k:
        raise ValueError(f"retrieved_images has {k} images per row, hits {hits.shape[1]}")
    width, height = 4 + 2.2 * k, 2.4 * num_queries
    figure = Figure(figsize=(width, height))  # fixed margins: see plot_retrieval_grid
    grid = figure.add_gridspec(num_queries, k + 1, width_ratios=[2] + [1] * k, left=0.1 / width,
                               right=1 - 0.1 / width, top=1 - 0.35 / height, bottom=0.1 / height,
                               wspace=0.08, hspace=0.3)
    for row in range(num_queries):
        text_axes = figure.add_subplot(grid[row, 0])
        text_axes.set_axis_off()
        caption = textwrap.fill(_one_line(query_captions[row], 200), width=32)
        text_axes.text(0.0, 0.5, caption, fontsize=11, va="center", ha="left", transform=text_axes.transAxes)
        for rank in range(k):
            image_axes = figure.add_subplot(grid[row, rank + 1])
            _show_image(image_axes, retrieved_images[row][rank])
            if not marked:
                image_axes.set_title(f"{rank + 1}", fontsize=11)
                continue
            mark, color = (HIT_MARK, HIT_COLOR) if hits[row, rank] else (MISS_MARK, MISS_COLOR)
            image_axes.set_axis_on()
            image_axes.set_xticks([])
            image_axes.set_yticks([])
            for spine in image_axes.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(5)
            image_axes.set_title(f"{mark} {rank + 1}", color=color, fontsize=11)
    return _save_figure(figure, out_png)


def write_text_atomically(path: str, text: str) -> str:
    """Writes `text` (UTF-8) to `path` through a temporary file and a rename: never half-written."""
    return _atomic_write(path, lambda file: file.write(text.encode("utf-8")))


# --- helpers -----------------------------------------------------------------------------------------


def _atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> str:
    """Calls write(file) on a temporary file next to `path`, then renames it onto `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the name points at them
        os.chmod(temporary, 0o644)  # mkstemp makes files private; results are meant to be read
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    return path


def _save_figure(figure: Figure, out_png: str) -> str:
    FigureCanvasAgg(figure)  # attaches itself to the figure
    return _atomic_write(out_png, lambda file: figure.savefig(file, format="png", dpi=_DPI))


def _show_image(axes, image: np.ndarray) -> None:
    """Draws one image, enlarged by an integer factor with nearest neighbour if it is small."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if np.issubdtype(image.dtype, np.floating):
        image = np.clip(image, 0.0, 1.0)
    factor = max(1, math.ceil(MIN_DISPLAY_PIXELS / max(1, min(image.shape[:2]))))
    image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    if image.ndim == 2:
        axes.imshow(image, cmap="gray", interpolation="nearest", vmin=0, vmax=_full_scale(image))
    else:
        axes.imshow(image, interpolation="nearest")
    axes.set_axis_off()


def _full_scale(image: np.ndarray) -> float:
    return 1.0 if np.issubdtype(image.dtype, np.floating) else 255.0


def _one_line(text: str | bytes, max_chars: int) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return textwrap.shorten(" ".join(str(text).split()), width=max_chars, placeholder=" …") or "(empty)"


def _check_lengths(expected: int, **sequences: Any) -> None:
    for name, sequence in sequences.items():
        if len(sequence) != expected:
            raise ValueError(f"{name} has {len(sequence)} rows, expected {expected}")


def _series_by_metric(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric name → (steps, values), sorted by step, last value per step, finite values only."""
    by_metric: dict[str, dict[int, float]] = {}
    for row in rows:
        if "step" not in row:
            continue
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and _is_number(value):
                by_metric.setdefault(key, {})[step] = float(value)
    series = {}
    for key, values_by_step in by_metric.items():
        steps = np.array(sorted(values_by_step))
        values = np.array([values_by_step[step] for step in steps])
        finite = np.isfinite(values)
        if finite.any():
            series[key] = (steps[finite], values[finite])
    return series


def _ema(values: np.ndarray, smoothing: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard smooths its curves)."""
    average, smoothed = 0.0, np.empty_like(values)
    for index, value in enumerate(values):
        average = smoothing * average + (1 - smoothing) * value
        smoothed[index] = average / (1 - smoothing ** (index + 1))
    return smoothed


def _parse_non_finite(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)
    return value


def _is_number(value: Any) -> bool:
    is_bool = isinstance(value, (bool, np.bool_))
    return isinstance(value, (int, float, np.integer, np.floating)) and not is_bool


def _as_scalar(value: Any) -> Any:
    """NumPy / JAX 0-d arrays and scalars as Python scalars; anything else unchanged."""
    if hasattr(value, "__array__") and np.ndim(value) == 0:
        return np.asarray(value).item()
    return value


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return _escape(str(value))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(item) for item in value]
    if isinstance(value, (str, bool, type(None))):
        return value
    if hasattr(value, "__array__"):  # NumPy / JAX arrays and scalars
        array = np.asarray(value)
        return _to_jsonable(array.item() if array.ndim == 0 else array.tolist())
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    raise TypeError(f"cannot write a {type(value).__name__} to JSON: {value!r}")
