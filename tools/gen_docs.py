"""Rewrite the generated tables in docs/ from the code itself, so the pages cannot drift.

    python tools/gen_docs.py            # rewrite the tables in README.md and docs/*.md
    python tools/gen_docs.py --check    # only say which pages are out of date (exit 1)

Two kinds of region, each between an opening comment and `<!-- /options -->` or
`<!-- /cli -->`; everything between them is replaced:

- `<!-- options: SOURCE -->`: a table of a pydantic model's fields (option, type, default,
  description), taken from the field descriptions in the code. SOURCE is a built-in
  plugin as `KIND:NAME` (kind hyphenated: `trainer:lora`, `caption-generator:shapes`) or a
  dotted model (`editkit.training.options.TrainOptions`). `SOURCE except DOTTED.MODEL` lists
  only the fields that model does not share (same type, default, constraints and
  description), so options shared by several plugins are tabled once, where they are defined.
- `<!-- cli: COMMAND -->`: a table of the options of `editkit COMMAND` (`edit`,
  `recipes validate`; an empty COMMAND is the group itself), from the click definitions.

Nothing here imports torch: plugin `Options` classes and the click group are torch-free.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
REGION = re.compile(r"<!-- (?P<kind>options|cli):(?P<spec>[^>]*?)-->\n(?P<body>.*?)"
                    r"<!-- /(?P=kind) -->", re.DOTALL)
FIX = "run python tools/gen_docs.py"


@dataclass
class Region:
    """One generated table: where it is, what it tables and which fields it lists."""

    page: Path
    kind: str  # "options" or "cli"
    spec: str
    model: Any = None  # options: the pydantic model tabled
    base: Any = None  # options: the model named after `except`
    fields: list[str] = field(default_factory=list)


def pages(root: Path = ROOT) -> list[Path]:
    """The pages that may hold generated tables: README.md and docs/ (not the plugin example)."""
    docs = sorted(p for p in (root / "docs").rglob("*.md") if "plugins" not in p.parts)
    return [root / "README.md", *docs]


# --- pydantic options --------------------------------------------------------------------


def builtin_plugins() -> dict[str, Any]:
    """`kind:name` -> plugin class, for every plugin the editkit distribution registers."""
    from editkit.plugin.registry import registry

    return {f"{info.kind.replace(' ', '-')}:{info.name}": info.cls
            for info in registry().plugins.values() if info.builtin}


def resolve_model(source: str) -> Any:
    """A plugin spec (`trainer:lora`) or a dotted model path, as a pydantic model class."""
    source = source.strip()
    if ":" in source:
        plugins = builtin_plugins()
        if source not in plugins:
            raise ValueError(f"no built-in plugin '{source}'; have: {', '.join(sorted(plugins))}")
        return plugins[source].Options
    module, _, name = source.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"no model '{source}' (give a dotted path like "
                         "editkit.training.options.TrainOptions)") from None


def parse_options_spec(spec: str) -> tuple[Any, Any]:
    source, _, base = spec.partition(" except ")
    return resolve_model(source), (resolve_model(base) if base.strip() else None)


def _default(info: Any) -> Any:
    from pydantic_core import PydanticUndefined

    if info.default_factory is not None:
        return info.default_factory()
    return None if info.default is PydanticUndefined else info.default


def signature(info: Any) -> tuple[str, str, str, str]:
    """What makes two fields the same option: type, default, constraints, description."""
    return (type_name(info.annotation), "required" if info.is_required() else
            value_text(_default(info)), constraints(info), info.description or "")


def own_fields(model: Any, base: Any = None) -> list[str]:
    """The fields of `model` that `base` does not define identically (all, without base)."""
    shared = base.model_fields if base is not None else {}
    return [name for name, info in model.model_fields.items()
            if name not in shared or signature(shared[name]) != signature(info)]


def type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " / ".join(value_text(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin in (list, tuple, dict):
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def constraints(info: Any) -> str:
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    out = []
    for item in info.metadata:
        for attr, sign in words.items():
            if getattr(item, attr, None) is not None:
                out.append(f"{sign} {value_text(getattr(item, attr))}")
        if getattr(item, "min_length", None):
            out.append(f"at least {item.min_length} item{'s' if item.min_length > 1 else ''}")
        if getattr(item, "pattern", None):
            out.append(f"matches {item.pattern}")
    return ", ".join(out)


def value_text(value: Any) -> str:
    """A value as a recipe would write it (YAML-ish)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def options_table(model: Any, base: Any = None) -> tuple[str, list[str]]:
    names = own_fields(model, base)
    lines = ["| option | type | default | description |", "|---|---|---|---|"]
    for name in names:
        info = model.model_fields[name]
        kind = type_name(info.annotation)
        if constraints(info):
            kind += f", {constraints(info)}"
        default = "required" if info.is_required() else f"`{cell(value_text(_default(info)))}`"
        lines.append(f"| `{name}` | {cell(kind)} | {default} | {cell(info.description or '')} |")
    if not names:
        lines.append("| (none of its own) | | | |")
    return "\n".join(lines) + "\n", names


