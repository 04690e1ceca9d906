"""User-facing errors. Only the CLI turns them into exit codes and one-line messages."""

from __future__ import annotations


class EditkitError(Exception):
    """An error the user can fix: `message` says what was wrong, `hint` says how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class RecipeError(EditkitError):
    """A recipe that cannot run. `problems` lists every (path, message) found, not just the first;
    a single problem is said in one line."""

    exit_code = 2

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        if len(problems) == 1:  # one problem is one line
            path, msg = problems[0]
            super().__init__(f"{source}: {path}: {msg}" if path else f"{source}: {msg}")
            return
        lines = [f"{source}: {len(problems)} problems"]
        lines += [f"  {path}: {msg}" if path else f"  {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class PluginError(EditkitError):
    """A plugin that is broken, missing or clashes with another."""


class ModelError(EditkitError):
    """A model reference that cannot be resolved or loaded."""


class NeedsKeyError(EditkitError):
    """A plugin needs a secret (an API key) from the environment."""


class RunError(EditkitError):
    """A run folder that cannot be used as asked (changed recipe, locked, incomplete stage)."""


class InputError(EditkitError):
    """An input file (an image, a dataset) that cannot be read."""
