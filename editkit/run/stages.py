"""Stage drivers: each reads the previous stage's records and appends its own.

Plugins compute; the drivers own the run folder. Every driver resumes from what is on disk
and writes whole batches atomically, so killing a run at any moment and running it again
gives exactly the records an uninterrupted run gives.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from editkit.captions.checks import check_triplet, dedupe_key
from editkit.captions.diversity import triplet_diversity
from editkit.captions.tokens import TokenLimit, tokenizer_ref
from editkit.errors import RunError
from editkit.plugin.kinds import CaptionJob, FilterJob, Reject, RenderJob, TrainJob
from editkit.run.distributed import Dist
from editkit.run.folder import (
    DATASET,
    RunFolder,
    atomic_save_image,
    filter_folder,
    is_dataset,
    write_dataset_folder,
)
from editkit.run.recipe import Recipe

KEPT, REJECTED = "kept", "rejected"


@dataclass
class StageContext:
    recipe: Recipe
    run: RunFolder
    progress: Any  # editkit.console.Progress-like: add(label, total) -> update(n)
    dist: Dist = field(default_factory=Dist)
    report_due: bool = False  # a stage measured something new: the runner rewrites the report


def stage_config(recipe: Recipe, stage: str) -> dict[str, Any]:
    """What a stage's records depend on; a change here invalidates the stage's records.

    `captions.count` is left out: asking for more (or fewer) triplets extends the same stream.
    """
    data = recipe.resolved()
    if stage == "filters":
        # the filters stage writes the dataset, whose `split` column the held-out fraction sets
        split = {"split": data["evaluate"]["split"]} if "evaluate" in data else {}
        return {"filters": data["filters"], **split}
    spec = {k: v for k, v in data[stage].items() if k != "count"}
    return {"seed": data.get("seed", 0), stage: spec}


# --- captions ---------------------------------------------------------------------------


def run_captions(ctx: StageContext) -> dict[str, Any]:
    spec = ctx.recipe.model.captions
    assert spec is not None
    store = ctx.run.store("captions")
    records = store.read()
    kept = [r for r in records if r["status"] == KEPT]
    seen = {dedupe_key(r) for r in kept}
    attempts = len(records)
    stats: dict[str, Any] = dict(ctx.run.manifest().get("stages", {}).get("captions", {})
                                 .get("stats", {}))
    token_ref = tokenizer_ref(ctx.recipe)
    if len(kept) < spec.count:
        limit = TokenLimit(token_ref) if token_ref else None
        generator = ctx.recipe.plugins["captions"].create()
        job = CaptionJob(count=spec.count - len(kept), seed=ctx.recipe.model.seed,
                         start=attempts, seen=set(seen), work_dir=ctx.run.stage_dir("captions"),
                         stats=stats)
        bar = ctx.progress.add("captions", total=spec.count, completed=len(kept))
        barren = 0
        for batch in generator.generate(job):
            out: list[dict[str, Any]] = []
            for item in batch:
                if len(kept) + sum(r["status"] == KEPT for r in out) >= spec.count:
                    break
                record = _caption_record(item, attempts, seen, limit)
                attempts += 1
                out.append(record)
            store.append(out)
            new = sum(r["status"] == KEPT for r in out)
            kept += [r for r in out if r["status"] == KEPT]
            job.kept += new
            bar.update(len(kept))
            barren = 0 if new else barren + len(out)
            if len(kept) >= spec.count:
                break
            if barren > max(1000, 5 * spec.count):
                raise RunError(
                    f"captions: the last {barren} triplets were all rejected "
                    f"({_top_reasons(store.read())})",
                    "widen the generator's vocabulary or prompt, or lower captions.count",
                )
        stats = job.stats
    records = store.read()
    final = [r for r in records if r["status"] == KEPT]
    kept_n = len(final)
    if kept_n < spec.count:
        raise RunError(
            f"captions: the generator stopped after {kept_n} of {spec.count} triplets",
            "it has run out of distinct triplets: add vocabulary or lower captions.count",
        )
    return {"kept": kept_n, "rejected": len(records) - kept_n,
            "rejects": dict(Counter(r["reason"] for r in records if r["status"] == REJECTED)),
            "edit_kinds": dict(Counter(r.get("edit_kind", "other") for r in records
                                       if r["status"] == KEPT)),
            "diversity": triplet_diversity(final),
            "token_check": (f"{token_ref} tokenizer" if token_ref else
                            "off: no render model; set captions.tokenizer"),
            "stats": stats}


def _caption_record(item: Any, index: int, seen: set[str],
                    limit: TokenLimit | None = None) -> dict[str, Any]:
    record_id = f"{index:06d}"
    if isinstance(item, Reject):
        return {**item.data, "id": record_id, "status": REJECTED, "reason": item.reason,
                "detail": item.detail}
    problem = check_triplet(item)
    if problem is None and limit is not None:
        problem = limit.problem(item)
    if problem is not None:
        data = item if isinstance(item, dict) else {"raw": repr(item)}
        return {**data, "id": record_id, "status": REJECTED, "reason": problem.reason,
                "detail": problem.detail}
    key = dedupe_key(item)
    if key in seen:
        return {**item, "id": record_id, "status": REJECTED, "reason": "duplicate",
                "detail": ""}
    seen.add(key)
    return {**item, "id": record_id, "status": KEPT}


def _top_reasons(records: list[dict[str, Any]]) -> str:
    counts = Counter(r.get("reason") for r in records if r["status"] == REJECTED)
    return ", ".join(f"{reason}: {n}" for reason, n in counts.most_common(3))


def kept_records(run: RunFolder, stage: str) -> list[dict[str, Any]]:
    return [r for r in run.store(stage).read() if r["status"] == KEPT]


# --- render -----------------------------------------------------------------------------


def run_render(ctx: StageContext) -> dict[str, Any]:
    """Render every kept triplet not yet rendered; under several processes each renders the
    triplets whose position in the caption order falls to its rank."""
    triplets = kept_records(ctx.run, "captions")
    if ctx.recipe.model.captions is not None:
        triplets = triplets[:ctx.recipe.model.captions.count]
    if not triplets:
        raise RunError("render: there are no kept captions to render",
                       "run the captions stage first (editkit run RECIPE --only captions)")
    store = ctx.run.store("render", ctx.dist.writer)
    done = {r["triplet_id"] for r in store.read()}
    mine = triplets[ctx.dist.rank::ctx.dist.world]
    todo = [t for t in mine if t["id"] not in done]
    bar = ctx.progress.add("render", total=len(mine), completed=len(mine) - len(todo))
    if todo:
        renderer = ctx.recipe.plugins["render"].create()
        chunk = max(1, int(getattr(renderer.options, "triplets_per_batch", 1) or 1))
        image_dir = ctx.run.stage_dir("render") / "images"
        for start in range(0, len(todo), chunk):
            group = todo[start:start + chunk]
            results = list(renderer.render(RenderJob(triplets=group, seed=ctx.recipe.model.seed,
                                                     work_dir=ctx.run.stage_dir("render"))))
            store.append(_pair_records(group, results, image_dir))
            bar.advance(len(group))
    return render_summary(ctx.run)


def render_summary(run: RunFolder) -> dict[str, Any]:
    records = run.store("render").read()
    kept = sum(r["status"] == KEPT for r in records)
    return {"pairs": kept, "rejected": len(records) - kept,
            "rejects": dict(Counter(r["reason"] for r in records if r["status"] == REJECTED))}


def _pair_records(group: list[dict[str, Any]], results: list[Any],
                  image_dir: Path) -> list[dict[str, Any]]:
    by_triplet: dict[str, list[Any]] = defaultdict(list)
    for result in results:
        tid = result.data.get("triplet_id") if isinstance(result, Reject) else result["triplet_id"]
        by_triplet[tid].append(result)
    out: list[dict[str, Any]] = []
    for triplet in group:
        caption = {k: triplet[k] for k in ("input", "edit", "output")}
        extras = {k: triplet[k] for k in ("edit_kind", "words", "region") if k in triplet}
        items = by_triplet.get(triplet["id"]) or [Reject("renderer returned nothing",
                                                         data={"sample": 0})]
        for n, item in enumerate(items):
            if isinstance(item, Reject):
                sample = item.data.get("sample", n)
                out.append({"id": f"{triplet['id']}-{sample}", "triplet_id": triplet["id"],
                            "sample": sample, "status": REJECTED, "reason": item.reason,
                            "detail": item.detail, "settings": item.data.get("settings", {}),
                            **caption, **extras})
                continue
            sample = item.get("sample", n)
            pair_id = f"{triplet['id']}-{sample}"
            record = {"id": pair_id, "triplet_id": triplet["id"], "sample": sample,
                      "settings": item.get("settings", {}), **caption, **extras}
            bad = image_problem(item["before"]) or image_problem(item["after"])
            if bad:
                out.append({**record, "status": REJECTED, "reason": bad, "detail": ""})
                continue
            for role in ("before", "after", "mask"):
                if item.get(role) is not None:
                    name = f"{pair_id}-{role}.png"
                    atomic_save_image(item[role], image_dir / name)
                    record[role] = f"images/{name}"
            out.append({**record, "status": KEPT})
    return out


def image_problem(image: Any) -> str | None:
    """A black (safety-checked) or non-finite image is a rejected record, not a failed run."""
    import numpy as np

    array = np.asarray(image, dtype=np.float32)
    if array.size == 0:
        return "empty image"
    if not np.isfinite(array).all():
        return "non-finite image (NaN)"
    if float(array.max()) <= 1.0:
        return "black image (safety checker or NaN)"
    return None


# --- filters ----------------------------------------------------------------------------


def run_filters(ctx: StageContext) -> dict[str, Any]:
    pairs = kept_records(ctx.run, "render")
    render_dir = ctx.run.stage_dir("render")
    for pair in pairs:
        pair["before_path"] = str(render_dir / pair["before"])
        pair["after_path"] = str(render_dir / pair["after"])
    rejects: Counter[str] = Counter()
    stats: dict[str, Any] = {}
    survivors = pairs
    # embeddings are keyed by image content + model, so they outlive `--fresh` filter re-runs
    cache = ctx.run.path / "cache"
    for index, spec in enumerate(ctx.recipe.model.filters):
        plugin = ctx.recipe.plugins[f"filters.{index}"]
        folder = filter_folder(index, spec.use)
        store = ctx.run.store(folder)
        results = {r["id"]: r for r in store.read()}
        todo = [p for p in survivors if p["id"] not in results]
        bar = ctx.progress.add(f"filter {spec.use}", total=len(survivors),
                               completed=len(survivors) - len(todo))
        if todo:
            flt = plugin.create()
            by_triplet: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for pair in todo:
                by_triplet[pair["triplet_id"]].append(pair)
            groups = list(by_triplet.values())
            chunk = max(1, int(getattr(flt.options, "triplets_per_batch", 16) or 16))
            totals: Counter[str] = Counter()
            for start in range(0, len(groups), chunk):
                batch = [p for g in groups[start:start + chunk] for p in g]
                job = FilterJob(pairs=batch, cache_dir=cache)
                scored = {r["id"]: r for r in flt.score(job)}
                _add_stats(totals, stats.setdefault(f"{index}-{spec.use}", {}), job.stats)
                out = []
                for pair in batch:
                    r = scored.get(pair["id"]) or {"scores": {}, "keep": False,
                                                   "reason": "filter returned no score"}
                    keep = bool(r.get("keep"))
                    reason = None if keep else (r.get("reason") or spec.use)
                    out.append({"id": pair["id"], "status": KEPT if keep else REJECTED,
                                "scores": r.get("scores", {}), "reason": reason,
                                "criterion": None if keep else (r.get("criterion") or reason)})
                store.append(out)
                results.update({o["id"]: o for o in out})
                bar.advance(len(batch))
        for pair in survivors:
            res = results[pair["id"]]
            pair.setdefault("scores", {}).update(res["scores"])
            if res["status"] == REJECTED:
                # counted by criterion (min_image, keep_top, ...), not by the reason's numbers
                rejects[f"{spec.use}: {res.get('criterion') or res['reason']}"] += 1
        survivors = [p for p in survivors if results[p["id"]]["status"] == KEPT]
    write_dataset(ctx.run, survivors, held_out_fraction(ctx.recipe), ctx.recipe)
    return {"scored": len(pairs), "kept": len(survivors), "rejects": dict(rejects),
            "stats": stats}


def _add_stats(totals: Counter[str], out: dict[str, Any], new: dict[str, Any]) -> None:
    """Sum a filter's per-batch counters (cache hits, model calls); keep the rest as given."""
    for key, value in new.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            totals[key] += value
            out[key] = totals[key]
        else:
            out[key] = value


