"""Domain packs: a system prompt and hand-written example triplets for one domain.

A pack is a folder with `pack.yaml` (`domain`, `system`, `examples`: the last two name files
beside it). Built-in packs are `recipes/data/<name>/`, shipped as package data, so a name
resolves wherever editkit is installed; a recipe may also name any folder. The LLM generators
sample few-shot examples from the pack per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from editkit.errors import InputError
from editkit.run.builtin_recipes import recipes_root

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster when present

GENERIC_SYSTEM = """You write training data for an instruction-following image editor of {domain}.
Each item is a triplet: "input" is a caption of a photograph, "edit" is one short instruction,
and "output" is the caption of the same photograph after exactly that edit and nothing else.
One change per edit; "remove X" needs X in the input; "add X" needs X absent from the input.
Keep each caption under 40 words. "edit_kind" is one of: add, remove, replace, change,
restyle, season, time_of_day, weather. "words" are the words the edit changes; "region" is
foreground, background or global."""


@dataclass
class DomainPack:
    name: str
    domain: str
    system: str
    examples: list[dict[str, Any]] = field(default_factory=list)


def builtin_pack_dirs() -> list[Path]:
    """Where packs are looked up by name: ./recipes/data (a pack of your own, or an edited
    copy, wins), then the packs editkit ships."""
    return [Path.cwd() / "recipes" / "data", recipes_root() / "data"]


def builtin_pack_names() -> list[str]:
    names: set[str] = set()
    for folder in builtin_pack_dirs():
        if folder.is_dir():
            names |= {p.parent.name for p in folder.glob("*/pack.yaml")}
    return sorted(names)


def find_pack(ref: str) -> Path:
    path = Path(ref).expanduser()
    if (path / "pack.yaml").is_file():
        return path
    if "/" not in ref and "\\" not in ref:
        for folder in builtin_pack_dirs():
            if (folder / ref / "pack.yaml").is_file():
                return folder / ref
    names = ", ".join(builtin_pack_names()) or "none found"
    raise InputError(f"domain pack '{ref}' is not a built-in name or a folder with pack.yaml",
                     f"built-in packs: {names}")


def load_pack(ref: str | None) -> DomainPack:
    """The pack named by `ref` (None: a generic prompt with no examples)."""
    if ref is None:
        return DomainPack("generic", "photographs", GENERIC_SYSTEM)
    folder = find_pack(ref)
    try:
        meta = yaml.load((folder / "pack.yaml").read_text(encoding="utf-8"), _LOADER) or {}
        system = (folder / meta.get("system", "system.md")).read_text(encoding="utf-8")
        examples = yaml.load((folder / meta.get("examples", "examples.yaml"))
                             .read_text(encoding="utf-8"), _LOADER) or []
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"domain pack '{ref}' cannot be read: {exc}",
                         "it needs pack.yaml, a system prompt file and an examples file") from None
    bad = [i for i, ex in enumerate(examples)
           if not isinstance(ex, dict) or not all(isinstance(ex.get(k), str)
                                                  for k in ("input", "edit", "output"))]
    if not isinstance(examples, list) or bad:
        raise InputError(f"domain pack '{ref}': example {bad[0] if bad else 0} is not an "
                         "{input, edit, output} mapping", "fix the examples file")
    return DomainPack(folder.name, str(meta.get("domain") or folder.name), system.strip(),
                      examples)


def check_pack(ref: str) -> str:
    """Refuse a missing or unreadable pack at recipe validation, before any request is paid
    for (the LLM generators' `domain_pack` option)."""
    try:
        find_pack(ref)
    except InputError:
        names = ", ".join(builtin_pack_names()) or "none installed"
        raise PydanticCustomError("domain_pack", "no built-in domain pack or folder with "
                                  "pack.yaml by that name (built-in packs: {names})",
                                  {"names": names}) from None
    try:
        load_pack(ref)
    except InputError as exc:
        raise PydanticCustomError("domain_pack", "{reason}", {"reason": str(exc)}) from None
    return ref


PackRef = Annotated[str, AfterValidator(check_pack)]
"""A domain pack option: a built-in pack's name or a folder with pack.yaml, checked."""
