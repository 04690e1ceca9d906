"""`use: template`: offline caption triplets from vocabulary lists in the recipe.

Deterministic: triplet number i depends only on (seed, i), so a resumed run continues the
same stream and two runs with one seed write the same triplets. Each triplet is one edit of
one kind (change an attribute, add, remove or replace an object) and says which words it
changed, for renderers that blend locally.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import Field, model_validator

from editkit import hookimpl
from editkit.plugin.kinds import IndexedCaptionGenerator, PluginOptions

EditKind = Literal["change", "add", "remove", "replace"]

DEFAULT_VERBS: dict[str, list[str]] = {
    "change": ["make the {subject} {attribute}", "turn the {subject} {attribute}",
               "paint the {subject} {attribute}"],
    "add": ["add {article} {attribute} {subject}", "put {article} {attribute} {subject} in it"],
    "remove": ["remove the {subject}", "take away the {subject}", "get rid of the {subject}"],
    "replace": ["replace the {subject} with {article} {new}", "swap the {subject} for "
                "{article} {new}"],
}
_FIELDS = {"change": {"subject", "attribute"}, "add": {"article", "attribute", "subject"},
           "remove": {"subject"}, "replace": {"subject", "article", "new"}}


class TemplateOptions(PluginOptions):
    subjects: list[str] = Field(
        default_factory=lambda: ["car", "house", "tree", "bicycle", "bench", "lamp post"],
        min_length=2, description="object nouns; a caption names distinct ones, and add / "
        "replace edits bring in one the caption lacks")
    attributes: list[str] = Field(
        default_factory=lambda: ["red", "blue", "green", "yellow", "white", "black"],
        min_length=2, description="adjectives put before each object ('a red car'); change "
        "edits swap one for another")
    scenes: list[str] = Field(default_factory=list, description="settings: 'on a quiet street'")
    caption: str = Field("a photo of {objects}{scene}",
                         description="caption template with {objects} and {scene}")
    edits: list[EditKind] = Field(
        default_factory=lambda: ["change", "add", "remove", "replace"], min_length=1,
        description="edit kinds drawn from, each equally likely (list one twice to favour it)")
    verbs: dict[EditKind, list[str]] = Field(default_factory=dict,
                                             description="phrasings per edit kind")
    max_objects: int = Field(2, ge=1, le=4, description="most objects an input caption "
                             "names (1 to this many; remove edits need at least 2)")
    batch: int = Field(64, ge=1, description="triplets per written shard")

    @model_validator(mode="after")
    def _check(self) -> "TemplateOptions":
        if "{objects}" not in self.caption:
            raise ValueError("caption must contain {objects}")
        for kind, phrasings in self.verbs.items():
            for text in phrasings:
                names = {part.split("}")[0] for part in text.split("{")[1:]}
                extra = names - _FIELDS[kind]
                if extra:
                    raise ValueError(f"verbs.{kind}: unknown field {{{sorted(extra)[0]}}} in "
                                     f"{text!r}; use {', '.join(sorted(_FIELDS[kind]))}")
        if len(set(self.subjects)) < len(self.subjects):
            raise ValueError("subjects has duplicates")
        if "remove" in self.edits and self.max_objects < 2:
            raise ValueError("remove edits need max_objects >= 2 (something must remain)")
        return self


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


class TemplateCaptions(IndexedCaptionGenerator):
    name = "template"
    Options = TemplateOptions

    def triplet(self, seed: int, index: int) -> dict[str, Any]:
        """The triplet at `index` for `seed`: a pure function of both."""
        opts = self.options
        rng = random.Random(f"editkit-template:{seed}:{index}")
        kind = rng.choice(opts.edits)
        scene = rng.choice(opts.scenes) if opts.scenes else ""
        low = 2 if kind == "remove" else 1
        count = min(rng.randint(low, max(low, opts.max_objects)), len(opts.subjects))
        if kind in ("add", "replace"):  # a subject must be left to add or swap in
            count = min(count, len(opts.subjects) - 1)
        subjects = rng.sample(opts.subjects, count)
        objects = [[rng.choice(opts.attributes), s] for s in subjects]
        after = [list(o) for o in objects]
        verbs = opts.verbs.get(kind) or DEFAULT_VERBS[kind]
        verb = rng.choice(verbs)
        target = rng.randrange(len(objects))
        attr, subject = objects[target]
        if kind == "change":
            new_attr = rng.choice([a for a in opts.attributes if a != attr])
            after[target][0] = new_attr
            edit = verb.format(subject=subject, attribute=new_attr)
            words = [new_attr]
        elif kind == "add":
            new = rng.choice([s for s in opts.subjects if s not in subjects])
            new_attr = rng.choice(opts.attributes)
            after.append([new_attr, new])
            edit = verb.format(article=article(new_attr), attribute=new_attr, subject=new)
            words = [new_attr, new]
        elif kind == "remove":
            del after[target]
            edit = verb.format(subject=subject)
            words = [attr, subject]
        else:
            new = rng.choice([s for s in opts.subjects if s not in subjects])
            after[target][1] = new
            edit = verb.format(subject=subject, article=article(new), new=new)
            words = [new]
        return {"input": self.caption(objects, scene), "edit": edit,
                "output": self.caption(after, scene), "edit_kind": kind, "words": words,
                "region": "foreground"}

    def caption(self, objects: list[list[str]], scene: str) -> str:
        phrases = [f"{article(a)} {a} {s}" for a, s in objects]
        text = phrases[0]
        if len(phrases) > 1:
            text = ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return self.options.caption.format(objects=text, scene=f" {scene}" if scene else "")


@hookimpl
def register_caption_generators(register):
    register(TemplateCaptions)