def held_out_fraction(recipe: Recipe) -> float:
    return recipe.model.evaluate.split if recipe.model.evaluate is not None else 0.0


def split_of(triplet_id: str, fraction: float) -> str:
    """"test" for a fixed pseudo-random `fraction` of triplet ids, else "train": a hash of the
    id alone decides, so every sample of a triplet, and every re-run, falls the same way."""
    import hashlib

    bucket = int(hashlib.sha256(f"split:{triplet_id}".encode()).hexdigest()[:8], 16) / 2**32
    return "test" if bucket < fraction else "train"


def write_dataset(run: RunFolder, pairs: list[dict[str, Any]], fraction: float = 0.0,
                  recipe: Recipe | None = None) -> Path:
    """The kept pairs as the run's dataset (`editkit.run.folder` owns its layout): the columns
    diffusers' InstructPix2Pix training reads (input_image, edit_prompt, edited_image) plus
    captions, seeds, scores and `split`, "test" for the held-out `fraction` of triplets, which
    trainers skip. It loads with `datasets.load_dataset(RUN/dataset)` as train and test."""
    render_dir = run.stage_dir("render")
    rows = []
    for pair in sorted(pairs, key=lambda p: p["id"]):
        rows.append({"id": pair["id"], "edit_prompt": pair["edit"], "input": pair["input"],
                     "output": pair["output"], "seed": pair.get("settings", {}).get("seed"),
                     "scores": pair.get("scores", {}),
                     "split": split_of(pair.get("triplet_id", pair["id"]), fraction),
                     "input_image": render_dir / pair["before"],
                     "edited_image": render_dir / pair["after"]})
    title, about = "", ""
    if recipe is not None:
        model = recipe.model
        title = f"{model.name}: edit pairs"
        made = [f"captions by `{model.captions.use}`" if model.captions else "",
                f"pairs rendered by `{model.render.use}`" if model.render else "",
                "kept by " + ", ".join(f"`{f.use}`" for f in model.filters)
                if model.filters else ""]
        about = " ".join(filter(None, [model.description, (
            f"Made by editkit from the recipe `{model.name}`: "
            + "; ".join(m for m in made if m) + ".")]))
    return write_dataset_folder(run.path / DATASET, rows, title, about)


