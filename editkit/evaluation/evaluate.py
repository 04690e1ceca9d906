"""Measure edit models the way the papers do: CLIP_im, CLIP_dir, CLIP_out, DINO and L1.

Every model edits the same rows with the same seed and settings, and the numbers are computed
by the same code the filters use (`editkit.models.encoders`), so a table compares like with like:

- CLIP_im   cos(E(input), E(edited))                               the image was kept
- CLIP_dir  cos(E(edited) - E(input), T(output cap.) - T(input cap.)) it moved the right way
- CLIP_out  cos(E(edited), T(output caption))                      it shows what was asked
- DINO      cos(D(input), D(edited)), DINOv2 CLS features          the structure was kept
- L1        mean |edited - input| in [0, 1] RGB; L1_target against the dataset's edited image

The result records the exact settings (model ids and revisions, preprocessing, resolution,
steps, guidance, image guidance, seed) so two runs are comparable. torch is imported inside.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from editkit.errors import InputError, RunError
from editkit.evaluation.edits import edit_all, labels, lanczos, slug
from editkit.evaluation.settings import EvalSettings
from editkit.run.folder import (
    atomic_save_image,
    atomic_write_json,
    atomic_write_text,
    fingerprint,
    read_dataset,
)

METRICS = ("CLIP_im", "CLIP_dir", "CLIP_out", "DINO", "L1", "L1_target")
SPLITS = ("test", "train", "all")


# --- the rows ----------------------------------------------------------------------------


_FIX = ("pass a run folder that has been through filters, or a folder with metadata.jsonl "
        "(columns input_image, edit_prompt)")


def load_rows(path: str | Path, split: str = "test",
              limit: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows to measure (by id) and a description of where they came from. A dataset
    without a `split` column is used whole: it has no held-out part to choose."""
    data = read_dataset(path, required=("input_image", "edit_prompt"), fix=_FIX)
    if data.problems:
        raise InputError(f"{data.folder}: {data.problems[0]}",
                         "fix or remove that line: a row needs input_image and edit_prompt, "
                         "the columns diffusers' InstructPix2Pix training reads")
    rows = data.rows
    if split != "all" and data.has_split:
        rows = data.split(split)
    rows.sort(key=lambda r: str(r["id"]))
    total = len(rows)
    if limit is not None:
        rows = rows[:limit]
    source = {"dataset": str(data.folder.resolve()), "metadata_sha256": data.fingerprint,
              "split": split if data.has_split else "all (no split column)",
              "rows": len(rows), "rows_in_split": total}
    return rows, source


# --- measuring ----------------------------------------------------------------------------


