"""`use: shapes`: caption triplets of the shapes world, each carrying the true scenes.

Every triplet is one edit of one attribute; `scene_before` and `scene_after` let the oracle
judge a rendered pair (did the named attribute change, and nothing else?).
"""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Any, Literal

from pydantic import Field, model_validator

from editkit.builtins.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    COLUMNS,
    ROWS,
    SHAPES,
    SIZES,
    Scene,
    Shape,
    random_scene,
)
from editkit.plugin.kinds import IndexedCaptionGenerator, PluginOptions

ShapeEdit = Literal["colour", "kind", "size", "background", "add", "remove"]
Unsaid = Literal["size", "place", "background"]
# what an edit needs its captions to say: its own attribute (an added shape's place too)
NEEDS = {"size": "size", "background": "background", "add": "place"}


class ShapesOptions(PluginOptions):
    edits: list[ShapeEdit] = Field(
        default_factory=lambda: ["colour", "kind", "size", "background", "add", "remove"],
        min_length=1, description="edit kinds drawn from, each equally likely; one the scene "
        "does not allow (like remove from one shape) is drawn again with a new scene")
    max_shapes: int = Field(2, ge=1, le=3, description="most shapes in a scene, after an add "
                            "edit too (add needs a scene below it)")
    min_shapes: int = Field(1, ge=1, le=3, description="scenes have min_shapes..max_shapes "
                            "shapes, as many of each count")
    batch: int = Field(64, ge=1, description="triplets per written shard")
    unsaid: list[Unsaid] = Field(
        default_factory=list,
        description="attributes a triplet's captions may leave out (both captions alike, "
                    "never the edited one): the model then draws them as it likes, and only "
                    "attention control keeps them the same across a pair")
    unsaid_rate: float = Field(0.5, ge=0, le=1, description="how often each `unsaid` "
                               "attribute is left out")

    @model_validator(mode="after")
    def _shape_range(self) -> "ShapesOptions":
        if self.min_shapes > self.max_shapes:
            raise ValueError(f"min_shapes {self.min_shapes} is above max_shapes "
                             f"{self.max_shapes}")
        return self


def scene_to_dict(scene: Scene) -> dict[str, Any]:
    return {"background": scene.background, "shapes": [asdict(s) for s in scene.shapes]}


def scene_from_dict(data: dict[str, Any]) -> Scene:
    return Scene(tuple(Shape(**s) for s in data["shapes"]), data["background"])


def edit_scene(scene: Scene, kind: str, rng: random.Random,
               max_shapes: int = 2) -> tuple[Scene, str, list[str]] | None:
    """One edit of `kind` applied to `scene`: (edited scene, instruction, changed words),
    or None when the scene does not allow it (nothing to remove, no room to add)."""
    if kind == "background":
        new = rng.choice([b for b in BACKGROUNDS if b != scene.background])
        return Scene(scene.shapes, new), f"make the background {new}", [new]
    if kind == "add":
        free = [(r, c) for r in ROWS for c in COLUMNS if (r, c) not in scene.cells()]
        kinds = [k for k in SHAPES if k not in {s.kind for s in scene.shapes}]
        if not free or not kinds or len(scene.shapes) >= max_shapes:
            return None
        row, column = rng.choice(free)
        shape = Shape(rng.choice(kinds), rng.choice(list(COLOURS)), rng.choice(list(SIZES)),
                      row, column)
        return (Scene(scene.shapes + (shape,), scene.background),
                f"add {shape.phrase()}", [shape.size, shape.colour, shape.kind])
    index = rng.randrange(len(scene.shapes))
    target = scene.shapes[index]
    if kind == "remove":
        if len(scene.shapes) < 2:
            return None
        rest = tuple(s for i, s in enumerate(scene.shapes) if i != index)
        return Scene(rest, scene.background), f"remove the {target.kind}", [target.kind]
    if kind == "colour":
        new = rng.choice([c for c in COLOURS if c != target.colour])
        return scene.with_shape(index, colour=new), f"make the {target.kind} {new}", [new]
    if kind == "size":
        new = "small" if target.size == "large" else "large"
        return scene.with_shape(index, size=new), f"make the {target.kind} {new}", [new]
    others = {s.kind for s in scene.shapes}
    choices = [k for k in SHAPES if k not in others]
    if not choices:
        return None
    new = rng.choice(choices)
    return (scene.with_shape(index, kind=new),
            f"turn the {target.kind} into a {new}", [new])


def leave_unsaid(kind: str, unsaid: list[str], rate: float,
                 rng: random.Random) -> frozenset[str]:
    """Which of `unsaid` an edit of `kind`'s captions leave out, each at `rate` (never what
    the edit needs said); no draws when `unsaid` is empty."""
    return frozenset(u for u in unsaid if NEEDS.get(kind) != u and rng.random() < rate)


class ShapesCaptions(IndexedCaptionGenerator):
    name = "shapes"
    Options = ShapesOptions

    def triplet(self, seed: int, index: int) -> dict[str, Any]:
        rng = random.Random(f"editkit-shapes:{seed}:{index}")
        while True:
            scene = random_scene(rng, self.options.max_shapes, self.options.min_shapes)
            kind = rng.choice(self.options.edits)
            edited = edit_scene(scene, kind, rng, self.options.max_shapes)
            if edited is not None:
                break
        after, instruction, words = edited
        unsaid = leave_unsaid(kind, self.options.unsaid, self.options.unsaid_rate, rng)
        return {"input": scene.caption(unsaid), "edit": instruction,
                "output": after.caption(unsaid),
                "edit_kind": kind, "words": words,
                "region": "background" if kind == "background" else "foreground",
                "scene_before": scene_to_dict(scene), "scene_after": scene_to_dict(after)}
