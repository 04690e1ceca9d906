"""A tiny random Qwen-Image-Edit editor, built offline (its tokenizer built in code)."""

from __future__ import annotations

from pathlib import Path


def build(path: str | Path, seed: int = 0) -> Path:
    """A QwenImageEditPlusPipeline folder with every part of the real model at a tiny size."""
    raise NotImplementedError
