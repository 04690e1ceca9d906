"""`editkit run`: check the run folder against the recipe, then run each stage in order."""

from __future__ import annotations

import copy
import platform
import shutil
import threading
import time
from contextlib import nullcontext
from typing import Any

import yaml

from editkit import __version__
from editkit.console import progress_bars
from editkit.errors import RunError
from editkit.run.distributed import current
from editkit.run.folder import RunFolder, atomic_write_text, fingerprint
from editkit.run.recipe import Recipe
from editkit.run.stages import DRIVERS, StageContext, render_summary, stage_config, timed

# Stages every process runs its share of; the others run on the main process alone.
EVERY_PROCESS = ("render", "train")
# Stages whose outputs live outside their own folder.
_EXTRA_OUTPUTS = {"filters": ["dataset"], "render": ["dataset"]}


def changed_stages(recipe: Recipe, run: RunFolder) -> tuple[list[str], list[str]]:
    """The stages whose records the recipe invalidates (the first changed one and every
    later stage), and a line per changed setting."""
    stages = recipe.stages()
    for i, stage in enumerate(stages):
        state = run.stage_state(stage)
        if state is None or not run.has_work(stage):
            continue
        new = stage_config(recipe, stage)
        old = with_added_defaults(state["config"], recipe, stage)
        if fingerprint(old) != fingerprint(new):
            return stages[i:], diff(old, new)
    return [], []


def _options_at(config: dict[str, Any], where: str) -> Any:
    """The options dict of plugin slot `where` (captions, filters.0, evaluate.judge) inside a
    stage config, or None."""
    if where.startswith("filters."):
        items = config.get("filters")
        index = int(where.split(".")[1])
        spec = items[index] if isinstance(items, list) and index < len(items) else None
    elif where == "evaluate.judge":
        spec = (config.get("evaluate") or {}).get("judge")
    else:
        spec = config.get(where)
    options = spec.get("options") if isinstance(spec, dict) else None
    return options if isinstance(options, dict) else None


def with_added_defaults(old: dict[str, Any], recipe: Recipe, stage: str) -> dict[str, Any]:
    """A recorded stage config with the options its plugins gained since, where the recipe
    leaves them at their defaults: a plugin upgrade that adds an option (whose default keeps
    the old behaviour) must not invalidate runs made before it."""
    filled = copy.deepcopy(old)
    for where, plugin in recipe.plugins.items():
        if where.split(".")[0] != stage:
            continue
        recorded = _options_at(filled, where)
        if recorded is None:
            continue
        fields = type(plugin.options).model_fields
        current = plugin.options_dict()
        for name, value in current.items():
            if name in recorded or fields[name].is_required():
                continue
            field_default = fields[name].get_default(call_default_factory=True)
            as_default = plugin.options.model_copy(update={name: field_default})
            if value == as_default.model_dump(mode="json")[name]:
                recorded[name] = value
    return filled


def diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            lines += diff(old.get(key, "<unset>"), new.get(key, "<unset>"), path)
        return lines
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        # filters are a list: name the item that changed (filters.0.options.min_image)
        return [line for i, (a, b) in enumerate(zip(old, new))
                for line in diff(a, b, f"{prefix}.{i}" if prefix else str(i))]
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def discard(run: RunFolder, stages: list[str]) -> None:
    for stage in stages:
        run.remove_stage(stage)
        for extra in _EXTRA_OUTPUTS.get(stage, []):
            shutil.rmtree(run.path / extra, ignore_errors=True)


