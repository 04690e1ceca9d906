"""The recipes, domain packs and sample inputs that ship inside editkit.

People read them in the repository's top-level `recipes/`. The package reaches that folder as
`editkit/recipes` (a link in a checkout; in a wheel, real files built from the link), so a
checkout and a pip install find them by the same path: `editkit run quickstart` and
`domain_pack: streetview` work wherever editkit is installed.

A recipe's paths are relative to the folder it runs from. A shipped recipe names its sample
inputs `recipes/data/...`: true from a checkout's top, and from any folder `editkit recipes
copy` copied the recipe into, since it copies those files to the same paths there.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from editkit.errors import InputError, RecipeError

_PACKAGE = Path(__file__).resolve().parents[1]  # the editkit package
DATA_PREFIX = "recipes/data/"
# a reference to shipped sample data inside a recipe's text (values and comments)
_DATA_REF = re.compile(r"recipes/data/[\w./-]*[\w/]")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class BuiltinRecipe:
    """A shipped recipe as `editkit recipes list` shows it."""

    name: str
    path: Path
    description: str  # the recipe's `description:`, else its first comment line
    needs: str  # its `# Needs:` header line: keys, downloads, hardware


def recipes_root() -> Path:
    """The folder of built-in recipes; its `data/` holds domain packs and sample inputs."""
    linked = _PACKAGE / "recipes"
    source = _PACKAGE.parent / "recipes"
    # a checkout whose git made no symlink (core.symlinks=false) still has the real folder;
    # outside a checkout the package's own folder is the only answer (site-packages may hold
    # another project's top-level `recipes`)
    if not linked.is_dir() and (_PACKAGE.parent / "pyproject.toml").is_file() and source.is_dir():
        return source
    return linked


def builtin_recipes() -> list[BuiltinRecipe]:
    """Every shipped recipe, by name."""
    root = recipes_root()
    return [_describe(path) for path in sorted(root.glob("*.yaml"), key=lambda p: p.stem)] \
        if root.is_dir() else []


def builtin_names() -> list[str]:
    root = recipes_root()
    return sorted(p.stem for p in root.glob("*.yaml")) if root.is_dir() else []


def find_builtin(name: str) -> Path | None:
    """The shipped recipe called `name`, if there is one."""
    if not _NAME.match(name):
        return None
    path = recipes_root() / f"{name}.yaml"
    return path if path.is_file() else None


def resolve_recipe(ref: str | Path) -> Path:
    """The recipe file `ref` names: a file when one exists, else a built-in recipe's name.

    A file always wins, so a local `quickstart` file is never shadowed by the built-in.
    """
    path = Path(ref)
    text = str(ref)
    if path.exists():
        return path
    if _NAME.match(text):
        found = find_builtin(text)
        if found is not None:
            return found
        raise RecipeError(text, [("", "no such file or built-in recipe; built-in recipes: "
                                  f"{', '.join(builtin_names()) or 'none installed'}")])
    if path.suffix in (".yaml", ".yml") and len(path.parts) == 1 and find_builtin(path.stem):
        raise RecipeError(text, [("", f"file not found; '{path.stem}' is a built-in recipe: "
                                  f"run it by name (editkit run {path.stem}) or copy it here "
                                  f"to edit (editkit recipes copy {path.stem})")])
    return path  # reading it says the file is missing


def missing_data(data: Any, where: str = "") -> list[tuple[str, str]]:
    """A (path, message) problem for each `recipes/data/...` value not found from here.

    Those values name a built-in recipe's sample inputs; they are missing when the recipe
    was copied by hand rather than with `editkit recipes copy`, or run from another folder.
    """
    if isinstance(data, dict):
        items = [(f"{where}.{k}" if where else str(k), v) for k, v in data.items()]
    elif isinstance(data, list):
        items = [(f"{where}.{i}" if where else str(i), v) for i, v in enumerate(data)]
    elif isinstance(data, str) and data.startswith(DATA_PREFIX) and not Path(data).exists():
        owners = [r.name for r in builtin_recipes() if data in r.path.read_text("utf-8")]
        fix = (f"'editkit recipes copy {owners[0]}' copies it here with its recipe" if owners
               else "no built-in recipe ships it; give a file that exists")
        return [(where, f"file not found: {data}; {fix}")]
    else:
        return []
    return [problem for key, value in items for problem in missing_data(value, key)]


def copy_recipe(name: str, dest: str | Path | None = None, force: bool = False) -> list[Path]:
    """Copy built-in recipe `name` to `dest` (default ./NAME.yaml) with the sample data it
    names, so every path in it holds from the current folder. Returns the files written.

    Nothing is overwritten without `force`; every conflict is found before anything is
    written. Data files already here with the same bytes (a checkout) are left alone.
    """
    source = find_builtin(name)
    if source is None:
        raise InputError(f"no built-in recipe '{name}'",
                         f"built-in recipes: {', '.join(builtin_names()) or 'none installed'}")
    target = Path(dest) if dest is not None else Path(f"{name}.yaml")
    if target.is_dir():
        target = target / f"{name}.yaml"
    original = source.read_text(encoding="utf-8")
    # its own run commands (`editkit run recipes/NAME.yaml`) now name the copy
    text = original.replace(f"recipes/{name}.yaml", _shown(target))

    copies: list[tuple[Path, Path]] = []  # (from the package, to here)
    root = recipes_root() / "data"
    for ref in dict.fromkeys(_DATA_REF.findall(original)):
        packaged = root / ref[len(DATA_PREFIX):]
        files = sorted(p for p in packaged.rglob("*") if p.is_file()) if packaged.is_dir() \
            else [packaged] if packaged.is_file() else []
        copies += [(f, Path(DATA_PREFIX) / f.relative_to(root)) for f in files]

    conflicts = [target] if target.exists() and not force else []
    conflicts += [here for there, here in copies
                  if here.exists() and not force and not _same(there, here)]
    if conflicts:
        raise InputError(f"{', '.join(map(_shown, conflicts))} already exist"
                         + ("s" if len(conflicts) == 1 else ""),
                         "pass --force to overwrite, or give another DEST")
    written = []
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    written.append(target)
    for there, here in copies:
        if here.exists() and _same(there, here):
            continue
        here.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(there, here)
        written.append(here)
    return written


def _describe(path: Path) -> BuiltinRecipe:
    text = path.read_text(encoding="utf-8")
    comments = [line.lstrip("#").strip() for line in text.splitlines()
                if line.startswith("#")]
    needs = next((c.split(":", 1)[1].strip() for c in comments
                  if c.lower().startswith("needs:")), "")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    description = data.get("description", "") if isinstance(data, dict) else ""
    if not description:
        description = next((c for c in comments if c and not c.startswith("editkit run")), "")
    return BuiltinRecipe(path.stem, path, str(description), needs)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b) or a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _shown(path: Path) -> str:
    """`path` as a command run from here would spell it."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)
