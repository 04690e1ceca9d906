"""`use: shapes` judge: the oracle decides whether a pair or an edit did what it was told.

A triplet's truth (`scene_before`, `scene_after`) says which change was asked for; the judge
reads the before-image and the after-image back with the oracle, applies that change to what
the before-image shows, and compares the result with what the after-image shows. So a pair
counts as good when the after-image is the before-image with exactly the instructed change,
even where the text-to-image model drew the before-image a little off its caption (that is
still a correct training example for the instruction). Reasons name what went wrong:
"colour not changed", "circle size changed too", "extra square", "triangle moved", ...
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from editkit.builtins.shapes import world
from editkit.builtins.shapes.captions import ShapeEdit, edit_scene, scene_from_dict, scene_to_dict
from editkit.builtins.shapes.oracle import read_scene, same_scene
from editkit.builtins.shapes.world import Scene, Shape, draw, random_scene
from editkit.errors import InputError
from editkit.plugin.kinds import HeldOut, Judge, PluginOptions, Verdict

ATTRIBUTES = ("kind", "colour", "size")
Cell = tuple[str, str]


class ShapesJudgeOptions(PluginOptions):
    edits: list[ShapeEdit] = Field(
        default_factory=lambda: ["colour", "background", "kind", "size"], min_length=1,
        description="edit kinds of the held-out inputs (pairs are judged whatever their kind)")
    max_shapes: int = Field(2, ge=1, le=3, description="shapes per held-out scene, at most")


@dataclass(frozen=True)
class Change:
    """The edit an instruction asks for, as something that applies to any scene: the
    instruction names its shape by kind ("make the circle blue"), so that is how it finds it."""

    edit_kind: str  # colour, size, kind, background, add, remove
    target: str | None = None  # the kind of the shape the instruction names
    attribute: str | None = None  # for colour, size and kind edits
    value: Any = None  # the new attribute value, background, or the added Shape


def change_of(before: Scene, after: Scene) -> Change:
    """The change between a triplet's true scenes (an attribute edit's kind is its
    attribute: colour, size or kind, as the captions name them)."""
    if before.background != after.background:
        return Change("background", value=after.background)
    old = {(s.row, s.column): s for s in before.shapes}
    new = {(s.row, s.column): s for s in after.shapes}
    added = [new[c] for c in new if c not in old]
    removed = [old[c] for c in old if c not in new]
    if added:
        return Change("add", value=added[0])
    if removed:
        return Change("remove", target=removed[0].kind)
    for cell, shape in old.items():
        for attribute in ATTRIBUTES:
            if getattr(shape, attribute) != getattr(new[cell], attribute):
                return Change(attribute, shape.kind, attribute, getattr(new[cell], attribute))
    raise InputError(f"the triplet's scenes are the same ({before.caption()})",
                     "shapes triplets change one attribute; regenerate the captions")


def _words(*names: Any) -> str:
    return "|".join(names)


KIND, COLOUR, SIZE = _words(*world.SHAPES), _words(*world.COLOURS), _words(*world.SIZES)
PLACE = (r"in the center|on the (?:left|right)|at the (?:top|bottom)"
         r"|at the (?:top|bottom) (?:left|right)")
INSTRUCTIONS = [  # the instructions the world's captions write (captions.edit_scene)
    ("background", rf"make the background ({_words(*world.BACKGROUNDS)})"),
    ("add", rf"add an? ({SIZE}) ({COLOUR}) ({KIND}) ({PLACE})"),
    ("remove", rf"remove the ({KIND})"),
    ("colour", rf"make the ({KIND}) ({COLOUR})"),
    ("size", rf"make the ({KIND}) ({SIZE})"),
    ("kind", rf"turn the ({KIND}) into an? ({KIND})"),
]


def place_cell(place: str) -> tuple[str, str]:
    """(row, column) of a shape's place in words: "at the top left", "on the right", ..."""
    words = place.split()[2:]
    if words == ["center"]:
        return "middle", "center"
    row = next((w for w in words if w in world.ROWS), "middle")
    column = next((w for w in words if w in world.COLUMNS), "center")
    return row, column


def change_of_instruction(instruction: str) -> Change:
    """The change an instruction in the world's words asks for ("make the circle blue",
    "add a small red square at the top left", ...), so an edit of any image of the world can
    be judged; other wording is refused, naming what the judge reads."""
    text = " ".join(instruction.lower().strip().rstrip(".!").split())
    for kind, pattern in INSTRUCTIONS:
        found = re.fullmatch(pattern, text)
        if found is None:
            continue
        words = found.groups()
        if kind == "background":
            return Change("background", value=words[0])
        if kind == "add":
            size, colour, shape, place = words
            return Change("add", value=Shape(shape, colour, size, *place_cell(place)))
        if kind == "remove":
            return Change("remove", target=words[0])
        return Change(kind, words[0], kind, words[1])
    raise InputError(f"the shapes judge cannot read the instruction {instruction!r}",
                     'word it as the world does: "make the circle blue", "make the square '
                     'large", "turn the circle into a triangle", "make the background black", '
                     '"remove the square", "add a small red circle at the top left"')


def apply_change(scene: Scene, change: Change) -> tuple[Scene | None, str | None]:
    """`scene` with `change` made, or (None, why it cannot be made on this scene)."""
    if change.edit_kind == "background":
        return Scene(scene.shapes, change.value), None
    if change.edit_kind == "add":
        shape: Shape = change.value
        taken = [s for s in scene.shapes if (s.row, s.column) == (shape.row, shape.column)]
        if taken:
            return None, f"before-image already has a {taken[0].kind} where the " \
                         f"{shape.kind} goes"
        return Scene(scene.shapes + (shape,), scene.background), None
    found = [i for i, s in enumerate(scene.shapes) if s.kind == change.target]
    if not found:
        return None, f"before-image has no {change.target}"
    if len(found) > 1:
        return None, f"before-image has {len(found)} {change.target}s"
    index = found[0]
    if change.edit_kind == "remove":
        rest = tuple(s for i, s in enumerate(scene.shapes) if i != index)
        return Scene(rest, scene.background), None
    return scene.with_shape(index, **{change.attribute: change.value}), None