def run_recipe(recipe: Recipe, *, fresh: bool = False, only: str | None = None,
               progress: bool | None = None) -> dict[str, Any]:
    stages = recipe.stages()
    if only is not None and only not in stages:
        raise RunError(f"--only {only}: the recipe has no such stage",
                       f"choose one of: {', '.join(stages)}")
    dist = current()
    run = RunFolder(recipe.output)
    with run.locked() if dist.is_main else nullcontext():
        if dist.is_main:
            _prepare(recipe, run, fresh)
        dist.barrier()
        summaries: dict[str, Any] = {}
        with progress_bars(progress if dist.is_main else False) as bars:
            ctx = StageContext(recipe=recipe, run=run, progress=bars, dist=dist)
            for stage in stages:
                if only is not None and stage != only:
                    continue
                everyone = stage in EVERY_PROCESS
                config = stage_config(recipe, stage)
                if dist.is_main:
                    state = run.stage_state(stage)
                    if state is None or state["config"] != config:
                        # a stage kept across a plugin upgrade keeps its recorded time
                        run.write_stage_state(stage, {"config": config, "complete": False,
                                                      "seconds": (state or {}).get("seconds",
                                                                                   0.0)})
                dist.barrier()
                summary: dict[str, Any] = {}
                clock = StageClock(run, stage, config) if dist.is_main else nullcontext()
                with clock:
                    if everyone or dist.is_main:
                        summary = timed(DRIVERS[stage], ctx)
                    dist.barrier()
                if dist.is_main:
                    if stage == "render" and dist.world > 1:
                        summary.update(render_summary(run))  # every process's records
                    summary["seconds"] = clock.total()
                    run.write_stage_state(stage, {"config": config, "complete": True,
                                                  "seconds": summary["seconds"]})
                    run.update_manifest(stages={stage: summary},
                                        processes=dist.world)
                summaries[stage] = summary
        if dist.is_main and ctx.report_due:
            # the tables with the pictures, as `editkit report RUN` writes them, once every
            # stage's summary is in the manifest
            from editkit.report import write_report

            write_report(run.path)
        return summaries


class StageClock:
    """A stage's working time over every run that worked on it: the time recorded in its
    `stage.json` plus this run's, written back every `every` seconds while the stage runs,
    so a stage resumed after a kill reports the time it really took (not the seconds of the
    run that finished it)."""

    def __init__(self, run: RunFolder, stage: str, config: dict[str, Any], every: float = 10.0):
        state = run.stage_state(stage) or {}
        self.before = float(state.get("seconds") or 0.0)
        self._run, self._stage, self._config, self._every = run, stage, config, every
        self._start = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def total(self) -> float:
        return round(self.before + time.perf_counter() - self._start, 3)

    def _flush(self) -> None:
        while not self._stop.wait(self._every):
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self._run.write_stage_state(self._stage, {
                        "config": self._config, "complete": False, "seconds": self.total()})
                except OSError:
                    return

    def __enter__(self) -> "StageClock":
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._flush, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _prepare(recipe: Recipe, run: RunFolder, fresh: bool) -> None:
    """Check the folder against the recipe, discard what --fresh asks, save the recipe."""
    stages = recipe.stages()
    invalid, changes = changed_stages(recipe, run)
    if invalid and not fresh:
        shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more"
                                          if len(changes) > 5 else "")
        kept = [s for s in stages if s not in invalid]
        keep_text = f" (keeps {', '.join(kept)})" if kept else ""
        raise RunError(
            f"the recipe changed stage '{invalid[0]}' since {run.path} was made: {shown}",
            f"add --fresh to redo {', '.join(invalid)}{keep_text}, "
            f"or set output= to a new folder",
        )
    if fresh:
        discard(run, invalid or stages)
    atomic_write_text(run.path / "recipe.yaml",
                      yaml.safe_dump(recipe.resolved(), sort_keys=False))
    run.update_manifest(
        editkit=__version__, python=platform.python_version(), recipe=recipe.model.name,
        seed=recipe.model.seed,
        plugins={s: {"use": p.info.name, "package": p.info.package,
                     "distribution": p.info.distribution, "version": p.info.version}
                 for s, p in recipe.plugins.items()},
        packages=_package_versions(),
    )


def _package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes",
                 "openai", "ollama", "pydantic"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
