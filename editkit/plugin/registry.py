"""The plugin manager: discovers `editkit` entry points, loads them, and builds the registry.

A plugin that fails to import or to register is reported in one line and skipped, so the CLI
always starts. Two plugins that claim one name for one kind are an error naming both packages.
`EDITKIT_LOAD_PLUGINS` (comma-separated distribution or entry-point names) limits which
third-party plugins load; an empty value loads only the built-ins.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from editkit.errors import PluginError
from editkit.plugin import hookspecs

BUILTIN_DIST = "editkit"
NAME = re.compile(r"^[a-z0-9][a-z0-9.]*(-[a-z0-9.]+)*$")
ENTRY_POINT_GROUP = "editkit"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str
    cls: type
    package: str  # the importable module that registered it (editkit.builtins.template, ...)
    distribution: str  # the pip package it came from
    version: str

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DIST


@dataclass(frozen=True)
class ModelInfo:
    """A named model folder a plugin ships (`register_models`), resolvable like a built-in."""

    name: str
    folder: str
    package: str
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DIST


@dataclass
class Registry:
    plugins: dict[tuple[str, str], PluginInfo] = field(default_factory=dict)
    models: dict[str, ModelInfo] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, name) in self.plugins if k == kind)

    def get(self, kind: str, name: str) -> PluginInfo:
        self.check_conflicts()
        try:
            return self.plugins[(kind, name)]
        except KeyError:
            raise PluginError(unknown_plugin_message(kind, name, self.names(kind))) from None

    def check_conflicts(self) -> None:
        if self.conflicts:
            raise PluginError(
                self.conflicts[0],
                "uninstall one of them, or limit what loads with EDITKIT_LOAD_PLUGINS",
            )


def unknown_plugin_message(kind: str, name: str, installed: list[str]) -> str:
    import difflib

    have = ", ".join(installed) if installed else "none"
    close = difflib.get_close_matches(name, installed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {kind} '{name}'{hint}; installed: {have}"


_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_dists: dict[str, tuple[str, str]] = {}  # plugin (entry point) name -> (distribution, version)
_load_errors: list[str] = []


def _allowed() -> set[str] | None:
    raw = os.environ.get("EDITKIT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def plugin_manager() -> pluggy.PluginManager:
    """Load every installed plugin once (idempotent) and return the pluggy manager."""
    global _pm
    if _pm is not None:
        return _pm
    pm = pluggy.PluginManager("editkit")
    pm.add_hookspecs(hookspecs)
    allowed = _allowed()
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        version = ep.dist.version if ep.dist is not None else "0"
        builtin = _canonical(dist) == BUILTIN_DIST
        if not builtin and allowed is not None and not (
            _canonical(dist) in {_canonical(a) for a in allowed} or ep.name in allowed
        ):
            continue
        label = dist if not builtin else ep.value
        if pm.has_plugin(ep.name) or ep.name in _dists:
            other = _dists.get(ep.name, ("?", "?"))[0]
            _load_errors.append(
                f"Error loading plugin '{label}': entry point '{ep.name}' is also provided by "
                f"'{other}'"
            )
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the CLI down
            _load_errors.append(f"Error loading plugin '{label}': {type(exc).__name__}: {exc}")
            continue
        _dists[ep.name] = (dist, version)
    _pm = pm
    return pm


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def load_errors() -> list[str]:
    plugin_manager()
    return list(_load_errors)


def registry() -> Registry:
    """Every plugin class by (kind, name), built once from the registration hooks."""
    global _registry
    if _registry is not None:
        return _registry
    from editkit.plugin.kinds import HOOK_FOR_KIND, KINDS, NAME_PATTERN

    pm = plugin_manager()
    reg = Registry()
    for kind, hook_name in HOOK_FOR_KIND.items():
        base = KINDS[kind]
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            dist, version = _dists.get(impl.plugin_name, ("unknown", "0"))
            package = getattr(impl.plugin, "__name__", impl.plugin_name)
            label = dist if _canonical(dist) != BUILTIN_DIST else package

            def register(cls: type, _kind=kind, _base=base, _label=label, _pkg=package,
                         _dist=dist, _version=version) -> None:
                problem = _contract_problem(cls, _base, NAME_PATTERN)
                if problem:
                    raise PluginError(f"{_kind} {cls!r}: {problem}")
                key = (_kind, cls.name)
                if key in reg.plugins:
                    first = reg.plugins[key]
                    first_label = first.distribution if not first.builtin else first.package
                    reg.conflicts.append(
                        f"two plugins provide {_kind} '{cls.name}': '{first_label}' and '{_label}'"
                    )
                    return
                reg.plugins[key] = PluginInfo(cls.name, _kind, cls, _pkg, _dist, _version)

            try:
                impl.function(register)
            except Exception as exc:
                reg.errors.append(f"Error loading plugin '{label}': {type(exc).__name__}: {exc}")
    _register_models(pm, reg)
    reg.errors = list(_load_errors) + reg.errors
    _registry = reg
    return reg


def _register_models(pm: pluggy.PluginManager, reg: Registry) -> None:
    """Named model folders from `register_models`; a name taken twice is a conflict."""
    from editkit.models.tiny import BUILDERS  # torch-free: the builders import torch when called

    for impl in pm.hook.register_models.get_hookimpls():
        dist, version = _dists.get(impl.plugin_name, ("unknown", "0"))
        package = getattr(impl.plugin, "__name__", impl.plugin_name)
        label = dist if _canonical(dist) != BUILTIN_DIST else package

        def register(name: str, folder: Any, _label=label, _pkg=package, _dist=dist,
                     _version=version) -> None:
            if not isinstance(name, str) or not NAME.match(name):
                raise PluginError(f"model name must be lowercase and hyphenated, got {name!r}")
            if name in BUILDERS:
                reg.conflicts.append(f"two plugins provide model '{name}': 'editkit.testing' "
                                     f"and '{_label}'")
                return
            if name in reg.models:
                first = reg.models[name]
                first_label = first.distribution if not first.builtin else first.package
                reg.conflicts.append(f"two plugins provide model '{name}': '{first_label}' "
                                     f"and '{_label}'")
                return
            reg.models[name] = ModelInfo(name, str(folder), _pkg, _dist, _version)

        try:
            impl.function(register)
        except Exception as exc:
            reg.errors.append(f"Error loading plugin '{label}': {type(exc).__name__}: {exc}")


def _contract_problem(cls: Any, base: type, pattern: Any) -> str | None:
    from pydantic import BaseModel

    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not pattern.match(name):
        return f"`name` must be lowercase and hyphenated (like 'prompt-to-prompt'), got {name!r}"
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        return "`Options` must be a pydantic model (subclass editkit.plugin.kinds.PluginOptions)"
    if options.model_config.get("extra") != "forbid":
        return "`Options` must forbid extra fields: model_config = ConfigDict(extra='forbid')"
    for method in getattr(base, "methods", (base.method,)):
        if not callable(getattr(cls, method, None)):
            return f"a {base.kind} needs a `{method}` method"
    return None


def register_commands(cli: Any) -> None:
    """Let plugins add CLI commands; a plugin whose hook fails is reported, not fatal."""
    pm = plugin_manager()
    for impl in pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli)
        except Exception as exc:
            _load_errors.append(
                f"Error loading plugin '{impl.plugin_name}': {type(exc).__name__}: {exc}"
            )


def reset() -> None:
    """Forget what was loaded (tests that change the installed plugins between calls)."""
    global _pm, _registry
    _pm = None
    _registry = None
    _dists.clear()
    _load_errors.clear()
