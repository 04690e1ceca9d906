"""Ship a trained shapes editor as the built-in model `shapes-edit`: the trained weights of a
finished `editkit run recipes/shapes.yaml` (its `train/final/`), the LoRA stored in fp16
(half the bytes; the same edits, BENCHMARKS.md), and what the run measured.

    editkit run recipes/shapes.yaml                         # seed 0: trains runs/shapes
    python -m tools.shapes.ship_editor runs/shapes   # -> editkit/builtins/shapes/models/shapes-edit

Then `editkit edit picture.png "make the circle blue" --model shapes-edit` edits with it,
offline, with nothing trained first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

# the checkout's copy of the package's models, never an installed package
MODELS = Path(__file__).resolve().parents[2] / "editkit" / "builtins" / "shapes" / "models"

NAME = "shapes-edit"


def ship(run: Path, out: Path) -> dict[str, Any]:
    """Copy `run`'s trained editor to `out` (replacing what is there); returns its stats."""
    import torch
    from safetensors.torch import load_file, save_file

    from editkit.errors import InputError
    from editkit.models.editors import WEIGHTS_FILE

    final = run / "train" / "final"
    if not (final / WEIGHTS_FILE).is_file():
        raise InputError(f"{run} has no trained editor ({final / WEIGHTS_FILE} is missing)",
                         "run `editkit run recipes/shapes.yaml` to the end first")
    weights = json.loads((final / WEIGHTS_FILE).read_text())
    if weights.get("type") != "lora" or weights.get("base") != "shapes-sd":
        raise InputError(f"{run}'s editor is not a LoRA on shapes-sd "
                         f"(type {weights.get('type')!r}, base {weights.get('base')!r})",
                         "ship the editor of a recipes/shapes.yaml run")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    lora = load_file(str(final / weights["lora"]))
    save_file({k: v.to(torch.float16).contiguous() for k, v in lora.items()},
              str(staging / weights["lora"]), metadata={"format": "pt"})
    if weights.get("conv_in"):
        shutil.copy2(final / weights["conv_in"], staging / weights["conv_in"])
    (staging / WEIGHTS_FILE).write_text(json.dumps(weights, indent=2) + "\n")
    stats = _run_stats(run)
    (staging / "train_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return stats


def _run_stats(run: Path) -> dict[str, Any]:
    """What the run says of itself: its seed, packages, training and the oracle's verdicts."""
    def read(relative: str) -> dict[str, Any]:
        path = run / relative
        return json.loads(path.read_text()) if path.is_file() else {}

    manifest, result, judged = read("manifest.json"), read("train/result.json"), \
        read("evaluate/judge.json")
    # the run's own editor is listed first: its base, shapes-sd (ship refuses any other), is
    # text-to-image and never measured
    editors = judged.get("editors") or [{}]
    return {
        "reproduce": "editkit run recipes/shapes.yaml; "
                     "python -m tools.shapes.ship_editor runs/shapes",
        "recipe": manifest.get("recipe"), "seed": manifest.get("seed"),
        "packages": manifest.get("packages"),
        "train": {k: result.get(k) for k in ("steps", "seconds_per_step", "mixed_precision",
                                             "first_loss", "last_loss", "probe_loss_end")},
        "editor_success": editors[0].get("success"), "held_out": editors[0].get("cases"),
        "lora_dtype": "float16",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished recipes/shapes.yaml run folder")
    parser.add_argument("--out", type=Path, default=MODELS / NAME)
    args = parser.parse_args()
    from editkit.errors import EditkitError

    try:
        stats = ship(args.run, args.out)
    except EditkitError as exc:
        sys.exit(f"error: {exc}")
    print(f"{args.out}: editor success {stats['editor_success']} on "
          f"{stats['held_out']} held-out edits (the run's own judge)")


if __name__ == "__main__":
    main()
