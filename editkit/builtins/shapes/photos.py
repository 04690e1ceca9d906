"""`use: shapes-photos`: the shapes world's stand-in for a user's photos. The photos are scenes
the world drew (not made by a model); this generator reads each one with the oracle, as a
captioner that sees the photo would, and writes edits of what it read. Every triplet carries
its photo and the true scenes, so the photo renderer's pairs are judged by the oracle.

`draw_photos` writes such a folder (recipes/data/shapes-photos holds one).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator

from pydantic import Field, field_validator

from editkit.builtins.shapes.captions import (
    ShapeEdit,
    Unsaid,
    edit_scene,
    leave_unsaid,
    scene_to_dict,
)
from editkit.plugin.kinds import CaptionGenerator, CaptionJob, PluginOptions, Reject


class ShapesPhotosOptions(PluginOptions):
    photos: str = Field(description="folder of world-drawn photos (.png), read in name order")
    edits_per_photo: int = Field(2, ge=1, le=20, description="edits written for each photo")
    edits: list[ShapeEdit] = Field(
        default_factory=lambda: ["colour", "kind", "size", "background"], min_length=1,
        description="edit kinds drawn from; one the photo's scene does not allow is drawn "
                    "again")
    max_shapes: int = Field(2, ge=1, le=3, description="most shapes after an add edit")
    unsaid: list[Unsaid] = Field(
        default_factory=list, description="attributes the captions may leave out (both "
        "captions alike, never the edited one), as a captioner that does not say everything")
    unsaid_rate: float = Field(0.5, ge=0, le=1, description="how often each `unsaid` "
                               "attribute is left out")
    batch: int = Field(32, ge=1, description="triplets per written shard")

    @field_validator("photos")
    @classmethod
    def _folder(cls, value: str) -> str:
        from editkit.captions.photos import list_photos
        from editkit.errors import InputError

        try:
            found = list_photos(value)
        except InputError:
            raise ValueError(f"{value} is not a folder") from None
        if not found:
            raise ValueError(f"{value} holds no photos (.png, .jpg, ...)")
        return value


def draw_photos(folder: str | Path, count: int, seed: int = 0, max_shapes: int = 2) -> list[Path]:
    """`count` random scenes of the world drawn into `folder` as photo-0000.png, ..."""
    from editkit.builtins.shapes.world import draw, random_scene

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"editkit-shapes-photos:{seed}")
    paths = []
    for index in range(count):
        path = root / f"photo-{index:04d}.png"
        draw(random_scene(rng, max_shapes)).save(path)
        paths.append(path)
    return paths


class ShapesPhotos(CaptionGenerator):
    name = "shapes-photos"
    Options = ShapesPhotosOptions
    options: ShapesPhotosOptions

    def generate(self, job: CaptionJob) -> Iterator[list[dict[str, Any] | Reject]]:
        from editkit.captions.photos import list_photos

        photos = list_photos(self.options.photos)
        per = self.options.edits_per_photo
        index = job.start
        while index < len(photos) * per:
            end = min(index + self.options.batch, len(photos) * per)
            yield [self.triplet(job.seed, photos[k // per], k % per) for k in range(index, end)]
            index = end

    def triplet(self, seed: int, path: Path, number: int) -> dict[str, Any] | Reject:
        """Edit `number` of the photo at `path`: a pure function of (seed, photo, number)."""
        from editkit.builtins.shapes.oracle import read_scene
        from editkit.captions.photos import read_photo
        from editkit.errors import InputError

        where = {"photo": str(path.resolve()), "photo_name": path.name}
        try:
            scene = read_scene(read_photo(path))
        except InputError as exc:
            return Reject("unreadable photo", exc.message, data=where)
        if not scene.shapes:
            return Reject("nothing in the photo", "the oracle read no shapes", data=where)
        # one order of the edit kinds per photo, and edit `number` starts at its own place in
        # it: a photo's edits are of different kinds while there are kinds left
        kinds = list(self.options.edits)
        random.Random(f"editkit-shapes-photos:{seed}:{path.name}").shuffle(kinds)
        kinds = kinds[number % len(kinds):] + kinds[:number % len(kinds)]
        rng = random.Random(f"editkit-shapes-photos:{seed}:{path.name}:{number}")
        for kind in kinds:
            edited = edit_scene(scene, kind, rng, self.options.max_shapes)
            if edited is not None:
                break
        else:
            return Reject("no edit fits the photo", f"none of {', '.join(kinds)} applies to "
                          f"{scene.caption()}", data=where)
        after, instruction, words = edited
        unsaid = leave_unsaid(kind, self.options.unsaid, self.options.unsaid_rate, rng)
        return {"input": scene.caption(unsaid), "edit": instruction,
                "output": after.caption(unsaid), "edit_kind": kind, "words": words,
                "region": "background" if kind == "background" else "foreground",
                "scene_before": scene_to_dict(scene), "scene_after": scene_to_dict(after),
                **where}
