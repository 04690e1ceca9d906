import json
import signal
import time
from pathlib import Path

import pytest
import yaml

from editkit.errors import RecipeError
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


def kill_and_resume(cli, folder: Path, path: Path, shards: int = 3):
    """Run the recipe with the CLI, SIGKILL it once `shards` caption shards are on disk, and
    run it again: the triplets kept at the kill, and the second run's result."""
    proc = cli.popen("run", path, OPENAI_API_KEY="sk-test")
    deadline = time.time() + 60
    while len(list((folder / "run" / "captions").glob("shard-*.jsonl"))) < shards and \
            time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = sum(r["status"] == "kept" for r in records(folder))
    return before, cli("run", path, OPENAI_API_KEY="sk-test")


def refusal(path: Path) -> tuple[str, str]:
    """The one problem validating the recipe finds, as (where, message) on one line."""
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    (problem,) = info.value.problems
    assert "\n" not in problem[1]
    return problem
