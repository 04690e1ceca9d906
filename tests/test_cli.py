import json
import subprocess
import sys

from editkit import __version__


def test_version(cli):
    result = cli("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_every_listed_command_has_working_help(cli):
    result = cli("--help")
    assert result.returncode == 0
    listed = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines()
              if line.strip()]
    assert {"plugins", "recipes", "run", "edit"} <= set(listed)
    for command in listed:
        sub = cli(command, "--help")
        assert sub.returncode == 0 and "Usage:" in sub.stdout, command


def test_light_commands_never_import_torch(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\noutput: runs/t\ncaptions: {use: template, count: 3}\n")
    code = (
        "import sys\n"
        "from editkit.cli import main\n"
        "for argv in (['--help'], ['plugins'], ['plugins', '--json'],"
        f" ['recipes', 'validate', {str(recipe)!r}]):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, (argv, exc.code)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'openai', 'peft')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_plugins_table_and_json(cli):
    table = cli("plugins")
    assert table.returncode == 0
    assert "template" in table.stdout and "caption generator" in table.stdout
    rows = json.loads(cli("plugins", "--json").stdout)
    template = next(r for r in rows if r["name"] == "template")
    assert template["kind"] == "caption generator"
    assert template["package"] == "editkit.builtins.template"
    assert template["version"] == __version__


def test_unknown_command_is_one_clear_line(cli):
    result = cli("frobnicate")
    assert result.returncode == 2
    assert "No such command" in result.stderr
    assert "Traceback" not in result.stderr
