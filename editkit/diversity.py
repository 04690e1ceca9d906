"""Lexical diversity of generated text, to compare caption generators on one table.

MTLD (McCarthy & Jarvis 2010; bidirectional, factor threshold 0.72) is stable across text
lengths; Guiraud's index (types / sqrt(tokens)) and Yule's K (repetition: lower is more
varied) are the classic length-corrected measures.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable

from .triplets import _WORD

MTLD_THRESHOLD = 0.72


def words(texts: Iterable[str]) -> list[str]:
    return [w for text in texts for w in _WORD.findall(text.lower())]


def _mtld_pass(tokens: list[str]) -> float:
    factors = 0.0
    types: set[str] = set()
    count = 0
    for token in tokens:
        count += 1
        types.add(token)
        if len(types) / count <= MTLD_THRESHOLD:
            factors += 1
            types, count = set(), 0
    if count:
        ttr = len(types) / count
        factors += (1 - ttr) / (1 - MTLD_THRESHOLD)
    return len(tokens) / factors if factors else float(len(tokens))


def mtld(tokens: list[str]) -> float:
    if not tokens:
        return 0.0
    return (_mtld_pass(tokens) + _mtld_pass(tokens[::-1])) / 2


def guiraud(tokens: list[str]) -> float:
    return len(set(tokens)) / math.sqrt(len(tokens)) if tokens else 0.0


def yule_k(tokens: list[str]) -> float:
    n = len(tokens)
    if n == 0:
        return 0.0
    spectrum = Counter(Counter(tokens).values())
    m2 = sum(freq * freq * v for freq, v in spectrum.items())
    return 1e4 * (m2 - n) / (n * n)


def diversity(texts: Iterable[str]) -> dict[str, Any]:
    tokens = words(texts)
    return {"tokens": len(tokens), "types": len(set(tokens)), "mtld": round(mtld(tokens), 3),
            "guiraud": round(guiraud(tokens), 3), "yule_k": round(yule_k(tokens), 3)}


def triplet_diversity(triplets: list[dict[str, Any]]) -> dict[str, Any]:
    """Diversity of the captions (inputs and outputs) and of the instructions (edits)."""
    return {"captions": diversity(t[k] for t in triplets for k in ("input", "output")),
            "instructions": diversity(t["edit"] for t in triplets)}
