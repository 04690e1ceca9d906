"""`editkit edit --best-of N` in the shapes world: how much does choosing among N candidates
add to the shipped editor's oracle success, by judge, and what does it cost?

    python benchmarks/best_of.py --cases 128 --seed 0 --count 8 --threads 1 [--no-sweep]

The world draws held-out edits (the shapes judge's, as benchmarks/editor.py and the evaluate
stage draw them); `shapes-edit` makes `--count` candidates of each (the candidates `editkit
edit --best-of` makes: seeds seed..seed+N-1 and its guidance grid, or seeds alone with
--no-sweep), and each judge picks one with the code `--best-of` runs (`--judge shapes`: the
oracle reading the truth from the input image and the instruction; `--judge clip` with the
world's CLIP, `shapes-clip`). Every pick is then judged against the case's own truth. One
sample is candidate 1, the plain `editkit edit`. "any good" is the most a judge could reach.
Cases the editor may have trained on are left out: those whose (caption, instruction) is among
the first 2 x count caption triplets of the recipe that trained it (`--recipe`, by default
the built-in `shapes`, which made `shapes-edit`), a superset of its training pairs.
"""

from __future__ import annotations

import argparse
import time


def recipe_prompts(recipe: str) -> set[tuple[str, str]]:
    """(input caption, instruction) of the first 2 x count triplets the recipe's captions
    stage draws: every pair it can have trained on, and some it dropped as duplicates."""
    from editkit.run.recipe import load_recipe

    loaded = load_recipe(recipe)
    generator = loaded.plugins["captions"].create()
    count = loaded.model.captions.count
    return {(t["input"], t["edit"]) for t in
            (generator.triplet(loaded.model.seed, i) for i in range(2 * count))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes-edit")
    parser.add_argument("--cases", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="held-out cases' seed")
    parser.add_argument("--edit-seed", type=int, default=0, help="candidate 1's seed")
    parser.add_argument("--count", type=int, default=8, help="candidates per case")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-sweep", dest="sweep", action="store_false",
                        help="candidates differ by seed only (the guidance of each is the "
                             "editor's)")
    parser.add_argument("--clip-model", default="shapes-clip")
    parser.add_argument("--recipe", default="shapes", help="the recipe that "
                        "trained the editor: its caption triplets are left out of the cases "
                        "('' leaves none out)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from editkit.builtins.shapes.judge import ShapesJudge
    from editkit.editing import pick_guidance
    from editkit.evaluation.best_of import ClipJudge, PluginJudge, candidates, choose
    from editkit.evaluation.judging import held_out_cases
    from editkit.models.editors import load_edit_pipeline
    from editkit.models.families import family_named

    torch.set_num_threads(args.threads)
    truth_judge = ShapesJudge()
    seen = recipe_prompts(args.recipe) if args.recipe else set()
    cases, left_out = held_out_cases(truth_judge, args.cases, args.seed, seen)
    start = time.perf_counter()
    pipe, spec = load_edit_pipeline(args.model, device="cpu")
    family = family_named(spec.family)
    chosen = pick_guidance(None, None, spec.guidance or family.edit_defaults(pipe)[0])
    loaded = time.perf_counter() - start
    plan = candidates(args.count, args.edit_seed, chosen["text"], chosen["image"], args.sweep)
    edits: list[list] = [[] for _ in cases]
    seconds = []
    for candidate in plan:  # one guidance a call, as `editkit edit` batches them
        start = time.perf_counter()
        for first in range(0, len(cases), args.batch_size):
            chunk = cases[first:first + args.batch_size]
            out = family.edit(pipe, [c.instruction for c in chunk], [c.image for c in chunk],
                              args.steps, guidance_scale=candidate.guidance,
                              image_guidance_scale=candidate.image_guidance,
                              generator=[torch.Generator("cpu").manual_seed(candidate.seed)
                                         for _ in chunk])
            for i, image in enumerate(out):
                edits[first + i].append(image.convert("RGB"))
        seconds.append(time.perf_counter() - start)
    good = [[truth_judge.edit(c.truth, e).good for e in row] for c, row in zip(cases, edits)]

    judges = {"oracle (`--judge shapes`)": PluginJudge("shapes"),
              f"CLIP (`--judge clip --clip-model {args.clip_model}`)":
                  ClipJudge(args.clip_model, device="cpu")}
    picks, judge_seconds = {}, {}
    for label, judge in judges.items():
        start = time.perf_counter()
        picks[label] = [choose(judge.score(c.image, c.instruction, row,
                                           judge.prepare(c.image, c.instruction)))
                        for c, row in zip(cases, edits)]
        judge_seconds[label] = time.perf_counter() - start

    n = len(cases)
    single = sum(row[0] for row in good) / n
    per_edit = sum(seconds) / (n * len(plan))
    print(f"{n} held-out cases (seed {args.seed}, {left_out} left out as seen), {args.model}, "
          f"{args.steps} steps, candidates: seeds {args.edit_seed}..{args.edit_seed + len(plan) - 1}"
          + (", guidance " + " ".join(f"{c.guidance:g}/{c.image_guidance:g}" for c in plan)
             if args.sweep else f", guidance {chosen['text']:g}/{chosen['image']:g}")
          + f"; {args.threads} thread(s), model loaded in {loaded:.1f} s")
    print("| selection | oracle success | change | edit s/case | judge s/case | total s/case |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| one sample (candidate 1) | {single:.3f} | | {per_edit:.3f} | | {per_edit:.3f} |")
    for label, chosen_rows in picks.items():
        rate = sum(row[k] for row, k in zip(good, chosen_rows)) / n
        judged = judge_seconds[label] / n
        total = per_edit * len(plan) + judged
        print(f"| best of {len(plan)}, {label} | {rate:.3f} | {rate - single:+.3f} | "
              f"{per_edit * len(plan):.3f} | {judged:.3f} | {total:.3f} |")
    bound = sum(any(row) for row in good) / n
    print(f"| any of {len(plan)} good (a perfect judge) | {bound:.3f} | {bound - single:+.3f} "
          "| | | |")
    each = ", ".join(f"{c.number}: {sum(row[k] for row in good) / n:.2f}"
                     for k, c in enumerate(plan))
    print(f"each candidate alone: {each}")


if __name__ == "__main__":
    main()
