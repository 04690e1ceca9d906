"""prompt-to-prompt through the real `editkit` command, on template captions and tiny-sd
(tiny-sdxl: through the filters too)."""

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


SDXL = RECIPE.replace("model: tiny-sd\n", "model: tiny-sdxl\n").replace(
    "width: 32", "width: 64").replace("height: 32", "height: 48") + """
filters:
  - {use: clip, options: {model: tiny-clip, min_image: -1, min_direction: -1, min_text: -1}}
  - {use: dino, options: {model: tiny-dinov2, min_similarity: -1, max_similarity: 1}}
"""


BLEND = SDXL.replace("use: prompt-to-prompt", "use: masked-blend").replace(
    "    cross: replace\n    on_mismatch: refine\n    local_blend: true\n"
    "    self_fraction: [0.2, 0.8]\n", "    mask: foreground\n")


def test_an_sdxl_recipe_validates_and_runs_captions_render_and_filters(cli, tmp_path):
    for name, text in (("blend.yaml", BLEND), ("recipe.yaml", SDXL)):
        (tmp_path / name).write_text(text)
        checked = cli("recipes", "validate", tmp_path / name)
        assert checked.returncode == 0, checked.stderr
        assert "model: tiny-sdxl" in checked.stdout
    assert "use: masked-blend" in BLEND and "mask: foreground" in BLEND
    result = cli("run", tmp_path / "recipe.yaml")
    assert result.returncode == 0, result.stderr
    assert "6 pairs (12 images)" in result.stdout
    folder = tmp_path / "runs/p2p"
    records = [json.loads(line) for shard in sorted((folder / "render").glob("shard-*.jsonl"))
               for line in shard.read_text().splitlines()]
    assert len(records) == 6 and all(r["status"] == "kept" for r in records)
    for r in records:
        s = r["settings"]
        assert s["model"] == "tiny-sdxl" and (s["width"], s["height"]) == (64, 48)
        assert s["cross"] in ("replace", "refine") and s["local_blend"]
        for role in ("before", "after", "mask"):
            assert (folder / "render" / r[role]).is_file()
    filters = json.loads((folder / "manifest.json").read_text())["stages"]["filters"]
    assert filters["scored"] == 6 and filters["kept"] == 6
    assert filters["stats"]["0-clip"]["images_embedded"] == 12