# --- train ------------------------------------------------------------------------------


def run_train(ctx: StageContext) -> dict[str, Any]:
    dataset = ctx.run.path / DATASET
    # a trainer given its own `dataset` (pairs made elsewhere) needs nothing from this run
    own_dataset = ctx.recipe.plugins["train"].options_dict().get("dataset")
    if ctx.recipe.model.render is not None and not own_dataset:
        if ctx.recipe.model.filters == [] and not is_dataset(dataset):
            rendered = kept_records(ctx.run, "render")
            if rendered:  # no filters: every rendered pair trains
                write_dataset(ctx.run, rendered, held_out_fraction(ctx.recipe), ctx.recipe)
        if not is_dataset(dataset):
            raise RunError("train: the run has no dataset yet",
                           "run the render and filters stages first")
    trainer = ctx.recipe.plugins["train"].create()
    job = TrainJob(dataset_dir=dataset, output_dir=ctx.run.stage_dir("train"),
                   seed=ctx.recipe.model.seed, progress=ctx.progress)
    result = trainer.train(job)
    return {"result": result, "stats": job.stats}


# --- evaluate ---------------------------------------------------------------------------


def run_evaluate(ctx: StageContext) -> dict[str, Any]:
    from editkit.evaluation.evaluate import evaluate_run

    assert ctx.recipe.model.evaluate is not None
    summary, changed = evaluate_run(ctx.run, ctx.recipe, ctx.progress)
    ctx.report_due = ctx.report_due or changed
    return summary


DRIVERS: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "captions": run_captions,
    "render": run_render,
    "filters": run_filters,
    "train": run_train,
    "evaluate": run_evaluate,
}


def timed(driver: Callable[[StageContext], dict[str, Any]], ctx: StageContext) -> dict[str, Any]:
    start = time.perf_counter()
    summary = driver(ctx)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary
