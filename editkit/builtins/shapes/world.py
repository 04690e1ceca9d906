"""Scenes of one or two shapes (circle, square, triangle) with a colour, a size and a place on
a 3x3 grid, on a coloured background; drawn at 64 px and described in one caption."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (240, 210, 40), "purple": (150, 60, 190), "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245), "gray": (120, 120, 120), "black": (20, 20, 20),
}
SIZES = {"small": 12, "large": 19}  # side of the shape's box, in pixels of a 64 px image
COLUMNS = ("left", "center", "right")
ROWS = ("top", "middle", "bottom")
IMAGE_SIZE = 64
UNSAID = ("size", "place", "background")  # what a caption may leave out


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    row: str
    column: str

    @property
    def place(self) -> str:
        if self.row == "middle" and self.column == "center":
            return "in the center"
        if self.row == "middle":
            return f"on the {self.column}"
        if self.column == "center":
            return f"at the {self.row}"
        return f"at the {self.row} {self.column}"

    def phrase(self, unsaid: frozenset[str] = frozenset()) -> str:
        """"a small red circle at the top left"; `unsaid` leaves out "size" and/or "place"."""
        words = ["a", *(() if "size" in unsaid else (self.size,)), self.colour, self.kind,
                 *(() if "place" in unsaid else (self.place,))]
        return " ".join(words)


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: str

    def caption(self, unsaid: frozenset[str] = frozenset()) -> str:
        """The scene in words; `unsaid` (of UNSAID) leaves those attributes out, so a model
        draws them as it likes: the shapes' sizes, their places, the background colour."""
        return " and ".join(s.phrase(unsaid) for s in self.shapes) + \
            ("" if "background" in unsaid else f" on a {self.background} background")

    def cells(self) -> set[tuple[str, str]]:
        return {(s.row, s.column) for s in self.shapes}

    def with_shape(self, index: int, **changes: Any) -> "Scene":
        shapes = list(self.shapes)
        shapes[index] = replace(shapes[index], **changes)
        return Scene(tuple(shapes), self.background)


def random_scene(rng: random.Random, max_shapes: int = 2, min_shapes: int = 1) -> Scene:
    count = rng.randint(min_shapes, max_shapes)
    cells = rng.sample([(r, c) for r in ROWS for c in COLUMNS], count)
    kinds = rng.sample(SHAPES, count)  # two shapes of one scene are of different kinds
    shapes = tuple(Shape(kind, rng.choice(list(COLOURS)), rng.choice(list(SIZES)), row, col)
                   for kind, (row, col) in zip(kinds, cells))
    return Scene(shapes, rng.choice(list(BACKGROUNDS)))


def cell_centre(row: str, column: str, size: int = IMAGE_SIZE) -> tuple[float, float]:
    step = size / 3
    return (COLUMNS.index(column) + 0.5) * step, (ROWS.index(row) + 0.5) * step


def shape_box(shape: Shape, size: int = IMAGE_SIZE) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the box the shape is drawn in, on a `size` px image."""
    cx, cy = cell_centre(shape.row, shape.column, size)
    half = SIZES[shape.size] * size / IMAGE_SIZE / 2
    return cx - half, cy - half, cx + half, cy + half


def draw(scene: Scene, size: int = IMAGE_SIZE, supersample: int = 4) -> Any:
    """The scene as an RGB PIL image, drawn large and downsampled for smooth edges."""
    from PIL import Image, ImageDraw

    big = size * supersample
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    pen = ImageDraw.Draw(image)
    for shape in scene.shapes:
        box = shape_box(shape, big)
        left, top, right, bottom = box
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            pen.ellipse(box, fill=fill)
        elif shape.kind == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
    return image.resize((size, size), Image.LANCZOS)
