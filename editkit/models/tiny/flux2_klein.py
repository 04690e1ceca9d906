"""A tiny random FLUX.2 klein editor, built offline (its tokenizer built in code)."""

from __future__ import annotations

from pathlib import Path


def build(path: str | Path, seed: int = 0) -> Path:
    """A Flux2KleinPipeline folder with every part of the real model at a tiny size."""
    raise NotImplementedError
