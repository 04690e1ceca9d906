"""The shapes world, judged: the whole loop, and the loop with each stage broken on purpose.

Runs `recipes/shapes.yaml` (or `--recipe`), then, from copies of that run folder, redoes it
from the broken stage on: attention control off (render; Prompt-to-Prompt recipes only),
filter thresholds at zero (filters), zero training steps (train). Prints what the oracle
judged for each: pair accuracy before and after filtering, the filters' precision and recall,
the trained editor's success on held-out world images. Working must beat every broken variant
on the number its stage drives. `--pairs` stops after the filters (no training): the pairs'
numbers alone, judged here, with the accuracy per edit kind.

    python benchmarks/shapes.py [--recipe recipes/shapes.yaml] [--out runs/bench-shapes]
                                [--quick] [--only working] [--pairs] [key.path=value ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

QUICK = ["captions.count=120", "train.options.steps=400", "evaluate.judge.count=48"]
ZERO_FILTERS = ["filters.0.options.min_image=-1", "filters.0.options.min_direction=-1",
                "filters.0.options.min_text=-1", "filters.0.options.keep_top=null",
                "filters.1.options.min_similarity=-1"]
VARIANTS = {  # name: (overrides, the number it must lower)
    "working": ([], None),
    "render: attention control off": (["render.options.control=false"], "pairs before"),
    "filters: thresholds at zero": (ZERO_FILTERS, "precision"),
    "train: zero steps": (["train.options.steps=0"], "editor"),
}


PAIR_STAGES = ("captions", "render", "filters")


def run(recipe: str, folder: Path, overrides: list[str], pairs: bool = False) -> float:
    """Seconds to run the recipe (`pairs`: its first three stages alone) into `folder`,
    redoing what the overrides change."""
    start = time.perf_counter()
    calls = [["--only", stage] for stage in PAIR_STAGES] if pairs else [[]]
    for i, only in enumerate(calls):
        # --fresh redoes the stages a change invalidates, or all when none changed: once
        fresh = ["--fresh"] if i == 0 else []
        command = [sys.executable, "-m", "editkit", "run", recipe, f"output={folder}",
                   *overrides, *fresh, *only]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}"
                     f"{result.stderr[-2000:]}")
    return time.perf_counter() - start


def judged_pairs(folder: Path) -> dict[str, Any]:
    """The pairs' numbers as the evaluate stage's judge gives them, for a run stopped after
    its filters: every rendered pair judged by the oracle, the dataset as the kept ones."""
    from editkit.builtins.shapes.judge import ShapesJudge
    from editkit.evaluation.judging import dataset_ids, filter_numbers, judge_pairs, pair_numbers

    verdicts = judge_pairs(folder, ShapesJudge())
    kept = dataset_ids(folder)
    pairs = pair_numbers(verdicts, kept)
    filters = filter_numbers(folder, verdicts, kept)["all"]
    return {"pairs before": pairs["before_filters"]["accuracy"],
            "pairs after": pairs["after_filters"]["accuracy"],
            "precision": filters["precision"], "recall": filters["recall"], "editor": None,
            "kept": pairs["after_filters"]["pairs"],
            "rendered": pairs["before_filters"]["pairs"], "by_kind": pairs["by_kind"],
            "reasons": pairs["reasons"]}


def numbers(folder: Path) -> dict[str, float | None]:
    result = json.loads((folder / "evaluate" / "judge.json").read_text())
    pairs, filters = result["pairs"], result["filters"]["all"]
    # the run's own editor, not the editors evaluate.models judges beside it
    trained = [e for e in result["editors"] if e["label"] == str(folder)] or \
        [e for e in result["editors"] if e["label"] != "base"][:1]
    return {"pairs before": pairs["before_filters"]["accuracy"],
            "pairs after": pairs["after_filters"]["accuracy"],
            "precision": filters["precision"], "recall": filters["recall"],
            "editor": trained[-1]["success"] if trained else None,
            "kept": pairs["after_filters"]["pairs"], "rendered": pairs["before_filters"]["pairs"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/shapes.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-shapes"))
    parser.add_argument("--quick", action="store_true", help=f"also set {' '.join(QUICK)}")
    parser.add_argument("--only", choices=["working"], help="the working loop alone")
    parser.add_argument("--pairs", action="store_true", help="captions, render and filters "
                        "only: the pairs' numbers, no training")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for every variant")
    args = parser.parse_args()
    common = (QUICK if args.quick else []) + args.overrides
    with open(args.recipe, encoding="utf-8") as handle:
        renderer = yaml.safe_load(handle)["render"]["use"]
    rows = {}
    working = args.out / "working"
    for name, (overrides, key) in VARIANTS.items():
        if args.only and name != args.only:
            continue
        if name.startswith("render") and renderer != "prompt-to-prompt":
            continue  # attention control is Prompt-to-Prompt's
        if key == "editor" and args.pairs:
            continue
        folder = working if name == "working" else args.out / name.split(":")[0]
        if name != "working":  # redo from the broken stage on, sharing what comes before
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(working, folder)
        seconds = run(args.recipe, folder, common + overrides, args.pairs)
        rows[name] = {**(judged_pairs(folder) if args.pairs else numbers(folder)),
                      "seconds": seconds}
        print(f"done: {name} ({seconds:.0f} s)", file=sys.stderr, flush=True)

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    stages = " (captions, render, filters)" if args.pairs else ""
    print(f"shapes world, judged by the oracle ({args.recipe}{stages} {' '.join(common)})")
    header = ("variant", "rendered", "kept", "pairs before", "pairs after", "precision",
              "recall", "editor", "seconds")
    print(f"{header[0]:32}" + "".join(f"{h:>13}" for h in header[1:]))
    for name, row in rows.items():
        print(f"{name:32}" + "".join(f"{v:>13}" for v in (
            row["rendered"], row["kept"], *(cell(row[k]) for k in
                                            ("pairs before", "pairs after", "precision",
                                             "recall", "editor")), f"{row['seconds']:.0f}")))
    if args.pairs:
        kinds = rows["working"]["by_kind"] if "working" in rows else {}
        print("working pairs by edit kind: " + ", ".join(
            f"{kind} {cell(v['accuracy'])} of {v['pairs']}" for kind, v in kinds.items()))
        print("commonest reasons: " + ", ".join(
            f"{r} ({n})" for r, n in (rows.get("working", {}).get("reasons") or {}).items()))
    failed = [name for name, (_, key) in VARIANTS.items() if key and name in rows
              and (rows[name][key] or 0) >= (rows["working"][key] or 0)]
    for name in failed:
        print(f"NOT TOLD APART: {name} did not lower {VARIANTS[name][1]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
