import json
from pathlib import Path

import yaml

from editkit.run.recipe import load_recipe
from editkit.run.runner import run_recipe


def recipe_file(folder: Path, use: str, count: int, options: dict, **captions) -> Path:
    data = {"name": "t", "output": str(folder / "run"), "seed": 0,
            "captions": {"use": use, "count": count, "options": options, **captions}}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(path: Path):
    return run_recipe(load_recipe(path), progress=False)


def records(folder: Path) -> list[dict]:
    out = []
    for shard in sorted((folder / "run" / "captions").glob("shard-*.jsonl")):
        out += [json.loads(line) for line in shard.read_text().splitlines() if line]
    return out


def manifest(folder: Path) -> dict:
    return json.loads((folder / "run" / "manifest.json").read_text())
