"""Reading a `shapes` scene back from its pixels: the judge of generated images.

A model that draws "a large red circle at the top left" is right when the picture shows exactly
that. This parser reads what a picture shows from the renderer's rules alone (`mmjax.data.shapes`
draws flat palette colours, alpha-blended at the edges, one object per cell of a 3×3 grid):

    1. the background is the median pixel;
    2. each pixel is explained as a blend of the background and one palette colour:
       pixel ≈ background + α·(colour − background), α ∈ [0, 1]; the colour that leaves the
       smallest residual owns the pixel, with coverage α;
    3. per cell, a colour covering at least `min_area` pixels' worth is that cell's object;
    4. its shape is the one whose exact mask (8×8 supersampled per pixel), placed and sized by the
       coverage's centroid and area, differs least from the coverage;
    5. its size is "large" when its half side is above the midpoint of the two sizes' ranges
       (0.17–0.23 and 0.34–0.42 of a cell).

The result is the scene key ("cell:size:colour:shape|...", `Scene.key`), so a parsed picture and a
caption (`shapes.parse_caption`) compare as strings. The tests check it on rendered scenes of every
split at several resolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmjax.data import shapes

_PALETTE = np.asarray(shapes.COLOUR_RGB, np.float64)
# Area of each shape over its half side squared (the cross: two bars 0.6 half sides wide).
_AREA_PER_HALF_SQUARED = {"circle": np.pi, "square": 4.0, "triangle": 2.0, "cross": 2.04, "diamond": 2.0}
_LARGE_ABOVE = (0.23 + 0.34) / 2  # half side, in cells, between the small and the large range


def colour_coverage(image: np.ndarray) -> np.ndarray:
    """uint8 [S, S, 3] -> coverage [colours, S, S]: how much of each pixel each palette colour
    covers (each pixel is owned by at most one colour)."""
    pixels = image.reshape(-1, 3).astype(np.float64)
    background = np.median(pixels, axis=0)
    offset = pixels - background
    direction = _PALETTE - background
    alpha = np.clip(offset @ direction.T / (direction**2).sum(-1), 0.0, 1.0)  # [pixels, colours]
    residual = ((offset[:, None, :] - alpha[..., None] * direction[None]) ** 2).sum(-1)
    owner = np.argmin(residual, axis=1)
    coverage = np.zeros_like(alpha)
    rows = np.arange(len(owner))
    coverage[rows, owner] = alpha[rows, owner]
    size = image.shape[0]
    return coverage.T.reshape(len(_PALETTE), size, size)


def _inside(shape: str, y: np.ndarray, x: np.ndarray, half: float) -> np.ndarray:
    """Whether offsets (y, x) from a shape's centre fall inside it (the renderer's geometry)."""
    if shape == "circle":
        return y**2 + x**2 <= half**2
    if shape == "square":
        return (np.abs(y) <= half) & (np.abs(x) <= half)
    if shape == "triangle":  # apex up, base on the bottom of its square
        return (y <= half) & (2 * np.abs(x) <= y + half)
    if shape == "cross":
        bar = 0.3 * half
        return ((np.abs(x) <= bar) & (np.abs(y) <= half)) | ((np.abs(y) <= bar) & (np.abs(x) <= half))
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= half
    raise ValueError(f"unknown shape {shape!r}")


def fit_shape(coverage: np.ndarray) -> tuple[str, float]:
    """[h, w] coverage of one object -> (the best-fitting shape, its half side in pixels)."""
    weights = np.where(coverage > 0.05, coverage, 0.0)
    area = weights.sum()
    ys, xs = np.mgrid[: coverage.shape[0], : coverage.shape[1]] + 0.5
    cy, cx = (weights * ys).sum() / area, (weights * xs).sum() / area
    sub = (np.arange(8) + 0.5) / 8
    sample_y = (np.arange(coverage.shape[0])[:, None] + sub).reshape(-1)
    sample_x = (np.arange(coverage.shape[1])[:, None] + sub).reshape(-1)
    best = None
    for name in shapes.SHAPE_NAMES:
        half = float(np.sqrt(area / _AREA_PER_HALF_SQUARED[name]))
        centre_y = cy - half / 3 if name == "triangle" else cy  # a triangle's centroid is low
        mask = _inside(name, sample_y[:, None] - centre_y, sample_x[None, :] - cx, half)
        model = mask.reshape(coverage.shape[0], 8, coverage.shape[1], 8).mean((1, 3))
        misfit = float(np.abs(model - weights).sum())
        if best is None or misfit < best[0]:
            best = (misfit, name, half)
    return best[1], best[2]


def parse_scene(image: np.ndarray, min_area: float = 4.0) -> str:
    """uint8 [S, S, 3] picture of a `shapes` scene -> its scene key (see the module docstring).

    `min_area`: the least coverage (in pixels) that counts as an object; noise and stray blends
    cover far less. A picture with no object gives "".
    """
    if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[2] != 3:
        raise ValueError(f"parse_scene takes a square RGB image [S, S, 3]; got shape {image.shape}")
    size = image.shape[0]
    coverage = colour_coverage(image)
    edges = np.linspace(0, size, 4).round().astype(int)
    items = []
    for cell in range(9):
        row, col = divmod(cell, 3)
        window = coverage[:, edges[row]:edges[row + 1], edges[col]:edges[col + 1]]
        totals = np.where(window > 0.05, window, 0.0).sum(axis=(1, 2))
        colour = int(np.argmax(totals))
        if totals[colour] < min_area:
            continue
        shape, half = fit_shape(window[colour])
        large = half / (size / 3) > _LARGE_ABOVE
        items.append(f"{shapes.CELL_NAMES[cell]}:{shapes.SIZE_NAMES[int(large)]}:{shapes.COLOUR_NAMES[colour]}:{shape}")
    return "|".join(items)


def scene_match(images: np.ndarray, scene_keys: Sequence[str]) -> np.ndarray:
    """bool [n]: whether `parse_scene` reads images[i] (uint8 [n, S, S, 3]) as scene_keys[i]."""
    return np.asarray([parse_scene(image) == key for image, key in zip(images, scene_keys)], bool)
