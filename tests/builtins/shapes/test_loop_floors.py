"""The shapes loop, reduced (the quickstart), judged by the oracle: no number may fall below
the floor set from what was measured (BENCHMARKS.md, "shapes world"); turning Prompt-to-
Prompt's attention control off must lower pair accuracy, and one training step instead of 300
must lower editor success."""

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# measured on the quickstart (60 triplets x 2 samples, 300 LoRA steps), BENCHMARKS.md:
# the shipped shapes-sd, with a third of the captions leaving the places unsaid: pairs
# before 0.86 (0.94 where the caption says the places, 0.67 where it does not), after 0.97,
# precision 0.97, recall 0.77, editor 0.06 (2 of 32); without attention control pairs before
# falls to 0.80 (the unsaid places move), and an editor of zero steps succeeds on none (this
# test trains one step). The earlier shapes-sd, whose captions said everything, made 0.94 /
# 0.96 / 0.96 / 0.79 / 0.09 (0.83 without control); a grounded one (a caption fixes the whole
# picture: 1.00 with control and 0.99 without) is why captions now leave places unsaid
# (docs/history/shapes-loop.md, docs/history/attention-control.md).
# Recall is the full loop's goal (0.5; `recipes/shapes.yaml` keeps 0.79): the quickstart's
# ~100 good pairs move it by ~0.05 from run to run, so its floor sits lower.
# The quickstart also judges the shipped editor (shapes-edit, the full loop's) on the same 32
# held-out edits: 0.656 (docs/history/shapes-loop.md, 2026-12-04).
FLOORS = {"pairs before": 0.82, "pairs after": 0.93, "precision": 0.93, "recall": 0.60,
          "editor": 0.03, "shipped editor": 0.5}
MARGIN = 0.02


def judged(folder: Path) -> dict[str, float]:
    result = json.loads((folder / "evaluate" / "judge.json").read_text())
    pairs, filters = result["pairs"], result["filters"]["all"]
    editors = {e["label"]: e["success"] for e in result["editors"]}
    return {"pairs before": pairs["before_filters"]["accuracy"],
            "pairs after": pairs["after_filters"]["accuracy"],
            "precision": filters["precision"], "recall": filters["recall"],
            "editor": editors[f"runs/{folder.name}"], "shipped editor": editors["shapes-edit"]}


@pytest.mark.slow
def test_reduced_shapes_loop_stays_above_its_floors(cli, tmp_path):
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    run = cli("run", "recipes/quickstart.yaml", HF_HUB_OFFLINE="1", timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    working = judged(tmp_path / "runs/quickstart")
    for name, floor in FLOORS.items():
        assert working[name] >= floor, f"{name} {working[name]:.3f} fell below {floor}"

    broken = cli("run", "recipes/quickstart.yaml", "output=runs/no-control",
                 "render.options.control=false", "train.options.steps=1",
                 HF_HUB_OFFLINE="1", timeout=900)
    assert broken.returncode == 0, broken.stderr[-2000:]
    without = judged(tmp_path / "runs/no-control")
    assert without["pairs before"] < working["pairs before"] - MARGIN, (without, working)
    assert without["editor"] < working["editor"], (without, working)  # one step: no editor
