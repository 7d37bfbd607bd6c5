"""Labelled images made by code: procedural textures and shapes, and scikit-learn's digits.

Layout of `out` (two corpus folders side by side, plus a manifest for both):

    out/manifest.csv                  every image; column `set` = shapes | digits
    out/shapes/manifest.csv           the shapes alone (paths relative to out/shapes)
    out/shapes/<class>/<class>-<n>.png
    out/digits/manifest.csv           the digits alone (paths relative to out/digits)
    out/digits/<digit>/<digit>-<n>.png

Image i of class c is a function of (seed, c, i) alone; splits are 80/20 per
class (`assign_splits`). The classes: docs/training.md (Built-in corpora).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from training.corpora import CorpusError
from training.corpora.manifest import Row, assign_splits, prepare_output, write_manifest

logger = logging.getLogger(__name__)

TEST_FRACTION = 0.2
SUPERSAMPLE = 3  # render at 3x the size, then reduce: smooth edges
MIN_CONTRAST = 0.45  # least RGB distance between foreground and background
NOISE_MAX = 0.06  # largest per-pixel noise standard deviation (0..1 scale)

Draw = Callable[[], Image.Image]  # makes one image when called
Mask = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return c * x + s * y, -s * x + c * y


def _stripes(base_angle: float) -> Mask:
    """Stripes across the image at `base_angle` (radians) ± 12°."""

    def mask(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        angle = base_angle + np.deg2rad(rng.uniform(-12, 12))
        _, v = _rotate(x, y, angle)
        period, duty = rng.uniform(0.15, 0.5), rng.uniform(0.3, 0.6)
        return np.mod(v / period + rng.uniform(0, 1), 1.0) < duty

    return mask


def _diagonal(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _stripes(np.pi / 4 * (1 if rng.random() < 0.5 else 3))(rng, x, y)


def _checkerboard(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    u, v = _rotate(x, y, rng.uniform(0, np.pi / 2))
    period = rng.uniform(0.2, 0.6)
    shift = rng.uniform(0, period, size=2)
    return (np.floor((u + shift[0]) / period) + np.floor((v + shift[1]) / period)) % 2 == 1


def _dots(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    u, v = _rotate(x, y, rng.uniform(0, np.pi / 2))
    period, radius = rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.38)
    fu, fv = (
        np.mod(u / period + rng.random(), 1.0) - 0.5,
        np.mod(v / period + rng.random(), 1.0) - 0.5,
    )
    return fu**2 + fv**2 < radius**2


def _rings(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    cx, cy = rng.uniform(-0.6, 0.6, size=2)
    period, duty = rng.uniform(0.15, 0.4), rng.uniform(0.35, 0.6)
    return np.mod(np.hypot(x - cx, y - cy) / period + rng.random(), 1.0) < duty


def _blobs(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    cells = int(rng.integers(3, 7))
    coarse = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32), mode="F")
    field = np.asarray(coarse.resize(x.shape[::-1], Image.Resampling.BICUBIC))
    return field > np.quantile(field, rng.uniform(0.35, 0.65))


def _placed(
    shape: Callable[[np.ndarray, np.ndarray, float, np.random.Generator], np.ndarray],
    rotate: bool = True,
) -> Mask:
    """A single object of radius 0.35..0.7 at a random position (and rotation)."""

    def mask(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        scale = rng.uniform(0.35, 0.7)
        cx, cy = rng.uniform(-1 + scale, 1 - scale, size=2)
        u, v = _rotate(x - cx, y - cy, rng.uniform(0, 2 * np.pi) if rotate else 0.0)
        return shape(u, v, scale, rng)

    return mask


def _triangle(u: np.ndarray, v: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):
        a = 2 * np.pi * k / 3
        inside &= np.cos(a) * u + np.sin(a) * v < 0.5 * s
    return inside


def _cross(u: np.ndarray, v: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    w = s * rng.uniform(0.18, 0.32)
    return ((np.abs(u) < w) & (np.abs(v) < s)) | ((np.abs(v) < w) & (np.abs(u) < s))


def _star(u: np.ndarray, v: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    return np.hypot(u, v) < s * (0.6 + 0.4 * np.cos(5 * np.arctan2(v, u)))


SHAPES: dict[str, Mask] = {
    "stripes_horizontal": _stripes(0.0),
    "stripes_vertical": _stripes(np.pi / 2),
    "stripes_diagonal": _diagonal,
    "checkerboard": _checkerboard,
    "dots": _dots,
    "rings": _rings,
    "blobs": _blobs,
    "circle": _placed(lambda u, v, s, rng: np.hypot(u, v) < s, rotate=False),
    "square": _placed(lambda u, v, s, rng: np.maximum(np.abs(u), np.abs(v)) < 0.8 * s),
    "triangle": _placed(_triangle),
    "cross": _placed(_cross),
    "star": _placed(_star),
}


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background RGB in 0..1, at least `MIN_CONTRAST` apart."""
    while True:
        fg, bg = rng.random(3), rng.random(3)
        if np.linalg.norm(fg - bg) >= MIN_CONTRAST:
            return fg, bg


