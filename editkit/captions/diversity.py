"""Lexical diversity of generated text, to compare caption generators on one table.

MTLD (McCarthy & Jarvis 2010; bidirectional, factor threshold 0.72) is stable across text
lengths; Guiraud's index (types / sqrt(tokens)) and Yule's K (repetition: lower is more
varied) are the classic length-corrected measures.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from editkit.captions.checks import _WORD

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


def comparison_table(runs: list[Path]) -> str:
    """One row per run folder: generator, model, kept, rejected, diversity of captions and
    instructions, cost; from each manifest's captions summary."""
    header = ["run", "generator", "model", "kept", "rejected", "cap MTLD", "cap Guiraud",
              "cap Yule K", "ins MTLD", "ins Guiraud", "ins Yule K", "cost USD"]
    rows = [header]
    for run in runs:
        manifest = json.loads((Path(run) / "manifest.json").read_text())
        summary = manifest.get("stages", {}).get("captions", {})
        llm = summary.get("stats", {}).get("llm", {})
        div = summary.get("diversity", {})
        cap, ins = div.get("captions", {}), div.get("instructions", {})
        cost = llm.get("cost_usd")
        rows.append([str(run), manifest.get("plugins", {}).get("captions", {}).get("use", "?"),
                     str(llm.get("model", "-")), str(summary.get("kept", "-")),
                     str(summary.get("rejected", "-")),
                     *(str(d.get(k, "-")) for d in (cap, ins)
                       for k in ("mtld", "guiraud", "yule_k")),
                     "-" if cost is None else f"{cost:.4f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


if __name__ == "__main__":  # python -m editkit.captions.diversity RUN_FOLDER...
    print(comparison_table([Path(p) for p in sys.argv[1:]]))
