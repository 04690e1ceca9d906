"""The documents keep up with the code: every hook, command and built-in plugin option is
documented, the generated tables match the code, and the README's test command is CI's.

The option and command tables in docs/ are generated (`python tools/gen_docs.py`), so a new
option only needs that command run; what this checks is that nothing was left out of them.
Nothing here imports torch.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = "run python tools/gen_docs.py"

def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_docs", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen_docs = _load_generator()


@pytest.fixture(scope="module")
def regions():
    return gen_docs.all_regions(ROOT)


@pytest.fixture(scope="module")
def docs_text() -> str:
    return "\n".join(page.read_text("utf-8") for page in gen_docs.pages(ROOT))


def test_generated_tables_match_the_code():
    stale = [str(p.relative_to(ROOT)) for p in gen_docs.stale(ROOT)]
    assert not stale, f"option/command tables out of date in {', '.join(stale)}: {FIX}"


def test_every_hook_has_a_section_in_plugins_md():
    from editkit.plugin import hookspecs

    hooks = sorted(name for name, value in vars(hookspecs).items()
                   if callable(value) and hasattr(value, "editkit_spec"))
    assert len(hooks) >= 7
    page = (ROOT / "docs" / "plugins.md").read_text("utf-8")
    headings = set(re.findall(r"^#+\s+`?(\w+)", page, re.MULTILINE))
    missing = [hook for hook in hooks if hook not in headings]
    assert not missing, f"docs/plugins.md has no '### <hook>' section for: {', '.join(missing)}"


def test_every_command_is_documented(regions, docs_text):
    tabled = {r.spec for r in regions if r.kind == "cli"}
    missing, untabled = [], []
    for path, command in gen_docs.commands():
        if path and f"editkit {path}" not in docs_text:
            missing.append(f"editkit {path}")
        has_options = any(getattr(p, "opts", None) and "--help" not in p.opts
                          for p in command.params if p.param_type_name == "option")
        if has_options and path not in tabled:
            untabled.append(f"<!-- cli: {path} --><!-- /cli -->")
    assert not missing, f"commands no page mentions: {', '.join(missing)}"
    assert not untabled, ("commands with options but no option table; add to a page in "
                          f"docs/ and {FIX}: {' '.join(untabled)}")


def _covered(model, field: str, regions) -> bool:
    """Listed in a table of `model`, or shared unchanged with the `except` model of such a
    table and covered there."""
    for region in regions:
        if region.kind != "options" or region.model is not model:
            continue
        if field in region.fields:
            return True
        base = region.base
        if base is not None and field in base.model_fields and _covered(base, field, regions):
            return True
    return False


def test_every_builtin_plugin_option_is_documented(regions):
    plugins = gen_docs.builtin_plugins()
    assert {"trainer:lora", "renderer:prompt-to-prompt", "judge:shapes"} <= set(plugins)
    untabled = [spec for spec, cls in plugins.items()
                if not any(r.kind == "options" and r.model is cls.Options for r in regions)]
    assert not untabled, ("built-in plugins without an options table; add "
                          f"'<!-- options: SPEC --><!-- /options -->' to a page and {FIX}: "
                          f"{', '.join(untabled)}")
    missing = [f"{spec}.{field}" for spec, cls in plugins.items()
               for field in cls.Options.model_fields
               if not _covered(cls.Options, field, regions)]
    assert not missing, f"options in no table: {', '.join(missing)} ({FIX})"


def test_option_fields_have_descriptions(regions):
    bare = sorted(f"{region.spec.split(' except ')[0].strip()}.{name}"
                  for region in regions if region.kind == "options"
                  for name in region.fields
                  if not (region.model.model_fields[name].description or "").strip())
    assert not bare, ("options without a description (give the field "
                      f"Field(..., description=...) and {FIX}): {', '.join(bare)}")


def test_readme_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text("utf-8").strip().splitlines()[-1].strip()
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("## Run the tests", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines()]
    assert any(line.startswith("python3 -m venv .venv") and line.endswith(ci) for line in lines), (
        f"README's 'Run the tests' must show the command .ci/run runs: ... && {ci}")


def test_documents_cite_no_work_sittings(docs_text):
    pages = [ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md"]
    text = docs_text + "\n".join(p.read_text("utf-8") for p in pages)
    found = sorted(set(re.findall(r"(?i)\bsessions? \d[\w -]*", text)))
    assert not found, f"cite a dated docs/history page instead of: {found}"


def test_relative_links_resolve():
    broken = []
    for page in [*gen_docs.pages(ROOT), ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text("utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"links to missing files: {broken}"
