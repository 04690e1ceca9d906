"""Checks every caption triplet passes before it is kept, whichever generator wrote it.

A rendered pair is only as good as its triplet: an "add a dog" whose output caption has no
dog renders a pair that teaches the editor to ignore the instruction. So each triplet is
checked on both sides, and a failure is a rejected record with its reason. The checks are
word-level and favour precision over recall: they reject what is clearly wrong and let
through what merely looks odd (a synonym, a reworded caption), since a wrong reject costs a
good triplet and a wrong keep is left to the filters after rendering.

In order, with the reason each rejection is recorded under:

- `invalid schema`: not an object, or `input`/`edit`/`output` not non-empty strings.
- `output same as input`: the captions are equal up to case, spacing and punctuation.
- `several edits in one`: the instruction chains two edits: two imperative verbs joined by
  "and", "then", ";" or "," ("add a tree and remove the car", "make it snowy, then add a
  dog"). Only verbs that cannot be nouns there count; "make", "turn", "paint" and the like
  count only when an object word follows ("and turn it", not "and turn signals").
- `add: input already has it` / `remove: input lacks it`: an "add/put/place/insert X" whose
  input already names X's head word (its last content word, a number apart), a
  "remove/delete/erase/take away/get rid of X" whose input does not. X is the instruction's
  object up to its first preposition or clause ("a red bicycle | next to the bench"); an
  object with no content word ("remove it") is not checked.
- `added thing missing from output`: an "add X" whose output names none of X's content words
  (articles and quantities dropped; plurals, derived forms like "snow"/"snowy" and a few
  synonyms like "bike"/"bicycle", "light"/"lit" count as a mention).
- `removed thing still in output`: a "remove X" whose output still names X in full: X's head
  word with all its modifiers a few words before it ("remove the red car" rejects "a red
  car", not "a blue car"), not negated ("a street without cars", "with no cars", "the cars
  removed" are fine). Partial removals ("remove one of the cars", "remove a car", "remove
  some trees") are not checked.
- `output changes more than the edit`: the content words only one caption has (articles,
  prepositions, conjunctions and edit verbs dropped; plurals matched), less those the
  instruction names, are either at least `REWRITE_WORDS` and `REWRITE_SHARE` of both
  captions' content words (the captions share almost nothing: another scene), or, counting
  only the output's, at least `ADDED_WORDS` and twice the input's content words (the edit is
  buried in a new description). A season, a time of day or a style change rewrites a few
  words (at most 7 in the built-in packs' examples) and passes.
"""

from __future__ import annotations

import re
from typing import Any

from editkit.plugin.kinds import Reject

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")  # letters and digits of any script
_ARTICLES = {"a", "an", "the", "some", "more", "all", "any", "few", "several", "two", "three"}
_EDIT_VERB = re.compile(r"^\s*(?:please\s+)?(add|put|place|insert|remove|delete|erase|"
                        r"take away|get rid of)\b(?!-)\s+(.*)$", re.IGNORECASE)
_ADD_VERBS = {"add", "put", "place", "insert"}
# where an edit's object ends: "a red bicycle | next to the bench"
_OBJECT_END = re.compile(r"\b(?:to|on|in|at|from|next|near|behind|under|over|beside|with|"
                         r"that|which|who|where|so|while|and|but|into|onto|inside|outside|"
                         r"above|below|between|along|across|around|against|by|for|facing)\b")
# words at the end of an object phrase that are not the object: "remove the car completely"
_FILLERS = {"please", "completely", "entirely", "altogether", "too", "also", "away", "out",
            "off", "up", "here", "there", "now", "instead", "again", "just", "only", "it",
            "them", "image", "picture", "photo", "scene", "one", "ones", "s"}
# a removal of part of a group: "remove one of the cars" leaves cars in the output
_PARTIAL = {"a", "an", "one", "some", "two", "three", "four", "five", "few", "several", "half",
            "most", "many", "part", "another", "extra", "second", "third", "last", "other",
            "either", "any"}
_NEGATION_BEFORE = {"no", "without", "not", "free", "minus", "zero", "absent", "lacking",
                    "devoid", "instead", "nor", "empty", "cleared", "removed"}
_NEGATION_AFTER = {"removed", "gone", "missing", "erased", "deleted", "cleared", "absent"}
_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child",
              "feet": "foot", "teeth": "tooth", "mice": "mouse", "geese": "goose",
              "leaves": "leaf", "knives": "knife", "shelves": "shelf", "wolves": "wolf",
              "halves": "half", "loaves": "loaf", "scarves": "scarf", "lives": "life"}