def render_shape(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of class `name`, `size` pixels square."""
    big = size * SUPERSAMPLE
    y, x = (np.mgrid[0:big, 0:big] + 0.5) / big * 2 - 1  # pixel centres in [-1, 1]
    mask = SHAPES[name](rng, x, y).astype(np.float32)[..., None]
    fg, bg = _colours(rng)
    tilt = rng.uniform(-0.12, 0.12, size=2)
    background = np.clip(bg + (tilt[0] * x + tilt[1] * y)[..., None], 0, 1)
    hires = (1 - mask) * background + mask * fg
    img = Image.fromarray((hires * 255).round().astype(np.uint8)).reduce(SUPERSAMPLE)
    pixels = np.asarray(img, dtype=np.float32) / 255
    pixels = pixels + rng.uniform(0, NOISE_MAX) * rng.standard_normal(pixels.shape)
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))


def _write_set(out: Path, set_name: str, images: dict[str, list[Draw]], seed: int) -> list[Row]:
    """Draw and save one set's images under out/<set>/<label>/, with the set's own manifest.

    Returns the rows with paths relative to `out`."""
    root = out / set_name
    rows = []
    for label, items in images.items():
        (root / label).mkdir(parents=True)
        names = [f"{label}-{i:04d}.png" for i in range(len(items))]
        splits = assign_splits(names, seed=seed, test_fraction=TEST_FRACTION)
        for draw, name, split in zip(items, names, splits, strict=True):
            draw().save(root / label / name, format="PNG")
            rows.append(
                Row(path=f"{label}/{name}", label=label, split=split, extra={"set": set_name})
            )
    write_manifest(root, rows)
    return [Row(f"{set_name}/{r.path}", r.label, r.split, r.extra) for r in rows]


def _digits(per_class: int, size: int) -> dict[str, list[Draw]]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    grouped: dict[str, list[Draw]] = {str(d): [] for d in range(10)}
    for pixels, target in zip(data.images, data.target, strict=True):
        items = grouped[str(int(target))]
        if len(items) < per_class:
            grey = Image.fromarray((pixels * (255 / 16)).round().astype(np.uint8), mode="L")
            items.append(partial(grey.resize, (size, size), Image.Resampling.BICUBIC))
    return grouped


def build_images(
    out: Path, *, per_class: int = 200, size: int = 64, seed: int = 0, digits: bool = True
) -> Path:
    """Build the image corpora in `out` (see the module docstring); returns `out`."""
    if per_class < 2 or size < 8:
        raise CorpusError("the image corpus needs --per-class >= 2 and --size >= 8")
    out = Path(out)
    prepare_output(out)
    shapes: dict[str, list[Draw]] = {
        name: [
            partial(render_shape, name, size, np.random.default_rng([seed, c, i]))
            for i in range(per_class)
        ]
        for c, name in enumerate(SHAPES)
    }
    rows = _write_set(out, "shapes", shapes, seed)
    if digits:
        rows += _write_set(out, "digits", _digits(per_class, size), seed)
    write_manifest(out, rows)
    return out
