"""The built-in recipes as commands see them: listed, copied out to edit, run by name, and
refused at validation when a domain pack or a sample input they name is missing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from editkit.models import HUB_ID
from editkit.run.builtin_recipes import recipes_root

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
SAMPLE = ROOT / "recipes" / "data" / "quickstart" / "shapes.png"


def model_refs(node, key=""):
    """The values of model options (`model`, `base`, `clip_model`, `models`, ...)."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in model_refs(v, str(k))]
    if isinstance(node, list):
        return [s for v in node for s in model_refs(v, key)]
    is_model = key in ("model", "base", "models") or key.endswith("_model")
    return [node] if isinstance(node, str) and is_model else []


def test_the_package_reaches_the_top_level_recipes_folder():
    assert recipes_root().resolve() == (ROOT / "recipes").resolve()
    assert (ROOT / "editkit" / "recipes").resolve() == (ROOT / "recipes").resolve()


def test_every_recipe_says_what_it_needs_naming_the_hub_weights_it_downloads():
    for path in RECIPES:
        needs = [line for line in path.read_text().splitlines() if line.startswith("# Needs: ")]
        assert len(needs) == 1, path.name
        hub = {s for s in model_refs(yaml.safe_load(path.read_text())) if HUB_ID.match(s)}
        assert all(ref in needs[0] for ref in hub), (path.name, hub)


