"""Before/after scene pairs of the world, true and deliberately broken, for training and judging
the world's encoders.

A true pair is a `use: shapes` triplet's (scene_before, scene_after). The broken pairs are the
failures a filter exists to catch: nothing changed (after = before), the wrong edit (the same
kind of edit with another outcome, such as another colour), and an unrelated scene.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from editkit.builtins.shapes.captions import ShapesCaptions, edit_scene, scene_from_dict
from editkit.builtins.shapes.world import COLUMNS, ROWS, Scene, draw, random_scene

BROKEN = ("unchanged", "wrong edit", "unrelated")


@dataclass(frozen=True)
class WorldPair:
    kind: str  # the edit kind: colour, kind, size, background, add, remove
    before: Scene
    after: Scene


def world_pairs(count: int, seed: int) -> list[WorldPair]:
    """`count` true pairs, exactly the triplets `use: shapes` writes for this seed."""
    generator = ShapesCaptions()
    pairs = []
    for index in range(count):
        triplet = generator.triplet(seed, index)
        pairs.append(WorldPair(triplet["edit_kind"], scene_from_dict(triplet["scene_before"]),
                               scene_from_dict(triplet["scene_after"])))
    return pairs


def wrong_edit(pair: WorldPair, rng: random.Random) -> Scene:
    """The same kind of edit with another outcome where the scene allows one (another colour,
    another shape kind, ...), else an edit of another kind: a change the caption does not say."""
    kinds = [pair.kind] + [k for k in ("colour", "kind", "background", "size")
                           if k != pair.kind]
    for kind in kinds:
        for _ in range(20):
            edited = edit_scene(pair.before, kind, rng)
            if edited is not None and edited[0] not in (pair.before, pair.after):
                return edited[0]
    raise ValueError(f"no wrong edit for {pair}")  # unreachable: a colour edit always exists


def moved(scene: Scene, rng: random.Random) -> Scene:
    """The same shapes, each in a cell none of them held: the layout broken, nothing else."""
    taken = scene.cells()
    free = [(r, c) for r in ROWS for c in COLUMNS if (r, c) not in taken]
    cells = rng.sample(free, len(scene.shapes))
    return Scene(tuple(replace(s, row=row, column=column)
                       for s, (row, column) in zip(scene.shapes, cells)), scene.background)


def broken_afters(pair: WorldPair, rng: random.Random) -> dict[str, Scene]:
    """The after scenes of the broken pairs for one true pair, keyed by `BROKEN`."""
    unrelated = random_scene(rng)
    while unrelated in (pair.before, pair.after):
        unrelated = random_scene(rng)
    return {"unchanged": pair.before, "wrong edit": wrong_edit(pair, rng),
            "unrelated": unrelated}


def drawn(scenes: list[Scene]) -> list[Any]:
    """PIL images of scenes, each drawn once even when it repeats."""
    cache: dict[Scene, Any] = {}
    for scene in scenes:
        if scene not in cache:
            cache[scene] = draw(scene)
    return [cache[scene] for scene in scenes]

