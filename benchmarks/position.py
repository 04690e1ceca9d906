"""Where a text-to-image model of the shapes world puts its shapes wrong: the oracle's
position accuracy for one- and two-shape prompts apart, by cell, and the commonest
confusions (wanted cell -> drawn cell), on eval_world's held-out prompts.

    python benchmarks/position.py                      # the built-in shapes-sd, 300 prompts
    python benchmarks/position.py MODEL --samples 300 --guidance 4
"""

from __future__ import annotations

import argparse
import collections


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="shapes-sd")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionPipeline

    from editkit.builtins.shapes.oracle import read_scene
    from editkit.models import load
    from tools.shapes.eval_world import eval_scenes, pairing, sample

    torch.set_num_threads(args.threads)
    pipe = load(StableDiffusionPipeline, args.model, "text-to-image model")
    pipe.set_progress_bar_config(disable=True)
    scenes = eval_scenes(args.samples, 0)
    images, _ = sample(pipe, scenes, args.steps, args.guidance, 0)
    by_count: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0])
    by_cell: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    wrong: collections.Counter[str] = collections.Counter()
    for scene, image in zip(scenes, images):
        seen = read_scene(image)
        for want, got in zip(scene.shapes, pairing(scene.shapes, seen.shapes)):
            right = got is not None and (got.row, got.column) == (want.row, want.column)
            for tally in (by_count[len(scene.shapes)], by_cell[f"{want.row} {want.column}"]):
                tally[0] += right
                tally[1] += 1
            if not right:
                wrong["no shape drawn" if got is None else
                      f"{want.row} {want.column} -> {got.row} {got.column}"] += 1
    print(f"{args.model}: {args.samples} prompts, {args.steps} steps, guidance {args.guidance:g}")
    print(f"{'prompt shapes':16} {'position':>9} {'shapes':>7}")
    for count, (right, total) in sorted(by_count.items()):
        print(f"{count:<16} {right / total:9.3f} {total:7}")
    print("by wanted cell: " + ", ".join(f"{cell} {r / t:.2f}"
                                         for cell, (r, t) in sorted(by_cell.items())))
    print("commonest misplacements: " + ", ".join(f"{k} ({n})" for k, n in wrong.most_common(8)))


if __name__ == "__main__":
    main()
