"""Checks every caption triplet passes before it is kept, whichever generator wrote it."""

from __future__ import annotations

import re
from typing import Any

from .kinds import Reject

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_ARTICLES = {"a", "an", "the", "some", "more", "all", "any", "few", "several", "two", "three"}
_EDIT_VERB = re.compile(r"^\s*(add|put|place|insert|remove|delete|erase|take away|get rid of)\b"
                        r"\s+(.*)$", re.IGNORECASE)
_ADD_VERBS = {"add", "put", "place", "insert"}


def normalise(text: str) -> str:
    """Lowercase words only: 'A  Red car.' and 'a red car' are the same caption."""
    return " ".join(_WORD.findall(text.lower()))


def dedupe_key(triplet: dict[str, Any]) -> str:
    return "|".join(normalise(str(triplet.get(k, ""))) for k in ("input", "edit", "output"))


def _object_words(phrase: str) -> list[str]:
    """The content words of an edit's object: 'a red bicycle to the left' -> red, bicycle."""
    phrase = re.split(r"\b(to|on|in|at|from|next|near|behind|under|over|beside|with)\b",
                      phrase.lower())[0]
    return [w for w in _WORD.findall(phrase) if w not in _ARTICLES]


def _mentions(caption: str, words: list[str]) -> bool:
    """True when the caption names the object (its last content word, allowing plurals)."""
    if not words:
        return False
    head = words[-1]
    forms = {head, head + "s", head + "es", head.rstrip("s")}
    return bool(forms & set(_WORD.findall(caption.lower())))


def check_triplet(item: Any) -> Reject | None:
    """Why this triplet must not be kept, or None. Schema, change, and add/remove sense."""
    if not isinstance(item, dict):
        return Reject("invalid schema", f"expected an object, got {type(item).__name__}")
    for key in ("input", "edit", "output"):
        value = item.get(key)
        if not isinstance(value, str) or not value.strip():
            return Reject("invalid schema", f"'{key}' must be a non-empty string")
    if normalise(item["input"]) == normalise(item["output"]):
        return Reject("output same as input", item["output"])
    match = _EDIT_VERB.match(item["edit"])
    if match:
        verb = match.group(1).lower()
        words = _object_words(match.group(2))
        if verb in _ADD_VERBS:
            if _mentions(item["input"], words):
                return Reject("add: input already has it", f"{item['edit']!r} / {item['input']!r}")
        elif not _mentions(item["input"], words):
            return Reject("remove: input lacks it", f"{item['edit']!r} / {item['input']!r}")
    return None
