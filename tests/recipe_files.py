"""Writing recipe files for tests."""

from __future__ import annotations

from pathlib import Path


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path