_SYNONYMS = [{"bike", "bicycle"}, {"tv", "television"}, {"sofa", "couch"},
             {"plane", "airplane", "aeroplane"}, {"light", "lit", "lighting", "lamp"},
             {"colour", "color", "colourful", "colorful"}, {"grey", "gray"},
             {"kid", "child"}, {"puppy", "dog"}, {"kitten", "cat"}, {"auto", "car"}]

# "one change per edit": a second edit verb after and/then/;/,
_ALWAYS_VERBS = ("add|remove|delete|erase|insert|replace|swap|convert|transform|recolou?r|"
                 "repaint")
_OBJECT_VERBS = ("make|turn|put|place|paint|change|move|take|get|give|set|let|colou?r|"
                 "switch|fill|cover|darken|brighten")
_FOLLOWERS = ("the|a|an|it|its|them|their|this|that|these|those|all|every|everything|some|"
              "more|another|one|two|three|his|her|rid|away|out|off|on|into|up|down")
_FIRST_VERB = re.compile(rf"^\s*(?:please\s+)?(?:{_ALWAYS_VERBS}|{_OBJECT_VERBS})\b(?!-)",
                         re.IGNORECASE)
_SECOND_VERB = re.compile(
    rf"(?:;|,|\band\b|\bthen\b)\s*(?:(?:and\s+)?then\s+)?(?:also\s+)?"
    rf"(?:(?P<always>{_ALWAYS_VERBS})\b(?!-)|(?P<verb>{_OBJECT_VERBS})\s+(?:{_FOLLOWERS})\b)",
    re.IGNORECASE)

# words that carry no content for the rewrite check
_STOP = _ARTICLES | {
    "and", "or", "of", "with", "in", "on", "at", "to", "from", "by", "for", "into", "onto",
    "over", "under", "near", "next", "beside", "behind", "its", "it", "is", "are", "was",
    "be", "there", "this", "that", "these", "those", "both", "each", "as", "like", "while",
    "his", "her", "their", "which", "who", "has", "have", "very", "up", "out", "off", "just",
    "look", "looks", "make", "turn", "style", "add", "remove", "replace", "swap", "put",
    "place", "paint", "change", "get", "rid", "take", "away", "s", "now", "instead", "one",
    "ones", "other"}
REWRITE_WORDS = 8
REWRITE_SHARE = 0.8
ADDED_WORDS = 12


def normalise(text: str) -> str:
    """Lowercase words only: 'A  Red car.' and 'a red car' are the same caption."""
    return " ".join(_WORD.findall(text.lower()))


def dedupe_key(triplet: dict[str, Any]) -> str:
    return "|".join(normalise(str(triplet.get(k, ""))) for k in ("input", "edit", "output"))


def words(text: str) -> list[str]:
    """The lowercase words of a text, split at spaces, punctuation and hyphens, without a
    possessive 's ("the car's door" -> the, car, door)."""
    return [w[:-2] if w.endswith("'s") else w for w in _WORD.findall(text.lower())]


def _object_words(phrase: str) -> list[str]:
    """The content words of an edit's object: 'a red bicycle to the left' -> red, bicycle."""
    head = _OBJECT_END.split(phrase.lower())[0]
    found = [w for w in words(head) if w not in _ARTICLES]
    while found and found[-1] in _FILLERS:
        found.pop()
    return found


def _stems(word: str) -> set[str]:
    """The word and the singulars it may be a plural of: 'buses' -> buses, buse, bus."""
    out = {word}
    if word in _IRREGULAR:
        out.add(_IRREGULAR[word])
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        out.add(word[:-1])
        if word.endswith("es"):
            out.add(word[:-2])
        if word.endswith("ies"):
            out.add(word[:-3] + "y")
        if word.endswith("ves"):
            out |= {word[:-3] + "f", word[:-3] + "fe"}
    return out


def same_word(a: str, b: str) -> bool:
    """True for one word in two numbers: car/cars, bus/buses, leaf/leaves, person/people."""
    return a == b or bool(_stems(a) & _stems(b))


def _related(a: str, b: str) -> bool:
    """Loosely the same word: a number, a derived form (snow/snowy/snowfall, paint/painted)
    or a listed synonym. Used where a false match only lets a triplet through."""
    if same_word(a, b):
        return True
    short, long = sorted((a, b), key=len)
    if len(short) >= 3 and long.startswith(short):
        return True
    return any(_stems(a) & group and _stems(b) & group for group in _SYNONYMS)


