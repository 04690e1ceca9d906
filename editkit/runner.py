"""`editkit run`: check the run folder against the recipe, then run each stage in order."""

from __future__ import annotations

import platform
import shutil
import time
from typing import Any

import yaml

from . import __version__
from .console import progress_bars
from .errors import RunError
from .recipe import Recipe
from .runs import RunFolder, atomic_write_text, fingerprint
from .stages import DRIVERS, StageContext, stage_config, timed

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
    stages = recipe.stages()
    if only is not None and only not in stages:
        raise RunError(f"--only {only}: the recipe has no such stage",
                       f"choose one of: {', '.join(stages)}")
    run = RunFolder(recipe.output)
    rank, world = process_rank()
    if world > 1 and rank != 0:
        return _run_helper_process(recipe, run, only)
    with run.locked():
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
        summaries: dict[str, Any] = {}
        with progress_bars(progress) as bars:
            ctx = StageContext(recipe=recipe, run=run, progress=bars)
            for stage in stages:
                if only is not None and stage != only:
                    continue
                state = run.stage_state(stage)
                config = stage_config(recipe, stage)
                if state is None or state["config"] != config:
                    run.write_stage_state(stage, {"config": config, "complete": False})
                started = time.time()
                summary = timed(DRIVERS[stage], ctx)
                run.write_stage_state(stage, {"config": config, "complete": True,
                                              "finished": started})
                run.update_manifest(stages={stage: summary})
                summaries[stage] = summary
        return summaries


def process_rank() -> tuple[int, int]:
    """(rank, world size) when started by `accelerate launch` or `torchrun`, else (0, 1)."""
    import os

    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _run_helper_process(recipe: Recipe, run: RunFolder, only: str | None) -> dict[str, Any]:
    """A non-main process of a multi-process launch: it joins the train stage (data parallel)
    and writes nothing of the run folder's own (lock, recipe, manifest, stage state): the
    main process owns those. Earlier stages run in the main process alone; the trainer's
    process-group start waits until the main process reaches training."""
    if "train" not in recipe.stages() or only not in (None, "train"):
        return {}
    with progress_bars(False) as bars:
        ctx = StageContext(recipe=recipe, run=run, progress=bars)
        return {"train": timed(DRIVERS["train"], ctx)}


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
