"""`evaluate.judge`: every stage scored against a domain's truth instead of a model's opinion.

A judge plugin (`editkit.plugin.kinds.Judge`) knows what a pair or an edit should show. With it the
evaluate stage measures:

- pair accuracy: the fraction of rendered pairs (every sample in `render/`) the judge calls
  good, before filtering, and after it (the pairs in `dataset/`);
- the filters' precision (kept and good / kept) and recall (kept and good / good), for the
  filters together and for each filter among the pairs it was given;
- editor success: the base and trained edit models edit held-out inputs the judge drew from
  the domain's truth (with the evaluate stage's settings and pipeline loading), and the
  judge says which edits made the instructed change and kept everything else.

Everything is written to `evaluate/judge.json` (numbers), `evaluate/judge.md` (the table),
`evaluate/judge-pairs.jsonl` (a verdict per pair) and `evaluate/judge/` (held-out inputs and
edits); it is redone only when the judge, the settings, the pairs or the weights change.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from editkit.errors import InputError
from editkit.evaluation.settings import EvalSettings
from editkit.plugin.kinds import Judge, Verdict
from editkit.run.folder import (
    DATASET,
    RecordStore,
    atomic_save_image,
    atomic_write_json,
    atomic_write_text,
    filter_folders,
    fingerprint,
    is_dataset,
    read_dataset,
)

TOP_REASONS = 10


def ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# --- pairs and filters ----------------------------------------------------------------------


def judge_pairs(run: Path, judge: Judge, progress: Any = None) -> list[dict[str, Any]]:
    """A verdict for every rendered pair, its triplet's fields (the truth) merged in. A pair
    whose images cannot be read is judged bad with that reason, never a failed run."""
    from PIL import Image

    triplets = {r["id"]: r for r in RecordStore(run / "captions").read()} \
        if (run / "captions").is_dir() else {}
    pairs = [r for r in RecordStore(run / "render").read() if r.get("status") == "kept"]
    bar = progress.add("judge pairs", total=len(pairs)) if progress else None
    out = []
    for pair in pairs:
        record = {**triplets.get(pair.get("triplet_id"), {}), **pair}
        try:
            with Image.open(run / "render" / pair["before"]) as b, \
                    Image.open(run / "render" / pair["after"]) as a:
                verdict = judge.pair(record, b.convert("RGB"), a.convert("RGB"))
        except (OSError, KeyError, ValueError) as exc:
            verdict = Verdict(False, [f"unreadable pair: {type(exc).__name__}: {exc}"],
                              str(record.get("edit_kind", "")))
        out.append({"id": pair["id"], "triplet_id": pair.get("triplet_id"),
                    "kind": verdict.kind or str(record.get("edit_kind", "")),
                    "good": verdict.good, "reasons": verdict.reasons, "detail": verdict.detail})
        if bar is not None:
            bar.advance(1)
    return out


def pair_numbers(verdicts: list[dict[str, Any]], kept: set[str]) -> dict[str, Any]:
    """Pair accuracy before filtering (every judged pair) and after (the `kept` ones), with
    the commonest reasons and the accuracy per edit kind."""
    good = {v["id"] for v in verdicts if v["good"]}
    judged = {v["id"] for v in verdicts}
    after = kept & judged
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for v in verdicts:
        by_kind[v["kind"] or "?"].append(v["good"])
    reasons = Counter(r for v in verdicts for r in v["reasons"])
    return {
        "before_filters": {"pairs": len(judged), "good": len(good),
                           "accuracy": ratio(len(good), len(judged))},
        "after_filters": {"pairs": len(after), "good": len(after & good),
                          "accuracy": ratio(len(after & good), len(after))},
        "by_kind": {k: {"pairs": len(v), "accuracy": ratio(sum(v), len(v))}
                    for k, v in sorted(by_kind.items())},
        "reasons": dict(reasons.most_common(TOP_REASONS)),
    }


def precision_recall(good: set[str], scored: set[str], kept: set[str]) -> dict[str, Any]:
    """Of the `scored` pairs, the filter `kept` some: precision = kept and good / kept,
    recall = kept and good / good (among the scored)."""
    good_here = good & scored
    hits = len(kept & good_here)
    return {"scored": len(scored), "good": len(good_here), "kept": len(kept),
            "kept_good": hits, "precision": ratio(hits, len(kept)),
            "recall": ratio(hits, len(good_here))}


def filter_numbers(run: Path, verdicts: list[dict[str, Any]],
                   kept: set[str]) -> dict[str, Any]:
    """Precision and recall of the filters together (the dataset against every judged
    pair) and of each filter (`filters/<i>-<name>/`) against the pairs it scored."""
    good = {v["id"] for v in verdicts if v["good"]}
    judged = {v["id"] for v in verdicts}
    out = {"all": precision_recall(good, judged, kept & judged), "each": {}}
    for stage in filter_folders(run):
        records = RecordStore(stage).read()
        scored = {r["id"] for r in records} & judged
        passed = {r["id"] for r in records if r.get("status") == "kept"} & judged
        out["each"][stage.name] = precision_recall(good, scored, passed)
    return out


# --- editors on held-out inputs -------------------------------------------------------------


def held_out_cases(judge: Judge, count: int, seed: int,
                   seen: set[tuple[str, str]]) -> tuple[list[Any], int]:
    """`count` held-out inputs, leaving out any whose (caption, instruction) the trainer saw;
    returns the cases and how many were left out."""
    drawn = judge.held_out(2 * count, seed)
    fresh = [c for c in drawn if not (c.input and (c.input, c.instruction) in seen)]
    return fresh[:count], len(drawn) - len(fresh)


def judge_editors(models: list[str], labels: list[str], cases: list[Any], judge: Judge,
                  out_dir: Path, settings: EvalSettings, progress: Any = None
                  ) -> list[dict[str, Any]]:
    """Each model edits every held-out input (the evaluate stage's pipeline loading and
    settings, `editkit.evaluation.evaluate`), and the judge gives each edit its verdict."""
    from editkit.evaluation.edits import edit_all, lanczos, slug

    size = (settings.resolution, settings.resolution)
    inputs = [c.image.convert("RGB") if c.image.size == size else
              c.image.convert("RGB").resize(size, lanczos()) for c in cases]
    rows = [{"id": f"{i:04d}", "edit_prompt": c.instruction} for i, c in enumerate(cases)]
    seed = settings.seed if settings.seed is not None else 0
    bar = progress.add("judge edits", total=len(cases) * len(models)) if progress else None
    results = []
    for ref, label in zip(models, labels):
        edited, described = edit_all(ref, rows, inputs, settings, seed, bar)
        folder = out_dir / slug(label)
        per_case = []
        for row, case, image in zip(rows, cases, edited):
            verdict = judge.edit(case.truth, image)
            path = folder / f"{row['id']}.png"
            atomic_save_image(image, path)
            per_case.append({"id": row["id"], "instruction": case.instruction,
                             "kind": verdict.kind, "good": verdict.good,
                             "reasons": verdict.reasons,
                             "image": str(path.relative_to(out_dir.parent))})
        by_kind: dict[str, list[bool]] = defaultdict(list)
        for c in per_case:
            by_kind[c["kind"] or "?"].append(c["good"])
        results.append({
            "label": label, "model": described, "cases": len(per_case),
            "success": ratio(sum(c["good"] for c in per_case), len(per_case)),
            "by_kind": {k: {"cases": len(v), "success": ratio(sum(v), len(v))}
                        for k, v in sorted(by_kind.items())},
            "rows": per_case})
    return results


# --- the stage ------------------------------------------------------------------------------


def judge_run(run: Any, recipe: Any, models: list[str], labels: list[str],
              settings: EvalSettings, state: Any, progress: Any = None) -> dict[str, Any]:
    """Judge the run's pairs, filters and editors; reuse `evaluate/judge.json` when nothing
    it depends on (`state`: the weights, the dataset) changed."""
    spec = recipe.model.evaluate.judge
    plugin = recipe.plugins["evaluate.judge"]
    out_dir = run.stage_dir("evaluate")
    render_state = sorted(p.name for p in (run.path / "render").glob("shard-*.jsonl"))
    filter_state = sorted(str(p.relative_to(run.path))
                          for d in filter_folders(run.path) for p in d.glob("shard-*.jsonl"))
    key = fingerprint({"judge": {"use": spec.use, "count": spec.count,
                                 "options": plugin.options_dict()},
                       "settings": settings.model_dump(mode="json"), "models": models,
                       "state": state, "render": render_state, "filters": filter_state})
    path = out_dir / "judge.json"
    if path.is_file():
        previous = json.loads(path.read_text("utf-8"))
        if previous.get("key") == key:
            return judge_summary(previous)
    judge: Judge = plugin.create()
    verdicts = judge_pairs(run.path, judge, progress)
    kept = dataset_ids(run.path)
    seen = training_prompts(run.path)
    seed = settings.seed if settings.seed is not None else 0
    cases, excluded = held_out_cases(judge, spec.count, seed, seen)
    if not cases:
        raise InputError(f"judge '{spec.use}' drew no held-out inputs the trainer has not seen",
                         "raise evaluate.judge.count, or change evaluate.seed")
    images = out_dir / "judge"
    for i, case in enumerate(cases):
        atomic_save_image(case.image, images / "held-out" / f"{i:04d}.png")
    editors = judge_editors(models, labels, cases, judge, images, settings, progress) \
        if models else []
    result = {
        "key": key, "judge": {"use": spec.use, "options": plugin.options_dict()},
        "pairs": pair_numbers(verdicts, kept),
        "filters": filter_numbers(run.path, verdicts, kept),
        "held_out": {"count": len(cases), "seed": seed, "left_out_seen_in_training": excluded,
                     "inputs": [{"id": f"{i:04d}", "instruction": c.instruction,
                                 "input": c.input, "output": c.output, "truth": c.truth,
                                 "image": f"judge/held-out/{i:04d}.png"}
                                for i, c in enumerate(cases)]},
        "editors": editors,
    }
    atomic_write_text(out_dir / "judge-pairs.jsonl",
                      "".join(json.dumps(v, sort_keys=True) + "\n" for v in verdicts))
    atomic_write_json(path, result)
    atomic_write_text(out_dir / "judge.md", judge_table(result))
    return judge_summary(result)


def _dataset_rows(folder: Path) -> list[dict[str, Any]]:
    """The rows of the dataset in `folder` (either layout, or a run folder's), or none."""
    folder = Path(folder)
    if not (is_dataset(folder) or is_dataset(folder / DATASET)):
        return []
    return read_dataset(folder).rows


def dataset_ids(run: Path) -> set[str]:
    return {str(r["id"]) for r in _dataset_rows(Path(run) / DATASET)}


def training_prompts(run: Path) -> set[tuple[str, str]]:
    """(input caption, instruction) of every row a trainer trains on."""
    return dataset_prompts(Path(run) / DATASET)


def dataset_prompts(folder: Path) -> set[tuple[str, str]]:
    """(input caption, instruction) of the training rows of a dataset, in either layout."""
    return {(r.get("input", ""), r.get("edit_prompt", "")) for r in _dataset_rows(folder)
            if r["split"] != "test"}


def judge_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers for the manifest and the run's summary line."""
    pairs, filters = result["pairs"], result["filters"]["all"]
    return {"pair_accuracy": {"before_filters": pairs["before_filters"]["accuracy"],
                              "after_filters": pairs["after_filters"]["accuracy"]},
            "filters": {"precision": filters["precision"], "recall": filters["recall"]},
            "editor_success": {e["label"]: e["success"] for e in result["editors"]}}


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def judge_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, value, out of) rows: the table the console, judge.md and the report show."""
    pairs, filters = result["pairs"], result["filters"]
    kinds = ", ".join(f"{k} {_num(v['accuracy'])}" for k, v in pairs["by_kind"].items())
    rows = [("pair accuracy, before filtering", _num(pairs["before_filters"]["accuracy"]),
             f"{pairs['before_filters']['pairs']} pairs" + (f" ({kinds})" if kinds else "")),
            ("pair accuracy, after filtering", _num(pairs["after_filters"]["accuracy"]),
             f"{pairs['after_filters']['pairs']} pairs")]
    for name, numbers in [("filters", filters["all"]), *[
            (f"filter {n}", v) for n, v in filters["each"].items()]]:
        rows.append((f"{name}: precision / recall",
                     f"{_num(numbers['precision'])} / {_num(numbers['recall'])}",
                     f"{numbers['kept']} kept of {numbers['scored']}, "
                     f"{numbers['good']} good"))
    held = result["held_out"]["count"]
    for editor in result["editors"]:
        kinds = ", ".join(f"{k} {_num(v['success'])}" for k, v in editor["by_kind"].items())
        rows.append((f"editor success: {editor['label']}", _num(editor["success"]),
                     f"{held} held-out ({kinds})"))
    return rows


def judge_table(result: dict[str, Any]) -> str:
    lines = [f"| judged by {result['judge']['use']} | value | of |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in judge_rows(result)]
    if not result["editors"]:
        lines.append("")
        lines.append("no edit model to measure (the base is text-to-image and nothing is "
                     "trained yet)")
    reasons = result["pairs"]["reasons"]
    if reasons:
        lines += ["", "commonest reasons a pair is bad: " + "; ".join(
            f"{r} ({n})" for r, n in reasons.items())]
    return "\n".join(lines) + "\n"
