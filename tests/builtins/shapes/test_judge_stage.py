"""The evaluate stage with `judge: {use: shapes}`, end to end through the real `editkit`
command on tiny models (random weights: the numbers are low, but they are measured)."""

import json
import shutil
from pathlib import Path

from editkit.run.folder import read_dataset
from editkit.run.recipe import load_recipe
from editkit.testing import tiny_model
from editkit.testing.browser import open_page

ROOT = Path(__file__).resolve().parents[3]

# The shapes loop on tiny built-in models (recipes/shapes.yaml uses the world's models).
RECIPE = """\
name: shapes-tiny
output: runs/judged
seed: 2
captions: {use: shapes, count: 4, options: {edits: [colour, background, kind, size]}}
render:
  use: prompt-to-prompt
  options: {model: tiny-sd, samples: 2, steps: 2, width: 32, height: 32, cross: replace,
            on_mismatch: refine, triplets_per_batch: 4}
filters:
  - {use: dino, options: {model: tiny-dinov2, min_similarity: 0.5}}
evaluate:
  split: 0.5
  steps: 1
  resolution: 32
  clip_model: tiny-clip
  dino_model: tiny-dinov2
  base: tiny-ip2p
  device: cpu
  judge: {use: shapes, count: 3}
"""


def in_unit(value):
    return value is None or 0 <= value <= 1


def test_evaluate_with_a_judge_measures_pairs_filters_and_editors(cli, tmp_path):
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    run = tmp_path / "runs/judged"
    final = run / "train" / "final"  # trained weights (a full pipeline), as a trainer leaves them
    shutil.copytree(tiny_model("tiny-ip2p"), final)
    (final / "editkit_weights.json").write_text('{"type": "pipeline"}')
    result = cli("run", "recipe.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((run / "evaluate/judge.json").read_text())
    pairs = data["pairs"]
    assert pairs["before_filters"]["pairs"] == 8  # every rendered sample is judged
    kept = len(read_dataset(run).rows)
    assert pairs["after_filters"]["pairs"] == kept
    verdicts = [json.loads(x) for x in (run / "evaluate/judge-pairs.jsonl").read_text()
                .splitlines()]
    assert len(verdicts) == 8 and all(v["good"] or v["reasons"] for v in verdicts)
    assert pairs["before_filters"]["good"] == sum(v["good"] for v in verdicts)
    for numbers in (pairs["before_filters"], pairs["after_filters"],
                    data["filters"]["all"], data["filters"]["each"]["0-dino"]):
        assert all(in_unit(numbers[k]) for k in ("accuracy", "precision", "recall")
                   if k in numbers)
    # the base and the trained editor, on the same held-out inputs the world drew
    assert [e["label"] for e in data["editors"]] == ["tiny-ip2p", "runs/judged"]
    assert len(data["held_out"]["inputs"]) == 3
    for editor in data["editors"]:
        assert editor["cases"] == 3 and in_unit(editor["success"])
        assert set(editor["by_kind"]) <= {"colour", "background", "kind", "size"}
        assert [r["instruction"] for r in editor["rows"]] == [
            c["instruction"] for c in data["held_out"]["inputs"]]
        assert all((run / "evaluate" / row["image"]).is_file() for row in editor["rows"])
    assert "| pair accuracy, before filtering |" in result.stdout
    assert "| editor success: runs/judged |" in result.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["evaluate"]["judge"]["editor_success"] == {
        e["label"]: e["success"] for e in data["editors"]}
    html = (run / "report/index.html").read_text()
    assert "<h2>Judged by shapes</h2>" in html and "held-out input" in html
    seen = open_page(run / "report/index.html")
    assert seen["broken"] == [] and seen["errors"] == []
    assert html.count('alt="make the') + html.count('alt="turn the') >= 3 * 3  # the grid
    # nothing changed: nothing is redone
    stamp = (run / "evaluate/judge.json").stat().st_mtime_ns
    again = cli("run", "recipe.yaml")
    assert again.returncode == 0 and "| editor success: tiny-ip2p |" in again.stdout
    assert (run / "evaluate/judge.json").stat().st_mtime_ns == stamp


def test_an_unknown_judge_is_a_recipe_error(cli, tmp_path):
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    result = cli("recipes", "validate", "recipe.yaml", "evaluate.judge.use=shape")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "evaluate.judge.use: unknown judge 'shape' (did you mean 'shapes'?)" in result.stderr
    typo = cli("recipes", "validate", "recipe.yaml", "evaluate.judge.options.edit=[colour]")
    assert typo.returncode == 2 and "evaluate.judge.options.edit: unknown key" in typo.stderr


def test_the_shapes_recipe_is_the_whole_loop_on_the_world_models():
    recipe = load_recipe(ROOT / "recipes/shapes.yaml")
    assert recipe.stages() == ["captions", "render", "filters", "train", "evaluate"]
    m = recipe.model
    assert m.captions.use == "shapes" and m.render.options["model"] == "shapes-sd"
    assert [f.options["model"] for f in m.filters] == ["shapes-clip", "shapes-dino"]
    assert m.train.use == "lora" and m.train.options["base"] == "shapes-sd"
    assert m.evaluate.judge.use == "shapes"


def test_every_stage_can_be_broken_by_overrides(cli, tmp_path):
    result = cli("recipes", "validate", ROOT / "recipes/shapes.yaml",
                 "render.options.control=false", "filters.0.options.min_image=0",
                 "filters.0.options.min_direction=0", "filters.0.options.min_text=0",
                 "filters.0.options.keep_top=null", "filters.1.options.min_similarity=0",
                 "train.options.steps=0")
    assert result.returncode == 0, result.stderr
    assert "control: false" in result.stdout and "keep_top: null" in result.stdout
    assert "steps: 0" in result.stdout and "judge:" in result.stdout


def test_a_judge_that_does_not_fit_the_captions_is_one_clear_line(cli, tmp_path):
    (tmp_path / "recipe.yaml").write_text("""\
name: misjudged
output: runs/misjudged
captions: {use: template, count: 4, options: {subjects: [car, house, tree], attributes: [red, blue]}}
render: {use: flat, options: {samples: 1, size: 16}}
filters: [{use: pixel-diff}]
evaluate: {split: 0.5, base: tiny-ip2p, judge: {use: shapes}}
""")
    result = cli("run", "recipe.yaml", plugins=["testkit"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "has no shapes-world truth" in result.stderr
    assert "the shapes judge needs triplets from captions: {use: shapes}" in result.stderr