def differences(before: Scene, expected: Scene, seen: Scene, change: Change) -> list[str]:
    """Why `seen` is not `expected` (the before-scene with the change made), in words."""
    reasons: list[str] = []
    if seen.background != expected.background:
        if change.edit_kind != "background":
            reasons.append("background changed too")
        elif seen.background == before.background:
            reasons.append("background not changed")
        else:
            reasons.append(f"background {seen.background}, not {expected.background}")
    want = {(s.row, s.column): s for s in expected.shapes}
    got = {(s.row, s.column): s for s in seen.shapes}
    was = {(s.row, s.column): s for s in before.shapes}
    missing = [want[c] for c in want if c not in got]
    extra = [got[c] for c in got if c not in want]
    for shape in list(missing):
        moved = next((e for e in extra if e.kind == shape.kind), None)
        if moved is not None:
            reasons.append(f"{shape.kind} moved")
            missing.remove(shape)
            extra.remove(moved)
    for shape in missing:
        added = change.edit_kind == "add" and shape == change.value
        reasons.append(f"{shape.kind} not added" if added else f"{shape.kind} missing")
    for shape in extra:
        removed = change.edit_kind == "remove" and (shape.row, shape.column) in was and \
            was[(shape.row, shape.column)].kind == change.target
        reasons.append(f"{shape.kind} not removed" if removed else f"extra {shape.kind}")
    for cell in sorted(set(want) & set(got)):
        w, g, old = want[cell], got[cell], was.get(cell)
        for attribute in ATTRIBUTES:
            value, wanted = getattr(g, attribute), getattr(w, attribute)
            if value == wanted:
                continue
            instructed = (change.attribute == attribute and old is not None
                          and old.kind == change.target)
            if not instructed:
                label = "added " + w.kind if old is None else w.kind
                reasons.append(f"{label} {attribute} {value}, not {wanted}" if old is None
                               else f"{label} {attribute} changed too")
            elif value == getattr(old, attribute):
                reasons.append(f"{attribute} not changed")
            else:
                reasons.append(f"{attribute} {value}, not {wanted}")
    return reasons


def judge_change(before: Scene, change: Change, seen: Scene) -> Verdict:
    """Good when `seen` is `before` with exactly `change` made."""
    detail = {"before": scene_to_dict(before), "after": scene_to_dict(seen)}
    expected, problem = apply_change(before, change)
    if expected is None:
        return Verdict(False, [problem or "the change cannot be made"], change.edit_kind,
                       detail)
    if same_scene(expected, before):
        return Verdict(False, ["nothing to change: the before-image already shows it"],
                       change.edit_kind, detail)
    reasons = differences(before, expected, seen, change)
    return Verdict(not reasons, reasons, change.edit_kind, detail)


def truth_of(record: dict[str, Any]) -> tuple[Scene, Scene]:
    try:
        before = scene_from_dict(record["scene_before"])
        after = scene_from_dict(record["scene_after"])
    except (KeyError, TypeError) as exc:
        raise InputError(f"record {record.get('id', '?')} has no shapes-world truth "
                         f"({type(exc).__name__}: {exc})",
                         "the shapes judge needs triplets from captions: {use: shapes}") from None
    return before, after


class ShapesJudge(Judge):
    name = "shapes"
    Options = ShapesJudgeOptions

    def pair(self, record: dict[str, Any], before: Any, after: Any) -> Verdict:
        true_before, true_after = truth_of(record)
        seen_before = read_scene(before)
        verdict = judge_change(seen_before, change_of(true_before, true_after),
                               read_scene(after))
        verdict.detail["before_as_captioned"] = same_scene(seen_before, true_before)
        return verdict

    def held_out(self, count: int, seed: int) -> list[HeldOut]:
        cases = []
        for index in range(count):
            rng = random.Random(f"editkit-shapes-held-out:{seed}:{index}")
            while True:
                scene = random_scene(rng, self.options.max_shapes)
                made = edit_scene(scene, rng.choice(self.options.edits), rng,
                                  self.options.max_shapes)
                if made is not None:
                    break
            after, instruction, _ = made
            truth = {"edit_kind": change_of(scene, after).edit_kind,
                     "scene_before": scene_to_dict(scene),
                     "scene_after": scene_to_dict(after)}
            cases.append(HeldOut(draw(scene), instruction, truth, scene.caption(),
                                 after.caption()))
        return cases

    def edit(self, truth: dict[str, Any], edited: Any) -> Verdict:
        before, after = truth_of(truth)
        return judge_change(before, change_of(before, after), read_scene(edited))

    def truth_for(self, image: Any, instruction: str) -> dict[str, Any]:
        """The oracle reads the scene `image` shows and makes the instruction's change to it:
        the truth of that edit, as a held-out case's. An instruction that cannot be made on
        that scene (no such shape, or already so) is refused: no edit of it can be good."""
        before = read_scene(image)
        change = change_of_instruction(instruction)
        after, problem = apply_change(before, change)
        if after is None or same_scene(after, before):
            raise InputError(f"the shapes judge cannot judge {instruction!r} on this image "
                             f"({before.caption()}): "
                             f"{problem or 'the image already shows it'}",
                             "give an instruction the image allows")
        return {"edit_kind": change.edit_kind, "scene_before": scene_to_dict(before),
                "scene_after": scene_to_dict(after)}
