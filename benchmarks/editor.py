"""Probe the shapes-world editor: how good can it get, and on what data? Two commands.

    python benchmarks/editor.py pairs OUT --count 4000 --seed 100
        a training dataset of world-drawn pairs (every pair exactly right, drawn by the world,
        not rendered by a model): OUT/metadata.jsonl with input_image, edit_prompt,
        edited_image, input, output; train on it with
        `editkit run recipes/shapes.yaml --only train train.options.dataset=OUT ...`

    python benchmarks/editor.py judge MODEL [MODEL ...] --cases 128 --seed 0 \
            --guidance 1.5 --image-guidance 1.2 [--dataset DATASET] [--reasons 8]
        each editor (run folder, LoRA folder, pipeline) edits the same held-out images the
        world draws (the evaluate stage's `shapes` judge and settings), and the oracle judges
        every edit; prints success on one-shape and two-shape scenes, all, and by edit kind.
        Held-out cases whose (caption, instruction) is in DATASET's (or a run's) training pairs
        are left out, as the evaluate stage does.

The loop judges 64 cases (+-0.06); 128 halves the noise of a comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path


def make_pairs(out: Path, count: int, seed: int, edits: list[str], max_shapes: int) -> None:
    from editkit.builtins.shapes.captions import ShapesCaptions, ShapesOptions, scene_from_dict
    from editkit.builtins.shapes.world import draw

    generator = ShapesCaptions(ShapesOptions(edits=edits, max_shapes=max_shapes))
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        t = generator.triplet(seed, index)
        name = f"{index:06d}"
        before, after = (scene_from_dict(t["scene_before"]), scene_from_dict(t["scene_after"]))
        draw(before).save(out / "images" / f"{name}-0.png")
        draw(after).save(out / "images" / f"{name}-1.png")
        lines.append(json.dumps({"id": name, "input_image": f"images/{name}-0.png",
                                 "edited_image": f"images/{name}-1.png",
                                 "edit_prompt": t["edit"], "input": t["input"],
                                 "output": t["output"], "edit_kind": t["edit_kind"]}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{count} world-drawn pairs in {out}")


def judge(models: list[str], args: argparse.Namespace) -> None:
    import torch

    from editkit.builtins.shapes.judge import ShapesJudge
    from editkit.evaluation.judging import dataset_prompts, held_out_cases, judge_editors
    from editkit.evaluation.settings import EvalSettings

    torch.set_num_threads(args.threads)
    judge_plugin = ShapesJudge()
    dataset = Path(args.dataset) if args.dataset else Path(models[0]) / "dataset"
    seen = dataset_prompts(dataset / "dataset" if (dataset / "dataset").is_dir() else dataset)
    cases, left_out = held_out_cases(judge_plugin, args.cases, args.seed, seen)
    settings = EvalSettings(steps=args.steps, resolution=64, guidance=args.guidance,
                            image_guidance=args.image_guidance, seed=args.seed,
                            batch_size=16, device="cpu")
    out = Path(args.out)
    shapes = [len(c.truth["scene_before"]["shapes"]) for c in cases]
    print(f"{len(cases)} held-out cases (seed {args.seed}, {left_out} left out as seen), "
          f"guidance {args.guidance}/{args.image_guidance}, {args.steps} steps")
    print("| editor | one shape | two shapes | all | by kind | s |")
    print("|---|---|---|---|---|---|")
    for model in models:
        start = time.perf_counter()
        (result,) = judge_editors([model], [Path(model).name or model], cases, judge_plugin,
                                  out, settings)
        good = [r["good"] for r in result["rows"]]

        def rate(count: int) -> str:
            chosen = [g for g, n in zip(good, shapes) if n == count]
            return f"{sum(chosen) / len(chosen):.3f} ({len(chosen)})" if chosen else "-"

        kinds = ", ".join(f"{k} {v['success']:.2f}" for k, v in result["by_kind"].items())
        print(f"| {model} | {rate(1)} | {rate(2)} | **{result['success']:.3f}** | {kinds} "
              f"| {time.perf_counter() - start:.0f} |", flush=True)
        if args.reasons:
            for count in (1, 2):
                reasons = Counter(r for row, n in zip(result["rows"], shapes) if n == count
                                  for r in row["reasons"])
                print(f"  failures, {count} shape(s): " + "; ".join(
                    f"{reason} {times}" for reason, times in reasons.most_common(args.reasons)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pairs", help="write a dataset of world-drawn pairs")
    p.add_argument("out")
    p.add_argument("--count", type=int, default=4000)
    p.add_argument("--seed", type=int, default=100,
                   help="captions seed (the loop's captions use the recipe seed, 0)")
    p.add_argument("--edits", default="colour,background,kind,size")
    p.add_argument("--max-shapes", type=int, default=2)
    j = sub.add_parser("judge", help="judge editors on held-out world edits")
    j.add_argument("models", nargs="+")
    j.add_argument("--cases", type=int, default=128)
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--steps", type=int, default=20)
    j.add_argument("--guidance", type=float, default=1.5)
    j.add_argument("--image-guidance", type=float, default=1.2)
    j.add_argument("--dataset", default=None, help="training pairs to leave out of the cases "
                   "[the first model's run dataset]")
    j.add_argument("--reasons", type=int, default=0, metavar="N",
                   help="also print the N commonest reasons edits failed, per shape count")
    j.add_argument("--threads", type=int, default=2)
    j.add_argument("--out", default="runs/editor-probe")
    args = parser.parse_args()
    if args.command == "pairs":
        make_pairs(Path(args.out), args.count, args.seed, args.edits.split(","),
                   args.max_shapes)
    else:
        judge(args.models, args)


if __name__ == "__main__":
    main()
