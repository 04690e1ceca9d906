import json

from recipe_files import write_recipe


def test_hook_register_caption_generators(cli):
    rows = json.loads(cli("plugins", "--json", plugins=["csv"]).stdout)
    assert {"name": "csv", "kind": "caption generator"}.items() <= next(
        r for r in rows if r["name"] == "csv").items()


def test_hook_register_renderers(cli):
    rows = json.loads(cli("plugins", "--json", plugins=["testkit"]).stdout)
    assert any(r["name"] == "flat" and r["kind"] == "renderer" for r in rows)


def test_hook_register_filters(cli):
    rows = json.loads(cli("plugins", "--json", plugins=["testkit"]).stdout)
    assert any(r["name"] == "pixel-diff" and r["kind"] == "filter" for r in rows)


def test_hook_register_trainers(cli):
    rows = json.loads(cli("plugins", "--json", plugins=["testkit"]).stdout)
    trainer = next(r for r in rows if r["name"] == "mean-colour")
    assert trainer["kind"] == "trainer"
    assert trainer["distribution"] == "editkit-testkit" and trainer["version"] == "0.3.0"


def test_hook_register_judges(cli):
    rows = json.loads(cli("plugins", "--json", plugins=["testkit"]).stdout)
    assert any(r["name"] == "painted" and r["kind"] == "judge" for r in rows)
    listed = cli("plugins", plugins=["testkit"]).stdout
    assert any(line.split()[:2] == ["painted", "judge"] for line in listed.splitlines())


def test_hook_register_commands(cli):
    assert "testkit-hello" in cli("--help", plugins=["testkit"]).stdout
    result = cli("testkit-hello", "world", plugins=["testkit"])
    assert result.returncode == 0
    assert result.stdout.strip() == "hello world from testkit"


def test_third_party_plugin_in_a_recipe(cli, tmp_path):
    (tmp_path / "triplets.csv").write_text(
        "input,edit,output\n"
        "a photo of a red door,make the door blue,a photo of a blue door\n"
        "a street with a car,remove the car,a street\n"
        "a quiet room,add a lamp,a quiet room with a lamp\n")
    recipe = write_recipe(tmp_path, "name: csv\noutput: runs/csv\n"
                          "captions: {use: csv, count: 3, options: {path: triplets.csv}}\n")
    table = cli("plugins", plugins=["csv"]).stdout
    assert "csv" in table and "editkit-csv" in table
    result = cli("run", recipe, plugins=["csv"])
    assert result.returncode == 0, result.stderr
    shard = next((tmp_path / "runs/csv/captions").glob("shard-*.jsonl"))
    rows = [json.loads(line) for line in shard.read_text().splitlines()]
    assert [r["edit"] for r in rows] == ["make the door blue", "remove the car", "add a lamp"]
    assert all(r["status"] == "kept" for r in rows)


def test_broken_plugin_reported_in_one_line_cli_still_works(cli):
    result = cli("plugins", plugins=["broken", "testkit"])
    assert result.returncode == 0
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == ["Error loading plugin 'editkit-broken': ModuleNotFoundError: "
                      "No module named 'editkit_no_such_dependency'"]
    assert "flat" in result.stdout and "template" in result.stdout


def test_two_plugins_with_one_name_is_an_error_naming_both(cli, tmp_path):
    recipe = write_recipe(tmp_path, "name: t\noutput: runs/t\ncaptions: {use: template}\n")
    result = cli("run", recipe, plugins=["dupe"])
    assert result.returncode == 1
    assert "two plugins provide caption generator 'template'" in result.stderr
    assert "'editkit.builtins.template'" in result.stderr and "'editkit-dupe'" in result.stderr
    assert "Traceback" not in result.stderr


def test_load_plugins_env_limits_third_party(cli):
    only_csv = json.loads(cli("plugins", "--json", plugins=["csv", "testkit"],
                              EDITKIT_LOAD_PLUGINS="editkit-csv").stdout)
    names = {r["name"] for r in only_csv}
    assert "csv" in names and "flat" not in names and "template" in names
    none = json.loads(cli("plugins", "--json", plugins=["csv", "testkit"],
                          EDITKIT_LOAD_PLUGINS="").stdout)
    assert none and all(r["builtin"] for r in none)
    assert {"template", "shapes"} <= {r["name"] for r in none}


def test_plugin_breaking_the_contract_is_reported(tmp_path):
    from pydantic import BaseModel

    import editkit.plugin.registry as plugins
    from editkit.plugin.kinds import CaptionGenerator

    class Loose(CaptionGenerator):
        name = "loose"

        class Options(BaseModel):  # extra fields not forbidden
            x: int = 1

        def generate(self, job):
            yield []

    problem = plugins._contract_problem(Loose, CaptionGenerator, __import__(
        "editkit.plugin.kinds", fromlist=["NAME_PATTERN"]).NAME_PATTERN)
    assert "forbid extra fields" in problem


def test_hook_register_models(cli):
    rows = json.loads(cli("plugins", "--json", plugins=["testkit"]).stdout)
    model = next(r for r in rows if r["name"] == "testkit-missing")
    assert model["kind"] == "model" and model["distribution"] == "editkit-testkit"
    assert model["folder"].endswith("no-such-model")
    shipped = {r["name"]: r for r in rows if r["kind"] == "model" and r["builtin"]}
    assert {"shapes-clip", "shapes-dino", "shapes-sd"} <= set(shipped)
    assert shipped["shapes-clip"]["package"] == "editkit.builtins.shapes"


def test_registered_model_without_its_folder_is_one_clear_line(cli, tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "in.png")
    result = cli("edit", "in.png", "make it blue", "--model", "testkit-missing",
                 plugins=["testkit"])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert ("built-in model 'testkit-missing' (from editkit_testkit): its folder "
            in result.stderr)
    assert "no-such-model does not exist" in result.stderr


def test_a_judge_needs_all_three_methods():
    import editkit.plugin.registry as plugins
    from editkit.plugin.kinds import NAME_PATTERN, Judge, PluginOptions

    class PairsOnly(Judge):
        name = "pairs-only"
        Options = PluginOptions

        def pair(self, record, before, after):
            ...

    PairsOnly.held_out = None
    assert plugins._contract_problem(PairsOnly, Judge, NAME_PATTERN) == \
        "a judge needs a `held_out` method"
