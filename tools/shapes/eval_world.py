"""Judge the world's text-to-image model with the oracle: does each sample show what its
prompt says? Prints per-attribute accuracy (background, kind, colour, size, position) and the
fraction of samples where the whole scene is right.

    python -m tools.shapes.eval_world MODEL [--samples 200] [--steps 20] [--guidance 4]
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from typing import Any

from editkit.builtins.shapes.oracle import read_scene, same_scene
from editkit.builtins.shapes.world import Scene, Shape, draw, random_scene
from tools.shapes.train_world import reconstruct, vae_locality

SHAPE_ATTRIBUTES = ("kind", "colour", "size", "position")
ATTRIBUTES = ("background", *SHAPE_ATTRIBUTES)


def _agreement(want: Shape, got: Shape | None) -> dict[str, float]:
    if got is None:
        return {name: 0.0 for name in SHAPE_ATTRIBUTES}
    return {"kind": float(got.kind == want.kind), "colour": float(got.colour == want.colour),
            "size": float(got.size == want.size),
            "position": float((got.row, got.column) == (want.row, want.column))}


def pairing(want: tuple[Shape, ...], seen: tuple[Shape, ...]) -> list[Shape | None]:
    """The read shape standing for each wanted one: the one-to-one pairing that agrees on the
    most attributes, every attribute counting the same (a wanted shape with no read shape left
    gets None). This once paired by cell, else by kind: one read shape could then stand for
    two wanted ones (two prompted circles, one drawn: kind right twice), and a misplaced shape
    of the wrong kind lost its colour and size too."""
    padded = list(seen) + [None] * len(want)
    best: list[Shape | None] = [None] * len(want)
    best_score = -1.0
    for chosen in itertools.permutations(padded, len(want)):
        score = sum(sum(_agreement(w, g).values()) for w, g in zip(want, chosen))
        if score > best_score:
            best, best_score = list(chosen), score
    return best


def compare(want: Scene, seen: Scene) -> dict[str, float]:
    """Per-attribute agreement of one sample (shape attributes averaged over its shapes)."""
    scores = {name: 0.0 for name in ATTRIBUTES}
    scores["background"] = float(want.background == seen.background)
    for shape, got in zip(want.shapes, pairing(want.shapes, seen.shapes)):
        for name, value in _agreement(shape, got).items():
            scores[name] += value / len(want.shapes)
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
    locality = vae_locality(pipe.vae)
    print("vae locality (kept shapes' latents from the before image, the rest from the after "
          "image, decoded and judged): " + ", ".join(f"{k} {v:.3f}" for k, v in locality.items()))
    for label, seconds in timings.items():
        print(f"{label}: {seconds:.3f} s per image (batches of 16)")


if __name__ == "__main__":
    main()
