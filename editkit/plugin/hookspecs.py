"""The extension points. Each hook receives a `register` callback (or the CLI group)."""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("editkit")


@hookspec
def register_caption_generators(register: Callable[[type], Any]) -> None:
    """Register caption generator classes: they write {input, edit, output} triplets."""


@hookspec
def register_renderers(register: Callable[[type], Any]) -> None:
    """Register pair renderer classes: they turn a triplet into (before, after) image pairs."""


@hookspec
def register_filters(register: Callable[[type], Any]) -> None:
    """Register filter classes: they score pairs and decide which to keep."""


@hookspec
def register_trainers(register: Callable[[type], Any]) -> None:
    """Register trainer classes: they turn kept pairs into edit-model weights."""


@hookspec
def register_models(register: Callable[[str, Any], Any]) -> None:
    """Register named model folders (`register(name, folder)`) that model references resolve."""


@hookspec
def register_judges(register: Callable[[type], Any]) -> None:
    """Register judge classes: they score pairs and edits against a domain's truth."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands or groups to the `editkit` CLI group."""
