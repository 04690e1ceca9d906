"""The shapes world, judged: the whole loop, and the loop with each stage broken on purpose.

Runs `recipes/shapes.yaml` (or `--recipe`), then, from copies of that run folder, redoes it
from the broken stage on: attention control off (render), filter thresholds at zero (filters),
zero training steps (train). Prints what the oracle judged for each: pair accuracy before and
after filtering, the filters' precision and recall, the trained editor's success on held-out
world images. Working must beat every broken variant on the number its stage drives.

    python benchmarks/shapes.py [--recipe recipes/shapes.yaml] [--out runs/bench-shapes]
                                [--quick] [--only working] [key.path=value ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

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


def run(recipe: str, folder: Path, overrides: list[str]) -> float:
    start = time.perf_counter()
    command = [sys.executable, "-m", "editkit", "run", recipe, f"output={folder}", *overrides,
               "--fresh"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return time.perf_counter() - start


def numbers(folder: Path) -> dict[str, float | None]:
    result = json.loads((folder / "evaluate" / "judge.json").read_text())
    pairs, filters = result["pairs"], result["filters"]["all"]
    trained = [e for e in result["editors"] if e["label"] != "base"]
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
    parser.add_argument("overrides", nargs="*", help="recipe overrides for every variant")
    args = parser.parse_args()
    common = (QUICK if args.quick else []) + args.overrides
    rows = {}
    working = args.out / "working"
    for name, (overrides, _) in VARIANTS.items():
        if args.only and name != args.only:
            continue
        folder = working if name == "working" else args.out / name.split(":")[0]
        if name != "working":  # redo from the broken stage on, sharing what comes before
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(working, folder)
        seconds = run(args.recipe, folder, common + overrides)
        rows[name] = {**numbers(folder), "seconds": seconds}
        print(f"done: {name} ({seconds:.0f} s)", file=sys.stderr, flush=True)

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    print(f"shapes world, judged by the oracle ({args.recipe} {' '.join(common)})")
    header = ("variant", "rendered", "kept", "pairs before", "pairs after", "precision",
              "recall", "editor", "seconds")
    print(f"{header[0]:32}" + "".join(f"{h:>13}" for h in header[1:]))
    for name, row in rows.items():
        print(f"{name:32}" + "".join(f"{v:>13}" for v in (
            row["rendered"], row["kept"], *(cell(row[k]) for k in
                                            ("pairs before", "pairs after", "precision",
                                             "recall", "editor")), f"{row['seconds']:.0f}")))
    failed = [name for name, (_, key) in VARIANTS.items() if key and name in rows
              and (rows[name][key] or 0) >= (rows["working"][key] or 0)]
    for name in failed:
        print(f"NOT TOLD APART: {name} did not lower {VARIANTS[name][1]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
