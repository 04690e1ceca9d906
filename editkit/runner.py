"""`editkit run`: check the run folder against the recipe, then run each stage in order."""

from __future__ import annotations

import platform
import shutil
import time
from contextlib import nullcontext
from typing import Any

import yaml

from . import __version__
from .console import progress_bars
from .errors import RunError
from .recipe import Recipe
from .runs import RunFolder, atomic_write_text, fingerprint
from .distributed import Processes, processes
from .stages import DRIVERS, StageContext, render_share, render_summary, stage_config, timed

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
        if fingerprint(state["config"]) != fingerprint(new):
            return stages[i:], diff(state["config"], new)
    return [], []


def diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            lines += diff(old.get(key, "<unset>"), new.get(key, "<unset>"), path)
        return lines
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def discard(run: RunFolder, stages: list[str]) -> None:
    for stage in stages:
        run.remove_stage(stage)
        for extra in _EXTRA_OUTPUTS.get(stage, []):
            shutil.rmtree(run.path / extra, ignore_errors=True)


def run_recipe(recipe: Recipe, *, fresh: bool = False, only: str | None = None,
               progress: bool | None = None) -> dict[str, Any]:
    """Run (or resume) `recipe`. Under `accelerate launch` every process calls this: the
    main one holds the lock and runs the stages, all of them render their shares."""
    stages = recipe.stages()
    if only is not None and only not in stages:
        raise RunError(f"--only {only}: the recipe has no such stage",
                       f"choose one of: {', '.join(stages)}")
    procs = processes()
    run = RunFolder(recipe.output)
    with run.locked() if procs.is_main else nullcontext():
        procs.on_main(lambda: _prepare(recipe, run, stages, fresh))
        summaries: dict[str, Any] = {}
        with progress_bars(progress if procs.is_main else False) as bars:
            ctx = StageContext(recipe=recipe, run=run, progress=bars, rank=procs.rank,
                               world=procs.world)
            for stage in stages:
                if only is not None and stage != only:
                    continue
                if stage == "render" and procs.world > 1:
                    summary = _sharded_render(ctx, procs)
                else:
                    summary = procs.on_main(lambda: _run_stage(ctx, stage))
                summaries[stage] = summary
        return summaries if procs.is_main else {}


def _prepare(recipe: Recipe, run: RunFolder, stages: list[str], fresh: bool) -> None:
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


def _begin_stage(ctx: StageContext, stage: str) -> dict[str, Any]:
    state = ctx.run.stage_state(stage)
    config = stage_config(ctx.recipe, stage)
    if state is None or state["config"] != config:
        ctx.run.write_stage_state(stage, {"config": config, "complete": False})
    return config


def _end_stage(ctx: StageContext, stage: str, config: dict[str, Any], started: float,
               summary: dict[str, Any]) -> dict[str, Any]:
    ctx.run.write_stage_state(stage, {"config": config, "complete": True, "finished": started})
    ctx.run.update_manifest(stages={stage: summary})
    return summary


def _run_stage(ctx: StageContext, stage: str) -> dict[str, Any]:
    config = _begin_stage(ctx, stage)
    started = time.time()
    return _end_stage(ctx, stage, config, started, timed(DRIVERS[stage], ctx))


def _sharded_render(ctx: StageContext, procs: Processes) -> dict[str, Any]:
    """Every process renders its share into its own shards; the main one records the stage."""
    config = procs.on_main(lambda: _begin_stage(ctx, "render"))
    started, clock = time.time(), time.perf_counter()
    procs.everywhere(lambda: render_share(ctx))

    def finish() -> dict[str, Any]:
        summary = {**render_summary(ctx.run), "processes": procs.world,
                   "seconds": round(time.perf_counter() - clock, 3)}
        return _end_stage(ctx, "render", config, started, summary)

    return procs.on_main(finish)


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
