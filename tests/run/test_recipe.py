import pytest
from recipe_files import write_recipe

from editkit.errors import RecipeError
from editkit.run.recipe import apply_overrides, load_recipe

GOOD = """\
name: t
output: runs/t
seed: 3
captions:
  use: template
  count: 5
  options: {max_objects: 2}
"""


def test_three_mistakes_all_listed_by_path(cli, tmp_path):
    recipe = write_recipe(tmp_path, """\
name: t
output: runs/t
captions: {use: template, count: 5, options: {max_objects: many}}
render: {use: p2pp}
filtrs: []
""")
    result = cli("recipes", "validate", recipe)
    assert result.returncode == 2
    err = result.stderr
    assert "3 problems" in err
    assert "filtrs: unknown key (did you mean 'filters'?)" in err
    assert "render.use: unknown renderer 'p2pp'; installed: editor, masked-blend, photo, prompt-to-prompt" in err
    assert "captions.options.max_objects: Input should be a valid integer" in err
    assert "'many'" in err
    assert "Traceback" not in err


def test_unknown_plugin_suggests_close_name(tmp_path):
    path = write_recipe(tmp_path, GOOD.replace("use: template", "use: templat"))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.problems == [
        ("captions.use", "unknown caption generator 'templat' (did you mean 'template'?); "
                         "installed: ollama, openai, shapes, shapes-photos, template")]


def test_misspelled_option_is_an_error_not_a_default(tmp_path):
    path = write_recipe(tmp_path, GOOD.replace("max_objects", "max_object"))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.problems == [
        ("captions.options.max_object", "unknown key (did you mean 'max_objects'?)")]


def test_overrides_win_and_parse_as_yaml(tmp_path):
    path = write_recipe(tmp_path, GOOD)
    recipe = load_recipe(path, ["seed=9", "captions.options.max_objects=3",
                                "captions.options.subjects=[a, b, c]", "output=elsewhere"])
    assert recipe.model.seed == 9
    assert recipe.plugins["captions"].options.max_objects == 3
    assert recipe.plugins["captions"].options.subjects == ["a", "b", "c"]
    assert str(recipe.output) == "elsewhere"


def test_override_without_equals_is_explained():
    with pytest.raises(RecipeError) as info:
        apply_overrides({}, ["seed"], "r.yaml")
    assert "key.path=value" in info.value.problems[0][1]


def test_override_into_a_list_by_index():
    data = {"filters": [{"use": "a", "options": {}}]}
    apply_overrides(data, ["filters.0.options.k=2"], "r.yaml")
    assert data["filters"][0]["options"]["k"] == 2


def test_invalid_yaml_gives_line(tmp_path):
    path = write_recipe(tmp_path, "name: t\noutput: [unclosed\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert "not valid YAML: line" in info.value.problems[0][1]


def test_secrets_do_not_belong_in_recipes(tmp_path):
    path = write_recipe(tmp_path, GOOD.replace("max_objects: 2", "max_objects: 2, api_key: sk-1"))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    paths = dict(info.value.problems)
    assert "secrets do not belong in recipes" in paths["captions.options.api_key"]


def test_missing_file(cli, tmp_path):
    result = cli("recipes", "validate", tmp_path / "nope.yaml")
    assert result.returncode == 2
    assert "file not found" in result.stderr


def test_validate_prints_resolved_recipe_with_defaults(cli, tmp_path):
    result = cli("recipes", "validate", write_recipe(tmp_path, GOOD))
    assert result.returncode == 0, result.stderr
    assert "max_objects: 2" in result.stdout
    assert "batch: 64" in result.stdout  # a default filled in by the plugin


def test_dry_run_runs_nothing(cli, tmp_path):
    result = cli("run", write_recipe(tmp_path, GOOD), "--dry-run")
    assert result.returncode == 0
    assert "use: template" in result.stdout
    assert not (tmp_path / "runs").exists()
