"""Judge the world's text-to-image model with the oracle: does each sample show what its
prompt says? Prints per-attribute accuracy (background, kind, colour, size, position) and the
fraction of samples where the whole scene is right.

    python -m editkit_shapes.eval_world MODEL [--samples 200] [--steps 20] [--guidance 4]
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from .oracle import read_scene, same_scene
from .train_world import reconstruct
from .world import Scene, Shape, draw, random_scene

ATTRIBUTES = ("background", "kind", "colour", "size", "position")


def _match(want: Shape, seen: tuple[Shape, ...]) -> Shape | None:
    """The read shape standing for `want`: the one in its cell, else one of its kind."""
    for shape in seen:
        if (shape.row, shape.column) == (want.row, want.column):
            return shape
    for shape in seen:
        if shape.kind == want.kind:
            return shape
    return None


def compare(want: Scene, seen: Scene) -> dict[str, float]:
    """Per-attribute agreement of one sample (shape attributes averaged over its shapes)."""
    scores = {name: 0.0 for name in ATTRIBUTES}
    scores["background"] = float(want.background == seen.background)
    for shape in want.shapes:
        got = _match(shape, seen.shapes)
        if got is None:
            continue
        scores["kind"] += (got.kind == shape.kind) / len(want.shapes)
        scores["colour"] += (got.colour == shape.colour) / len(want.shapes)
        scores["size"] += (got.size == shape.size) / len(want.shapes)
        scores["position"] += ((got.row, got.column) == (shape.row, shape.column)) / \
            len(want.shapes)
    scores["all"] = float(same_scene(want, seen))
    return scores


def eval_scenes(count: int, seed: int, max_shapes: int = 2) -> list[Scene]:
    """Prompts for evaluation, from a stream the trainer never draws from."""
    rng = random.Random(f"editkit-shapes-eval:{seed}")
    return [random_scene(rng, max_shapes) for _ in range(count)]


def score_images(scenes: list[Scene], images: list[Any]) -> dict[str, float]:
    rows = [compare(scene, read_scene(image)) for scene, image in zip(scenes, images)]
    return {key: sum(r[key] for r in rows) / len(rows) for key in (*ATTRIBUTES, "all")}


def sample(pipe: Any, scenes: list[Scene], steps: int, guidance: float, seed: int,
           batch: int = 16) -> tuple[list[Any], float]:
    """Images for the scenes' captions, and the seconds spent per image."""
    import torch

    images: list[Any] = []
    started = time.time()
    for i in range(0, len(scenes), batch):
        chunk = scenes[i:i + batch]
        generator = torch.Generator().manual_seed(seed + i)
        images += pipe([s.caption() for s in chunk], num_inference_steps=steps,
                       guidance_scale=guidance, height=64, width=64, generator=generator,
                       output_type="pil").images
    return images, (time.time() - started) / len(scenes)


def format_table(rows: dict[str, dict[str, float]]) -> str:
    header = f"{'':24}" + "".join(f"{name:>11}" for name in (*ATTRIBUTES, "all"))
    lines = [header]
    for label, scores in rows.items():
        lines.append(f"{label:24}" + "".join(f"{scores[n]:>11.3f}"
                                            for n in (*ATTRIBUTES, "all")))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, nargs="+", default=[4.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from editkit.models import load

    torch.set_num_threads(args.threads)
    pipe = load(StableDiffusionPipeline, args.model, "text-to-image model")
    pipe.set_progress_bar_config(disable=True)
    scenes = eval_scenes(args.samples, args.seed)
    rows = {"world.draw (oracle)": score_images(scenes, [draw(s) for s in scenes])}
    drawn = torch.from_numpy(np.stack([np.asarray(draw(s)) for s in scenes]))
    rows["vae reconstruction"] = score_images(
        scenes, reconstruct(pipe.vae, drawn.permute(0, 3, 1, 2).float() / 127.5 - 1))
    timings = {}
    for guidance in args.guidance:
        images, seconds = sample(pipe, scenes, args.steps, guidance, args.seed)
        label = f"samples cfg={guidance:g}"
        rows[label] = score_images(scenes, images)
        timings[label] = seconds
    print(f"{args.samples} prompts, {args.steps} DDIM steps, seed {args.seed}")
    print(format_table(rows))
    for label, seconds in timings.items():
        print(f"{label}: {seconds:.3f} s per image (batches of 16)")


if __name__ == "__main__":
    main()
