"""prompt-to-prompt through the real `editkit` command, on template captions and tiny-sd."""

import json

RECIPE = """
name: p2p-tiny
output: runs/p2p
seed: 3
captions:
  use: template
  count: 3
  options: {subjects: [car, house, tree], attributes: [red, blue, green], edits: [change, add]}
render:
  use: prompt-to-prompt
  options:
    model: tiny-sd
    samples: 2
    steps: 3
    width: 32
    height: 32
    cross: replace
    on_mismatch: refine
    local_blend: true
    self_fraction: [0.2, 0.8]
    scheduler: euler
"""


def test_recipe_renders_pairs_with_settings_and_masks_and_resumes(cli, tmp_path):
    recipe = write_recipe(tmp_path, RECIPE)
    result = cli("run", recipe)
    assert result.returncode == 0, result.stderr
    assert "6 pairs (12 images)" in result.stdout
    folder = tmp_path / "runs/p2p/render"
    records = [json.loads(line) for shard in sorted(folder.glob("shard-*.jsonl"))
               for line in shard.read_text().splitlines()]
    assert len(records) == 6 and all(r["status"] == "kept" for r in records)
    for r in records:
        for role in ("before", "after", "mask"):
            assert (folder / r[role]).is_file()
        s = r["settings"]
        assert s["cross"] in ("replace", "refine") and s["scheduler"] == "euler"
        assert 0.2 <= s["self_fraction"] <= 0.8 and 7.5 <= s["guidance"] <= 15
        assert s["local_blend"] and s["words"]
    again = cli("run", recipe)
    assert again.returncode == 0 and "6 pairs (12 images)" in again.stdout
    assert len(list(folder.glob("shard-*.jsonl"))) == 3


def test_a_bad_option_is_one_clear_line(cli, tmp_path):
    recipe = write_recipe(tmp_path, RECIPE.replace("cross: replace", "cross: swap"))
    result = cli("run", recipe)
    assert result.returncode == 2
    assert "render.options.cross" in result.stderr and "Traceback" not in result.stderr


def write_recipe(folder, text):
    path = folder / "recipe.yaml"
    path.write_text(text)
    return path


def test_quickstart_recipe_names_the_renderer_and_validates(cli):
    from pathlib import Path

    quickstart = Path(__file__).resolve().parents[3] / "recipes/quickstart.yaml"
    result = cli("recipes", "validate", quickstart)
    assert result.returncode == 0, result.stderr
    assert "use: prompt-to-prompt" in result.stdout and "self_fraction" in result.stdout
