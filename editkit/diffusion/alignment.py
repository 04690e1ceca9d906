"""Token-level maps between a before prompt and an after prompt, for cross-attention edits.

Positions are those of the text encoder's sequence (BOS at 0, padded to `length`), which
the caller takes from the tokenizer (`model_max_length`), never a hard-coded 77.
"""

from __future__ import annotations

import difflib
import re
import weakref
from dataclasses import dataclass
from typing import Any

import torch

STOPWORDS = frozenset("a an the of and with in on at by to for from into is are it its this "
                      "that photo picture image view".split())


class AlignmentError(ValueError):
    """Two prompts that a word swap cannot map onto each other."""


@dataclass
class TokenWords:
    """A prompt's words and the encoder positions each word's tokens occupy."""

    words: list[str]
    positions: list[list[int]]
    ids: list[int]  # content token ids, without BOS/EOS/padding
    truncated: bool


def token_words(tokenizer: Any, prompt: str, length: int) -> TokenWords:
    words = prompt.split()
    positions: list[list[int]] = []
    ids: list[int] = []
    cursor = 1  # position 0 is BOS
    limit = length - 1  # the last position holds EOS at most
    for word in words:
        tokens = _word_ids(tokenizer, word)
        span = [p for p in range(cursor, cursor + len(tokens)) if p < limit]
        positions.append(span)
        ids += tokens[:len(span)]
        cursor += len(tokens)
    return TokenWords(words, positions, ids, truncated=cursor > limit)


# tokenizer -> word -> its token ids: a run's captions repeat their words, and every
# alignment of a triplet reads each caption's words again
_WORD_IDS: weakref.WeakKeyDictionary[Any, dict[str, list[int]]] = weakref.WeakKeyDictionary()


def _word_ids(tokenizer: Any, word: str) -> list[int]:
    try:
        known = _WORD_IDS.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no memory
        return tokenizer.encode(word, add_special_tokens=False)
    if word not in known:
        known[word] = tokenizer.encode(word, add_special_tokens=False)
    return known[word]


def _tail(n_after: int, n_before: int, length: int) -> dict[int, int]:
    """EOS and padding positions of the after prompt -> the same role in the before prompt."""
    shift = n_before - n_after
    return {p: min(max(p + shift, 0), length - 1) for p in range(n_after + 1, length)}


def replace_mapper(tokenizer: Any, before: str, after: str, length: int) -> torch.Tensor:
    """A (length, length) matrix M with after[..., j] = sum_i before[..., i] * M[i, j]:
    word i of the after prompt takes the attention of word i of the before prompt (a word
    swap). Words whose token counts differ share their tokens' attention evenly."""
    b, a = token_words(tokenizer, before, length), token_words(tokenizer, after, length)
    if len(b.words) != len(a.words):
        raise AlignmentError(
            f"a word swap needs prompts with the same number of words: {len(b.words)} "
            f"({before!r}) vs {len(a.words)} ({after!r})")
    mapper = torch.zeros(length, length)
    mapper[0, 0] = 1.0
    for src, dst in zip(b.positions, a.positions):
        if not dst:
            continue
        if len(src) == len(dst):
            for i, j in zip(src, dst):
                mapper[i, j] = 1.0
        elif src:
            for j in dst:
                mapper[src, j] = 1.0 / len(src)
    for j, i in _tail(len(a.ids), len(b.ids), length).items():
        mapper[i, j] = 1.0
    return mapper


def refine_alignment(tokenizer: Any, before: str, after: str,
                     length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, alpha), each of size `length`: after position j takes before position
    index[j] where alpha[j] is 1 (tokens the prompts share, aligned with difflib), and
    keeps its own attention where alpha[j] is 0 (new tokens)."""
    b, a = token_words(tokenizer, before, length), token_words(tokenizer, after, length)
    index = torch.arange(length)
    alpha = torch.zeros(length)
    index[0], alpha[0] = 0, 1.0
    matcher = difflib.SequenceMatcher(a=b.ids, b=a.ids, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            index[1 + block.b + k] = 1 + block.a + k
            alpha[1 + block.b + k] = 1.0
    for j, i in _tail(len(a.ids), len(b.ids), length).items():
        index[j], alpha[j] = i, 1.0
    return index, alpha


def _norm(word: str) -> str:
    return re.sub(r"[^\w]", "", word.lower())


def word_weights(tokenizer: Any, prompt: str, words: list[str], length: int,
                 scale: float = 1.0, base: float = 0.0) -> torch.Tensor:
    """A (length,) vector: `scale` at the tokens of `words` (multi-word entries match each
    of their words), `base` elsewhere."""
    wanted = {_norm(part) for word in words for part in word.split()} - {""}
    tw = token_words(tokenizer, prompt, length)
    out = torch.full((length,), float(base))
    for word, span in zip(tw.words, tw.positions):
        if _norm(word) in wanted:
            out[span] = float(scale)
    return out


def content_weights(tokenizer: Any, prompt: str, length: int) -> torch.Tensor:
    """1 at the tokens of the prompt's content words (no stopwords, no BOS/EOS/padding)."""
    tw = token_words(tokenizer, prompt, length)
    out = torch.zeros(length)
    for word, span in zip(tw.words, tw.positions):
        if _norm(word) and _norm(word) not in STOPWORDS:
            out[span] = 1.0
    return out


def changed_words(before: str, after: str, side: str = "both") -> list[str]:
    """Words of either prompt that the other lacks (difflib over words): the edit, for
    triplets that do not say which words changed. `side` "before" or "after" keeps only that
    prompt's words (what an image of it shows where the edit happens)."""
    b, a = before.split(), after.split()
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=b, b=a, autojunk=False).get_opcodes():
        if op != "equal":
            out += (b[i1:i2] if side != "after" else []) + (a[j1:j2] if side != "before" else [])
    return [w for w in dict.fromkeys(_norm(w) for w in out) if w and w not in STOPWORDS]