def evaluate_models(models: list[str], rows: list[dict[str, Any]], out_dir: str | Path,
                    settings: EvalSettings, source: dict[str, Any] | None = None,
                    progress: Any = None) -> dict[str, Any]:
    """Edit every row with every model, save the edits under `out_dir/images/`, and return
    the per-model means, per-row numbers and the settings that produced them."""
    from editkit.models.encoders import ClipEncoder, DinoEncoder, cosine, l1_distance, read_image

    if not models:
        raise InputError("no edit model to evaluate", "pass --model (repeatable)")
    out_dir = Path(out_dir)
    seed = settings.seed if settings.seed is not None else 0
    size = (settings.resolution, settings.resolution)
    inputs, targets, kept, skipped, resized = [], [], [], [], 0
    for row in rows:
        try:
            image, _ = read_image(row["input_image"])
            target = (read_image(row["edited_image"])[0]
                      if row.get("edited_image") else None)
        except InputError as exc:
            skipped.append({"id": row["id"], "reason": exc.message})
            continue
        if image.size != size:
            resized += 1
            image = image.resize(size, lanczos())
        inputs.append(image)
        targets.append(target)
        kept.append(row)
    if not kept:
        raise InputError("no readable rows to evaluate",
                         "; ".join(s["reason"] for s in skipped[:3]) or "the split is empty")
    clip = ClipEncoder(settings.clip_model, device=settings.device)
    dino = DinoEncoder(settings.dino_model, device=settings.device)
    clip_in = clip.encode_images(inputs)
    dino_in = dino.encode_images(inputs)
    captions = [t for r in kept for t in (r.get("input"), r.get("output")) if t]
    texts = clip.embed_texts(captions)
    results = []
    row_labels = labels(models)
    bar = progress.add("evaluate", total=len(kept) * len(models)) if progress else None
    for ref, label in zip(models, row_labels):
        edited, described = edit_all(ref, kept, inputs, settings, seed, bar)
        folder = out_dir / "images" / slug(label)
        for row, image in zip(kept, edited):
            atomic_save_image(image, folder / f"{slug(str(row['id']))}.png")
        clip_out = clip.encode_images(edited)
        dino_out = dino.encode_images(edited)
        per_row = []
        for i, row in enumerate(kept):
            numbers: dict[str, Any] = {
                "CLIP_im": cosine(clip_in[i], clip_out[i]),
                "DINO": cosine(dino_in[i], dino_out[i]),
                "L1": l1_distance(inputs[i], edited[i]),
                "L1_target": l1_distance(edited[i], targets[i]) if targets[i] else None,
                "CLIP_out": None, "CLIP_dir": None,
            }
            if row.get("output"):
                t_out = texts[row["output"]]
                numbers["CLIP_out"] = cosine(clip_out[i], t_out)
                if row.get("input"):
                    numbers["CLIP_dir"] = _direction(clip_in[i], clip_out[i],
                                                     texts[row["input"]], t_out)
            per_row.append({"id": row["id"], "edit_prompt": row["edit_prompt"],
                            "image": str((folder / f"{slug(str(row['id']))}.png")
                                         .relative_to(out_dir)), **numbers})
        results.append({"label": label, "model": described,
                        "metrics": _means(per_row), "rows": per_row})
    return {
        "metrics": list(METRICS),
        "settings": {**settings.model_dump(mode="json"), "seed": seed,
                     **_guidance_used([r["model"]["edited_with"] for r in results]),
                     "preprocessing": f"RGB, resized to {size[0]}x{size[1]} (Lanczos) when "
                                      f"not that size ({resized} of {len(kept)} were); "
                                      f"CLIP and DINOv2 use their own processors",
                     "clip": clip.describe(), "dino": dino.describe(),
                     "texts_truncated": clip.stats.texts_truncated,
                     **({"source": source} if source else {})},
        "models": results,
        "skipped": skipped,
    }


def _guidance_used(used: list[dict[str, Any]]) -> dict[str, Any]:
    """The settings' guidance as used: the value every model ran with, or None where they
    differ (each model's own is in its `edited_with`)."""
    out: dict[str, Any] = {}
    for key, name in (("text", "guidance"), ("image", "image_guidance")):
        values = {u[key] for u in used}
        out[name] = values.pop() if len(values) == 1 else None
    return out


def _guidance_note(result: dict[str, Any]) -> str:
    """How the table's models were guided, for its footer."""
    s = result["settings"]
    if s.get("guidance") is not None and s.get("image_guidance") is not None:
        return f"guidance {s['guidance']}, image guidance {s['image_guidance']}"
    each = []
    for model in result["models"]:
        used = model["model"].get("edited_with") or {}
        each.append(f"{model['label']} {used.get('text')}/{used.get('image')}")
    return "guidance / image guidance " + ", ".join(each)


def _direction(before: Any, after: Any, text_before: Any, text_after: Any) -> float:
    from editkit.models.encoders import clip_pair_scores

    return clip_pair_scores(before, after, text_before, text_after)["clip_direction"]