def test_list_shows_every_recipe_with_what_it_makes_and_needs_and_the_packs(cli):
    listed = cli("recipes", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    shown = json.loads(listed.stdout)
    assert [r["name"] for r in shown["recipes"]] == sorted(p.stem for p in RECIPES)
    quickstart = next(r for r in shown["recipes"] if r["name"] == "quickstart")
    assert quickstart["description"].startswith("Offline end-to-end run in the shapes world")
    assert quickstart["needs"].startswith("nothing to download")
    streetview = next(r for r in shown["recipes"] if r["name"] == "streetview")
    assert "OPENAI_API_KEY" in streetview["needs"]
    assert {p["name"] for p in shown["domain_packs"]} >= {"streetview", "interior"}

    table = cli("recipes", "list").stdout
    assert re.search(r"^quickstart +Offline end-to-end run", table, re.M)
    assert re.search(r"^ +needs: OPENAI_API_KEY", table, re.M)
    assert "domain packs (captions.options.domain_pack): interior, streetview" in table


def test_copy_writes_the_recipe_and_its_sample_input_where_its_paths_point(cli, tmp_path):
    copied = cli("recipes", "copy", "quickstart")
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.split() == ["quickstart.yaml", "recipes/data/quickstart/shapes.png"]
    text = (tmp_path / "quickstart.yaml").read_text()
    assert text.splitlines()[0] == "# editkit run quickstart.yaml"
    assert "editkit edit recipes/data/quickstart/shapes.png" in text
    assert (tmp_path / "recipes/data/quickstart/shapes.png").read_bytes() == SAMPLE.read_bytes()
    assert cli("recipes", "validate", "quickstart.yaml").returncode == 0


def test_copy_into_a_folder_names_the_copy_in_its_run_command(cli, tmp_path):
    (tmp_path / "configs").mkdir()
    copied = cli("recipes", "copy", "streetview", "configs")
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.split() == ["configs/streetview.yaml"]  # the pack ships by name
    text = (tmp_path / "configs/streetview.yaml").read_text()
    assert text.startswith("# editkit run configs/streetview.yaml")
    assert "-m editkit run configs/streetview.yaml" in text


def test_copy_refuses_to_overwrite_without_force_and_writes_nothing(cli, tmp_path):
    (tmp_path / "quickstart.yaml").write_text("mine\n")
    sample = tmp_path / "recipes/data/quickstart/shapes.png"
    sample.parent.mkdir(parents=True)
    sample.write_bytes(b"my own picture")
    refused = cli("recipes", "copy", "quickstart")
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("Error: quickstart.yaml, recipes/data/quickstart/shapes.png "
                                      "already exist; pass --force to overwrite, or give "
                                      "another DEST")
    assert (tmp_path / "quickstart.yaml").read_text() == "mine\n"
    assert sample.read_bytes() == b"my own picture"

    forced = cli("recipes", "copy", "quickstart", "--force")
    assert forced.returncode == 0, forced.stderr
    assert sample.read_bytes() == SAMPLE.read_bytes()
    assert (tmp_path / "quickstart.yaml").read_text().startswith("# editkit run quickstart.yaml")


def test_copy_of_an_unknown_name_lists_the_built_ins(cli, tmp_path):
    result = cli("recipes", "copy", "kitchens")
    assert result.returncode == 1
    assert result.stderr.strip() == ("Error: no built-in recipe 'kitchens'; built-in recipes: "
                                     + ", ".join(sorted(p.stem for p in RECIPES)))
    assert list(tmp_path.iterdir()) == []


def test_a_built_in_recipe_validates_and_dry_runs_by_name_from_any_folder(cli, tmp_path):
    checked = cli("recipes", "validate", "quickstart", "captions.count=5")
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.strip() == "quickstart: ok (captions, render, filters, train, evaluate)"
    assert "count: 5" in checked.stdout
    dry = cli("run", "quickstart", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "name: quickstart" in dry.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_missing_recipe_file_named_like_a_built_in_says_how_to_get_it(cli):
    result = cli("recipes", "validate", "quickstart.yaml")
    assert result.returncode == 2
    assert "'quickstart' is a built-in recipe: run it by name (editkit run quickstart) or copy " \
           "it here to edit (editkit recipes copy quickstart)" in result.stderr
    unknown = cli("run", "kitchens")
    assert unknown.returncode == 2
    assert "no such file or built-in recipe; built-in recipes: distill-klein, dreambooth" in unknown.stderr


def write(folder: Path, captions_options: dict, render: dict | None = None) -> Path:
    data = {"name": "t", "output": "runs/t",
            "captions": {"use": "ollama", "count": 10,
                         "options": {"model": "llama3.2", **captions_options}}}
    if render:
        data["render"] = render
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_validation_refuses_a_missing_domain_pack_and_accepts_a_folder(cli, tmp_path):
    write(tmp_path, {"domain_pack": "kitchens"})
    refused = cli("recipes", "validate", "recipe.yaml")
    assert refused.returncode == 2
    assert ("captions.options.domain_pack: no built-in domain pack or folder with pack.yaml by "
            "that name (built-in packs: interior, streetview), got 'kitchens'") in refused.stderr
    assert "Traceback" not in refused.stderr

    pack = tmp_path / "kitchens"
    pack.mkdir()
    (pack / "pack.yaml").write_text("domain: kitchens\n")
    (pack / "system.md").write_text("You write triplets about {domain}.\n")
    (pack / "examples.yaml").write_text("- {input: a sink, edit: add a cup, output: a sink "
                                        "with a cup}\n")
    write(tmp_path, {"domain_pack": "kitchens"})
    assert cli("recipes", "validate", "recipe.yaml").returncode == 0

    (pack / "examples.yaml").write_text("- just words\n")
    broken = cli("recipes", "validate", "recipe.yaml")
    assert broken.returncode == 2
    assert "domain pack 'kitchens': example 0 is not an {input, edit, output} mapping" \
        in broken.stderr


def test_validation_refuses_a_sample_input_that_was_not_copied_here(cli, tmp_path):
    render = {"use": "masked-blend", "options": {
        "model": "shapes-sd", "mask": "image",
        "mask_image": "recipes/data/quickstart/shapes.png"}}
    write(tmp_path, {"domain_pack": "streetview"}, render)
    refused = cli("recipes", "validate", "recipe.yaml")
    assert refused.returncode == 2
    assert ("render.options.mask_image: file not found: recipes/data/quickstart/shapes.png; "
            "'editkit recipes copy quickstart' copies it here with its recipe") in refused.stderr

    assert cli("recipes", "copy", "quickstart").returncode == 0
    assert cli("recipes", "validate", "recipe.yaml").returncode == 0
