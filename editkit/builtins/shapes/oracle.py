"""Read a shapes-world scene back from an image: the judge for every stage's quality.

Background: the commonest colour along the border. Shapes: connected regions of pixels nearer
a shape colour than the background, each classified by colour (nearest palette entry), kind
(how it fills its box), size (box side) and grid cell (box centre). Works on generated images
too, where edges are soft and colours drift.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from editkit.builtins.shapes.world import BACKGROUNDS, COLOURS, COLUMNS, ROWS, SIZES, Scene, Shape

MIN_AREA = 12  # pixels (at 64 px); smaller specks are noise


def _nearest(colour: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> tuple[str, float]:
    names = list(palette)
    distances = np.linalg.norm(np.array([palette[n] for n in names], np.float32) - colour,
                               axis=1)
    best = int(distances.argmin())
    return names[best], float(distances[best])


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected regions of a boolean mask, as arrays of (y, x) indices."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    regions = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack = [(y0, x0)]
        seen[y0, x0] = True
        pixels = []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        regions.append(np.array(pixels))
    return regions


def _kind(region: np.ndarray, top: int, left: int, height: int, width: int) -> str:
    """Triangles (apex up) fill a quarter of their box's top half and three quarters of its
    bottom half; of the rest, squares fill their box (a rounded square still ~0.9) and circles
    pi/4 of it. Areas, not edges: robust to the soft, rounded edges of generated images."""
    local = np.zeros((height, width), bool)
    local[region[:, 0] - top, region[:, 1] - left] = True
    half = height // 2
    if half and local[height - half:].mean() - local[:half].mean() > 0.25:
        return "triangle"
    return "square" if local.mean() > 0.87 else "circle"


def read_scene(image: Any) -> Scene:
    """The scene an image of the world shows (best guess for every attribute)."""
    pixels = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background, _ = _nearest(np.median(border, axis=0), BACKGROUNDS)
    # a pixel is foreground when it is nearer some shape colour than the background colour
    bg = np.array(BACKGROUNDS[background], np.float32)
    palette = np.array(list(COLOURS.values()), np.float32)
    to_bg = np.linalg.norm(pixels - bg, axis=2)
    to_shape = np.linalg.norm(pixels[:, :, None, :] - palette, axis=3).min(axis=2)
    differs = to_shape < to_bg
    shapes = []
    for region in _components(differs):
        if len(region) < MIN_AREA:
            continue
        ys, xs = region[:, 0], region[:, 1]
        colour, _ = _nearest(np.median(pixels[ys, xs], axis=0), COLOURS)
        height = ys.max() - ys.min() + 1
        width = xs.max() - xs.min() + 1
        kind = _kind(region, ys.min(), xs.min(), height, width)
        side = max(height, width)
        size = "small" if side < (SIZES["small"] + SIZES["large"]) / 2 else "large"
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        row = ROWS[min(2, int(cy // (64 / 3)))]
        column = COLUMNS[min(2, int(cx // (64 / 3)))]
        shapes.append((len(region), Shape(kind, colour, size, row, column)))
    shapes.sort(key=lambda item: (ROWS.index(item[1].row), COLUMNS.index(item[1].column)))
    return Scene(tuple(s for _, s in shapes), background)


def same_scene(a: Scene, b: Scene) -> bool:
    """Equal up to the order the shapes are listed in."""
    key = lambda s: (s.row, s.column, s.kind, s.colour, s.size)  # noqa: E731
    return a.background == b.background and sorted(a.shapes, key=key) == sorted(b.shapes,
                                                                                 key=key)