# --- click commands ----------------------------------------------------------------------


def commands(group: Any = None, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Every command of the `editkit` group, depth first, as ('recipes validate', command)."""
    import click

    if group is None:
        from editkit.cli import cli as group
    yield " ".join(prefix), group
    if isinstance(group, click.Group):
        for name in sorted(group.commands):
            yield from commands(group.commands[name], (*prefix, name))


def find_command(path: str) -> Any:
    for name, command in commands():
        if name == path.strip():
            return command
    known = ", ".join(repr(n) for n, _ in commands())
    raise ValueError(f"no command 'editkit {path.strip()}'; have: {known}")


def cli_table(command: Any) -> tuple[str, list[str]]:
    import click

    lines = ["| option | type | default | description |", "|---|---|---|---|"]
    names = []
    for param in command.params:
        if not isinstance(param, click.Option) or "--help" in param.opts:
            continue
        flags = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        if param.is_flag:
            kind = "flag"
        elif isinstance(param.type, click.Choice):
            kind = " / ".join(str(c) for c in param.type.choices)
        elif isinstance(param.type, click.IntRange):
            low, high = param.type.min, param.type.max
            kind = ("integer " + (f"{low}-{high}" if low is not None and high is not None
                                  else f">= {low}" if low is not None else f"<= {high}"))
        else:
            kind = param.type.name
        if param.multiple:
            kind += ", repeatable"
        default = param.default
        unset = (default is None or default is False or default == () or param.is_flag
                 or default is getattr(click.core, "UNSET", None))  # click >= 8.3's "no default"
        shown = "" if unset else f"`{cell(value_text(default))}`"
        if param.required:
            shown = "required"
        lines.append(f"| {flags} | {cell(kind)} | {shown} | {cell(param.help or '')} |")
        names.extend(param.opts)
    return "\n".join(lines) + "\n", names


# --- pages -------------------------------------------------------------------------------


def regions(text: str, page: Path) -> Iterator[tuple[re.Match[str], Region, str]]:
    """Each region of a page with its freshly generated body."""
    for match in REGION.finditer(text):
        kind, spec = match.group("kind"), match.group("spec").strip()
        region = Region(page, kind, spec)
        try:
            if kind == "options":
                region.model, region.base = parse_options_spec(spec)
                body, region.fields = options_table(region.model, region.base)
            else:
                body, region.fields = cli_table(find_command(spec))
        except ValueError as exc:
            raise ValueError(f"{page.name}: <!-- {kind}: {spec} -->: {exc}") from None
        yield match, region, body


def render(text: str, page: Path = Path("page.md")) -> str:
    """The page with every generated region rewritten."""
    out, last = [], 0
    for match, _, body in regions(text, page):
        out += [text[last:match.start("body")], body]
        last = match.end("body")
    return "".join(out) + text[last:]


def all_regions(root: Path = ROOT) -> list[Region]:
    return [region for page in pages(root)
            for _, region, _ in regions(page.read_text("utf-8"), page)]


def stale(root: Path = ROOT) -> list[Path]:
    """The pages whose generated tables differ from what the code says now."""
    return [page for page in pages(root)
            if render(page.read_text("utf-8"), page) != page.read_text("utf-8")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a page is out of date")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    changed = stale()
    for page in changed:
        if args.check:
            print(f"out of date: {page.relative_to(ROOT)} ({FIX})")
        else:
            page.write_text(render(page.read_text("utf-8"), page), "utf-8")
            print(f"rewrote {page.relative_to(ROOT)}")
    if not changed:
        print("docs tables are up to date")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