def _means(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": len(rows)}
    for name in METRICS:
        values = [r[name] for r in rows if r[name] is not None]
        out[name] = sum(values) / len(values) if values else None
    return out


# --- writing --------------------------------------------------------------------------------


def markdown_table(result: dict[str, Any]) -> str:
    """One row per model, one column per metric (arrows say which way is better)."""
    arrows = {"CLIP_im": "↑", "CLIP_dir": "↑", "CLIP_out": "↑", "DINO": "↑", "L1": "↓",
              "L1_target": "↓"}
    head = ["model", "rows"] + [f"{m} {arrows[m]}" for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in result["models"]:
        m = model["metrics"]
        cells = [model["label"], str(m["rows"])] + [
            "–" if m[name] is None else f"{m[name]:.4f}" for name in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    s = result["settings"]
    lines += ["", f"steps {s['steps']}, {_guidance_note(result)}, resolution "
                  f"{s['resolution']}, seed {s['seed']}; CLIP {s['clip']['ref']}, "
                  f"DINO {s['dino']['ref']}."]
    if result.get("skipped"):
        lines.append(f"{len(result['skipped'])} rows skipped (unreadable images).")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, result: dict[str, Any]) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "metrics.json", result)
    atomic_write_text(out_dir / "metrics.md", markdown_table(result))
    return out_dir / "metrics.json", out_dir / "metrics.md"


# --- the recipe's evaluate stage ------------------------------------------------------------


def evaluate_run(run: Any, recipe: Any, progress: Any = None) -> tuple[dict[str, Any], bool]:
    """Base edit model against the trained one (`train/final/`) on the held-out rows; done
    again only when the settings, the dataset or the trained weights changed. Returns the
    stage's summary and whether anything was measured or judged anew."""
    spec = recipe.model.evaluate
    rows, source = load_rows(run.path, "test", spec.limit)
    if not rows:
        raise RunError("evaluate: the dataset has no held-out (split: test) rows",
                       f"raise evaluate.split (now {spec.split}) or make more triplets")
    from editkit.models.editors import DEFAULT_EDIT_MODEL, is_text_to_image

    base = spec.base or _train_base(recipe) or DEFAULT_EDIT_MODEL
    models, note = [base], None
    if is_text_to_image(base):  # trained from plain SD: its start point ignores the image
        models = []
        note = f"base {base} is a text-to-image model, not an editor: it was not measured"
    final = run.path / "train" / "final"
    if (final / "editkit_weights.json").is_file():
        models.append(str(run.path))
    elif recipe.model.train is not None:
        note = "train/final/editkit_weights.json not found: only the base model was measured"
    models += list(spec.models)
    if not models:
        raise RunError(f"evaluate: nothing to measure ({note})",
                       "train the model first, or list edit models in evaluate.models")
    settings = EvalSettings(**{k: getattr(spec, k) for k in EvalSettings.model_fields})
    if settings.seed is None:
        settings.seed = recipe.model.seed
    key = fingerprint({"settings": settings.model_dump(mode="json"), "models": models,
                       "source": source, "weights": _weights_state(final)})
    judged = None
    if spec.judge is not None:  # first: a judge that does not fit the run fails at once
        from editkit.evaluation.judging import judge_run

        judged = judge_run(run, recipe, models, labels(models), settings,
                           {"source": source, "weights": _weights_state(final)}, progress)
    out_dir = run.stage_dir("evaluate")
    existing = out_dir / "metrics.json"
    previous = json.loads(existing.read_text()) if existing.is_file() else {}
    fresh = previous.get("key") != key
    if fresh:
        result = evaluate_models(models, rows, out_dir, settings, source, progress)
        result["key"] = key
        if note:
            result["note"] = note
        write_results(out_dir, result)
    summary = _stage_summary(result if fresh else previous)
    if judged is not None:
        summary["judge"] = judged
    return summary, fresh or judged is not None


def _train_base(recipe: Any) -> str | None:
    plugin = recipe.plugins.get("train")
    base = getattr(plugin.options, "base", None) if plugin is not None else None
    return base if isinstance(base, str) else None


def _weights_state(final: Path) -> list[tuple[str, int, int]]:
    if not final.is_dir():
        return []
    return sorted((str(p.relative_to(final)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in final.rglob("*") if p.is_file())


def _stage_summary(result: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"rows": result["models"][0]["metrics"]["rows"],
                               "models": {m["label"]: {k: v for k, v in m["metrics"].items()
                                                       if k != "rows"}
                                          for m in result["models"]}}
    if result.get("note"):
        summary["note"] = result["note"]
    return summary
