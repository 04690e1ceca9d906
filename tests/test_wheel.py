"""`pip install editkit` from a wheel has everything: recipes, domain packs, sample inputs and
the shapes world's models, found from an empty folder with no source tree in sight.

The wheel is built from a copy of the checkout (never in it: a stale build/ there would leak
into the wheel) and installed with pip into a fresh virtual environment. torch and the other
dependencies come from this environment through a .pth file, read after the fresh
site-packages, so editkit itself comes only from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
SHIPPED_DATA = sorted(p.relative_to(ROOT / "recipes").as_posix()
                      for p in (ROOT / "recipes" / "data").rglob("*") if p.is_file())


def copy_checkout(dest: Path) -> None:
    """The files a release is built from: git's tracked and not-ignored ones, links kept."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:  # not a git checkout
        shutil.copytree(ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "runs"))
        return
    for rel in filter(None, listed.stdout.decode().split("\0")):
        src, dst = ROOT / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.is_file():
            shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    copy_checkout(work / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "--disable-pip-version-check", "--quiet", "-w",
                    str(work / "dist"), str(work / "src")], check=True, capture_output=True)
    (found,) = (work / "dist").glob("editkit-*.whl")
    return found


@pytest.fixture(scope="module")
def fresh(wheel, tmp_path_factory):
    """A new virtual environment with editkit installed from the wheel and nothing else."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--no-deps", "--no-index", "--disable-pip-version-check", "--quiet",
                    str(wheel)], check=True, capture_output=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                "get_paths()['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return venv, site


def in_fresh(fresh, *args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    venv, _ = fresh
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "EDITKIT_LOAD_PLUGINS", "EDITKIT_DEBUG")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               **extra)
    program = venv / "bin" / args[0]
    return subprocess.run([str(program), *args[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_the_wheel_carries_recipes_packs_samples_and_models_and_no_tests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"editkit/recipes/{name}.yaml" for name in RECIPES} <= names
    assert {f"editkit/recipes/{rel}" for rel in SHIPPED_DATA} <= names
    assert {"editkit/recipes/data/streetview/pack.yaml", "editkit/recipes/data/interior/pack.yaml",
            "editkit/recipes/data/quickstart/shapes.png"} <= names
    for model in ("shapes-sd", "shapes-clip", "shapes-dino", "shapes-edit"):
        assert any(n.startswith(f"editkit/builtins/shapes/models/{model}/")
                   and n.endswith(".safetensors")
                   for n in names), model
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    assert not [n for n in names if n.startswith("recipes/")]  # only inside the package


def test_from_an_empty_folder_the_fresh_install_finds_its_recipes_and_domain_packs(
        fresh, tmp_path):
    _, site = fresh
    where = in_fresh(fresh, "python", "-c", "import editkit; print(editkit.__file__)",
                     cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(site)

    listed = in_fresh(fresh, "editkit", "recipes", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    shown = json.loads(listed.stdout)
    assert [r["name"] for r in shown["recipes"]] == RECIPES
    assert all(Path(r["path"]).is_relative_to(site) and r["description"] and r["needs"]
               for r in shown["recipes"])
    packs = {p["name"]: Path(p["path"]) for p in shown["domain_packs"]}
    assert {"streetview", "interior"} <= set(packs)
    assert all(path.is_relative_to(site) for path in packs.values())
    table = in_fresh(fresh, "editkit", "recipes", "list", cwd=tmp_path).stdout
    assert all(name in table for name in RECIPES) and "interior, streetview" in table
    assert list(tmp_path.iterdir()) == []  # listing writes nothing


def test_a_streetview_recipe_written_anywhere_uses_the_packaged_pack(fresh, tmp_path):
    """What failed before the packs shipped: `domain_pack: streetview` outside the checkout."""
    from editkit.testing.llmserver import LLMServer

    recipe = {"name": "t", "output": "runs/t", "captions": {
        "use": "openai", "count": 10,
        "options": {"model": "gpt-4o-mini", "domain_pack": "streetview", "per_request": 10,
                    "concurrency": 1}}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with LLMServer() as server:
        ran = in_fresh(fresh, "editkit", "run", "recipe.yaml",
                       f"captions.options.base_url={server.url}/v1", cwd=tmp_path,
                       OPENAI_API_KEY="sk-test")
        calls = server.chat_requests()
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert calls and "urban street views" in calls[0]["body"]["messages"][0]["content"]
    assert calls[0]["body"]["messages"][1]["content"].count('{"input"') == 6  # pack examples

    recipe["captions"]["options"]["domain_pack"] = "kitchens"
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    refused = in_fresh(fresh, "editkit", "recipes", "validate", "recipe.yaml", cwd=tmp_path)
    assert refused.returncode == 2
    assert ("captions.options.domain_pack: no built-in domain pack or folder with pack.yaml "
            "by that name (built-in packs: interior, streetview)") in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_quickstart_copied_out_of_the_wheel_runs_every_stage_then_edits_its_sample(
        fresh, tmp_path):
    _, site = fresh
    copied = in_fresh(fresh, "editkit", "recipes", "copy", "quickstart", cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.split() == ["quickstart.yaml", "recipes/data/quickstart/shapes.png"]
    assert (tmp_path / "quickstart.yaml").read_text().startswith("# editkit run quickstart.yaml")

    run = in_fresh(fresh, "editkit", "run", "quickstart.yaml", "captions.count=16",
                   "train.options.steps=8", "train.options.validate_every=8",
                   "train.options.checkpoint_every=8", "evaluate.judge.count=8", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "runs" / "quickstart"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"captions", "render", "filters", "train", "evaluate"}
    judged = json.loads((folder / "evaluate" / "judge.json").read_text())
    assert judged["pairs"]["before_filters"]["pairs"] == 32  # 16 triplets x 2 samples
    # the shapes world's models came from the fresh install's package data
    text = (folder / "manifest.json").read_text()
    for model in ("shapes-clip", "shapes-dino"):
        assert str(site / "editkit" / "builtins" / "shapes" / "models" / model) in text

    # the follow-up command the recipe's comments give works from here
    edit = in_fresh(fresh, "editkit", "edit", "recipes/data/quickstart/shapes.png",
                    "make the circle blue", "--model", "runs/quickstart", "--out", "blue.png",
                    cwd=tmp_path)
    assert edit.returncode == 0, edit.stderr[-2000:]
    source = Image.open(tmp_path / "recipes" / "data" / "quickstart" / "shapes.png")
    assert Image.open(tmp_path / "blue.png").size == source.size