def _mentions(caption: str, words_: list[str]) -> bool:
    """True when the caption names the object (its last content word, allowing plurals)."""
    if not words_:
        return False
    head = words_[-1]
    return any(same_word(head, w) for w in words(caption))


def _mentions_any(caption: str, words_: list[str]) -> str | None:
    """The first of `words_` the caption names loosely (None: it names none of them)."""
    said = words(caption)
    for word in words_:
        if any(_related(word, w) for w in said):
            return word
    return None


def _mentions_fully(caption: str, words_: list[str]) -> bool:
    """True when the caption names the whole object, not negated: its head word (a number
    apart) with every modifier among the few words before it, and no 'no'/'without' near."""
    if not words_:
        return False
    head, modifiers = words_[-1], words_[:-1]
    said = words(caption)
    for i, word in enumerate(said):
        if not same_word(head, word):
            continue
        before = said[max(0, i - len(modifiers) - 3):i]
        if not all(any(same_word(m, w) for w in before) for m in modifiers):
            continue
        if set(before) & _NEGATION_BEFORE or set(said[i + 1:i + 3]) & _NEGATION_AFTER:
            continue
        return True
    return False


def chained_edit(edit: str) -> str | None:
    """The second edit of an instruction that chains two ('... and remove the car'), or
    None: the instruction starts with an edit verb and another follows and/then/;/,."""
    if not _FIRST_VERB.match(edit):
        return None
    match = _SECOND_VERB.search(edit, _FIRST_VERB.match(edit).end())  # type: ignore[union-attr]
    return edit[match.start():].lstrip(" ,;") if match else None


def _content(text: str) -> list[str]:
    return [w for w in words(text) if w not in _STOP and not w.isdigit()]


def unexplained_changes(triplet: dict[str, Any]) -> list[str]:
    """Content words only one caption has (a number apart), less those the edit names.
    '-word' was in the input only, '+word' is in the output only."""
    before, after = _content(triplet["input"]), _content(triplet["output"])
    left = list(after)
    removed = []
    for word in before:
        match = next((i for i, w in enumerate(left) if same_word(word, w)), None)
        if match is None:
            removed.append(word)
        else:
            del left[match]
    named = _content(triplet["edit"])
    explained = [w for w in removed + left if any(_related(w, n) for n in named)]
    return [f"-{w}" for w in removed if w not in explained] + \
        [f"+{w}" for w in left if w not in explained]


def check_triplet(item: Any) -> Reject | None:
    """Why this triplet must not be kept, or None (the module docstring lists the checks)."""
    if not isinstance(item, dict):
        return Reject("invalid schema", f"expected an object, got {type(item).__name__}")
    for key in ("input", "edit", "output"):
        value = item.get(key)
        if not isinstance(value, str) or not value.strip():
            return Reject("invalid schema", f"'{key}' must be a non-empty string")
    edit, before, after = item["edit"], item["input"], item["output"]
    if normalise(before) == normalise(after):
        return Reject("output same as input", after)
    second = chained_edit(edit)
    if second is not None:
        return Reject("several edits in one", f"{edit!r} chains a second edit: {second!r}")
    match = _EDIT_VERB.match(edit)
    if match:
        verb = match.group(1).lower()
        object_words = _object_words(match.group(2))
        if not object_words:
            pass  # "remove it": nothing to look for
        elif verb in _ADD_VERBS:
            if _mentions(before, object_words):
                return Reject("add: input already has it", f"{edit!r} / {before!r}")
            if _mentions_any(after, object_words) is None:
                return Reject("added thing missing from output",
                              f"'{' '.join(object_words)}' ({edit!r}) is not in {after!r}")
        else:
            if not _mentions(before, object_words):
                return Reject("remove: input lacks it", f"{edit!r} / {before!r}")
            partial = words(match.group(2))[0] in _PARTIAL
            if not partial and _mentions_fully(after, object_words):
                return Reject("removed thing still in output",
                              f"'{' '.join(object_words)}' ({edit!r}) is still in {after!r}")
    changes = unexplained_changes(item)
    total = len(_content(before)) + len(_content(after))
    added = [c for c in changes if c.startswith("+")]
    if len(changes) >= REWRITE_WORDS and len(changes) >= REWRITE_SHARE * total:
        return Reject("output changes more than the edit",
                      f"the captions share almost no words: {len(changes)} of {total} "
                      f"changed, not named by {edit!r}: {' '.join(changes[:12])}")
    if len(added) >= ADDED_WORDS and len(added) >= 2 * len(_content(before)):
        return Reject("output changes more than the edit",
                      f"the output adds {len(added)} words {edit!r} does not name: "
                      f"{' '.join(added[:12])}")
    return None
