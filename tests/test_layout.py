"""The package's shape: no import circle, nothing at run time imports the test helpers, and the
wheel's modules are the product only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "editkit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every editkit module `path` imports, at the top or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def test_no_import_circle_in_editkit():
    known = modules()
    graph = {name: imports(path, known) for name, path in known.items()}
    circles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_nothing_at_run_time_imports_the_test_helpers():
    known = modules()
    users = sorted(name for name, path in known.items()
                   if not name.startswith("editkit.testing")
                   and any(t.startswith("editkit.testing") for t in imports(path, known)))
    assert not users


def test_the_package_holds_no_model_training_scripts():
    scripts = sorted(p.name for p in PACKAGE.rglob("*.py")
                     if p.name.startswith(("train_", "ship_", "eval_world")))
    assert not scripts


def test_the_public_surface_resolves_and_the_example_plugin_needs_nothing_else():
    import editkit

    assert all(getattr(editkit, name) is not None for name in editkit.__all__)
    example = ROOT / "plugins" / "editkit-csv" / "editkit_csv" / "__init__.py"
    used = {node.module for node in ast.walk(ast.parse(example.read_text()))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("editkit")}
    assert used == {"editkit"}
