"""Photos in, judged by the oracle: the photo renderer (`use: photo`) on world-drawn photos.

Runs the captions, render and filters stages of `recipes/shapes-photos.yaml` (or `--recipe`)
into a run folder, then, with attention control off (`render.options.control=false`), its
render and filters again from the same captions, and prints one table:

- inversion: the share of photos whose inversion (at the renderer's settings: its method,
  steps, and each photo's seed and guidance as its first pair drew them), sampled back, the
  oracle reads as the scene the photo shows (the world's own scene where the photos are
  the ones `draw_photos` makes; else the oracle's reading of the photo), with the PSNR of
  the reconstruction against the photo; edit-friendly (the renderer's) and negative-prompt;
- pair accuracy (`ShapesJudge.pair` on every rendered pair) before filtering and after it
  (the pairs the filters kept for the dataset), and the same with attention control off;
- seconds per pair of the photo renderer (inversion included), of the inversion alone, and
  of the render stage in the run, against diffusers' `StableDiffusionPipeline` drawing the
  before and after captions (same model, steps, size, mean guidance; the baseline), measured
  interleaved in this run on one batch of the recipe's triplets.

Bars: inversion >= 0.95, pairs before filtering >= 0.80, after >= 0.95, control off at
least 0.10 below control on; the script exits 1 when one fails. `--photos N` edits the first
N photos of the recipe's folder (more than it holds: `draw_photos` draws N) with the recipe's
triplets per photo (its `captions.count` scaled: a photo's edits may repeat one another).

    python benchmarks/photos.py [--recipe recipes/shapes-photos.yaml] [--photos 100]
        [--steps 10] [--threads 1] [--repeat 3] [--quick] [--out runs/bench-photos]
        [key.path=value ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BARS = {"inversion": 0.95, "before": 0.80, "after": 0.95, "control drop": 0.10}
QUICK_PHOTOS = 32


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores"


def load(recipe_path: str, overrides: list[str], output: Path) -> Any:
    """The recipe's captions, render and filters stages (train and evaluate left out),
    overridden, writing to `output`."""
    from editkit.run.builtin_recipes import resolve_recipe
    from editkit.run.recipe import apply_overrides, read_yaml, validate

    path = resolve_recipe(recipe_path)
    data = read_yaml(path)
    apply_overrides(data, [*overrides, f"output={output}"], str(path))
    for stage in ("train", "evaluate"):
        data.pop(stage, None)
    return validate(data, str(path))


def resolved(folder: str) -> Path:
    """A recipe's folder: as given, or, where that is not here, inside the repository."""
    path = Path(folder)
    if not path.is_absolute() and not path.exists():
        path = ROOT / path
    return path.resolve()


def photos_folder(folder: str, wanted: int, out: Path) -> str:
    """The recipe's photo folder, or, where it holds fewer than `wanted`, a folder of
    `wanted` photos `draw_photos` makes (seed 0: the shipped folder's photos come first)."""
    from editkit.builtins.shapes.photos import draw_photos
    from editkit.captions.photos import list_photos

    path = resolved(folder)
    if len(list_photos(str(path))) >= wanted:
        return str(path)
    drawn = out / "photos"
    shutil.rmtree(drawn, ignore_errors=True)
    draw_photos(drawn, wanted, seed=0)
    return str(drawn.resolve())


def world_scenes(paths: list[Path]) -> dict[Path, Any]:
    """The scene the world drew into each photo, for the photos that are `draw_photos`'
    (seed 0, photo-NNNN.png, checked pixel for pixel); the others are left out."""
    import numpy as np
    from PIL import Image

    from editkit.builtins.shapes.world import draw, random_scene

    numbered = {p: int(m.group(1)) for p in paths
                if (m := re.fullmatch(r"photo-(\d+)\.png", p.name))}
    rng = random.Random("editkit-shapes-photos:0")
    scenes = [random_scene(rng, 2) for _ in range(max(numbered.values(), default=-1) + 1)]
    out = {}
    for path, index in numbered.items():
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        if np.array_equal(pixels, np.asarray(draw(scenes[index]).convert("RGB"))):
            out[path] = scenes[index]
    return out


def run_stages(recipe: Any) -> dict[str, Any]:
    from editkit.run.runner import run_recipe

    return run_recipe(recipe, fresh=True, progress=False)


def pair_accuracy(run: Path) -> dict[str, Any]:
    from editkit.builtins.shapes.judge import ShapesJudge
    from editkit.evaluation.judging import dataset_ids, filter_numbers, judge_pairs, pair_numbers

    verdicts = judge_pairs(run, ShapesJudge())
    kept = dataset_ids(run)
    return {**pair_numbers(verdicts, kept), "filters": filter_numbers(run, verdicts, kept)}


def first_pairs(run: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(triplet, its rendered pair's settings) for the first rendered triplet of each photo."""
    from editkit.run.folder import RunFolder
    from editkit.run.stages import kept_records

    folder = RunFolder(run)
    triplets = {t["id"]: t for t in kept_records(folder, "captions")}
    seen: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for pair in kept_records(folder, "render"):
        triplet = triplets[pair["triplet_id"]]
        seen.setdefault(triplet["photo"], (triplet, pair["settings"]))
    return list(seen.values())


def inversion_check(renderer: Any, firsts: list[tuple[dict[str, Any], dict[str, Any]]],
                    truth: dict[Path, Any], method: str, batch: int) -> dict[str, Any]:
    """Invert each photo with `method` at the renderer's settings, sample it back, and read
    the reconstruction with the oracle."""
    import torch

    from editkit.builtins.shapes.oracle import read_scene, same_scene
    from editkit.captions.photos import read_photo
    from editkit.diffusion import inversion
    from editkit.diffusion.sampling import to_pil

    opts = renderer.options
    pipe = renderer.pipeline()
    same, psnrs = 0, []
    for start in range(0, len(firsts), batch):
        chunk = firsts[start:start + batch]
        photos = torch.stack([renderer.plan(t)["photo"] for t, _ in chunk])
        inverted = inversion.invert(
            pipe, photos, [t["input"] for t, _ in chunk], steps=opts.steps,
            guidance=[s["guidance"] for _, s in chunk], method=method,
            negative=opts.negative_prompt, fixed_point=opts.fixed_point, lr=opts.null_text_lr,
            seed=[s["seed"] for _, s in chunk],
            skip=opts.skip if method == "edit-friendly" else 0)
        images = inversion.reconstruct(pipe, inverted)
        psnrs += inversion.psnr(photos, images)
        for (triplet, _), image in zip(chunk, images):
            path = Path(triplet["photo"]).resolve()
            scene = truth.get(path) or read_scene(read_photo(path))
            same += same_scene(read_scene(to_pil(image)), scene)
    return {"same": same, "photos": len(firsts), "share": same / len(firsts),
            "psnr_mean": statistics.fmean(psnrs), "psnr_min": min(psnrs)}


def costs(renderer: Any, triplets: list[dict[str, Any]], seed: int, repeat: int
          ) -> dict[str, float]:
    """Seconds per pair, medians of `repeat` interleaved rounds after a warm-up."""
    import torch

    from editkit.diffusion import inversion
    from editkit.diffusion.renderer import draw, sample_seed
    from editkit.plugin.kinds import RenderJob

    opts = renderer.options
    pipe = renderer.pipeline()
    photos = torch.stack([renderer.plan(t)["photo"] for t in triplets])
    seeds = [sample_seed(seed, t["id"], 0) for t in triplets]
    scales = [draw(random.Random(s), opts.guidance) for s in seeds]
    mean_guidance = sum(opts.guidance) / 2

    def baseline() -> None:
        generator = torch.Generator("cpu").manual_seed(seed)
        pipe(prompt=[t["input"] for t in triplets] + [t["output"] for t in triplets],
             num_inference_steps=opts.steps, height=opts.height, width=opts.width,
             guidance_scale=mean_guidance, negative_prompt=[opts.negative_prompt] * (
                 2 * len(triplets)) if opts.negative_prompt else None, generator=generator)

    def photo() -> None:
        list(renderer.render(RenderJob(triplets=triplets, seed=seed)))

    def invert_only() -> None:
        inversion.invert(pipe, photos, [t["input"] for t in triplets], steps=opts.steps,
                         guidance=scales, method=opts.inversion, negative=opts.negative_prompt,
                         fixed_point=opts.fixed_point, lr=opts.null_text_lr, seed=seeds,
                         skip=opts.skip)

    cases = {"baseline": baseline, "photo": photo, "inversion": invert_only}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm up
    for _ in range(repeat):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / len(triplets) / opts.samples)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/shapes-photos.yaml")
    parser.add_argument("--photos", type=int, default=None,
                        help=f"photos to edit (default 100, the recipe's; --quick "
                        f"{QUICK_PHOTOS})")
    parser.add_argument("--steps", type=int, default=None, help="render steps (the recipe's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeat", type=int, default=3, help="timing rounds")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_PHOTOS} photos and 2 timing rounds")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-photos"))
    parser.add_argument("overrides", nargs="*", help="recipe overrides (key.path=value)")
    args = parser.parse_args()
    photos = args.photos or (QUICK_PHOTOS if args.quick else 100)
    repeat = 2 if args.quick and args.repeat == 3 else args.repeat

    import torch

    from editkit.builtins.shapes.oracle import read_scene, same_scene
    from editkit.captions.photos import list_photos, read_photo
    from editkit.run.folder import RunFolder
    from editkit.run.stages import kept_records

    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    working, off = args.out / "control-on", args.out / "control-off"
    overrides = list(args.overrides) + ([f"render.options.steps={args.steps}"]
                                        if args.steps else [])
    recipe = load(args.recipe, overrides, working)
    # the recipe's triplets per photo (a photo's edits may repeat one another: the recipe
    # asks for fewer triplets than photos x edits), for `photos` photos
    shipped = len(list_photos(str(resolved(recipe.plugins["captions"].options.photos))))
    count = round(recipe.model.captions.count * photos / shipped)
    folder = photos_folder(recipe.plugins["captions"].options.photos, photos, args.out)
    overrides += [f"captions.options.photos={folder}", f"captions.count={count}"]
    recipe = load(args.recipe, overrides, working)

    summaries = run_stages(recipe)
    print(f"done: captions, render, filters ({time.perf_counter() - wall:.0f} s)",
          file=sys.stderr, flush=True)
    on = pair_accuracy(working)
    shutil.rmtree(off, ignore_errors=True)
    shutil.copytree(working, off)  # the same captions; render and filters are redone
    run_stages(load(args.recipe, [*overrides, "render.options.control=false"], off))
    control_off = pair_accuracy(off)
    print(f"done: control off ({time.perf_counter() - wall:.0f} s)", file=sys.stderr,
          flush=True)

    renderer = recipe.plugins["render"].create()
    opts = renderer.options
    firsts = first_pairs(working)
    truth = world_scenes([Path(p).resolve() for p in list_photos(folder)])
    photo_paths = [Path(t["photo"]).resolve() for t, _ in firsts]
    known = [p for p in photo_paths if p in truth]
    read_right = sum(same_scene(read_scene(read_photo(p)), truth[p]) for p in known)
    batch = int(opts.triplets_per_batch)
    methods = {m: inversion_check(renderer, firsts, truth, m, batch)
               for m in dict.fromkeys([opts.inversion, "edit-friendly", "negative-prompt"])}
    print(f"done: inversion ({time.perf_counter() - wall:.0f} s)", file=sys.stderr, flush=True)

    sample = kept_records(RunFolder(working), "captions")[:batch]
    seconds = costs(renderer, sample, recipe.model.seed, repeat)
    rendered = on["before_filters"]["pairs"]
    stage_s = summaries["render"]["seconds"] / max(1, rendered)
    wall = time.perf_counter() - wall

    # --- the table ----------------------------------------------------------------------
    base = seconds["baseline"]
    before, after = on["before_filters"], on["after_filters"]
    off_before, off_after = control_off["before_filters"], control_off["after_filters"]
    filters = on["filters"]["all"]
    rows: list[tuple[str, str, str, str]] = []
    failed: list[str] = []

    def acc(part: dict[str, Any]) -> str:
        value = part["accuracy"]
        return "-" if value is None else f"{value:.3f} ({part['good']}/{part['pairs']})"

    def bar_row(measure: str, value: float | None, shown: str, bar: float) -> None:
        ratio = "-" if value is None else f"{value / bar:.2f}"
        rows.append((measure, shown, f">= {bar:.2f}", ratio))
        if value is None or value < bar:
            failed.append(f"{measure}: {shown}, bar >= {bar:.2f}")

    truth_note = "the world's scene" if len(known) == len(photo_paths) else \
        f"the world's scene for {len(known)}, the oracle's reading for the rest"
    rows.append(("photos the oracle reads as drawn", f"{read_right}/{len(known)}", "-", "-"))
    guidance = f"guidance {opts.guidance[0]:g}-{opts.guidance[1]:g}"
    ef = methods[opts.inversion]
    bar_row(f"inversion {opts.inversion} ({guidance}): same scene", ef["share"],
            f"{ef['share']:.3f} ({ef['same']}/{ef['photos']})", BARS["inversion"])
    rows.append((f"  {opts.inversion}: PSNR mean / min, dB",
                 f"{ef['psnr_mean']:.2f} / {ef['psnr_min']:.2f}", "-", "-"))
    for name, result in methods.items():
        if name == opts.inversion:
            continue
        rows.append((f"inversion {name} ({guidance}): same scene",
                     f"{result['share']:.3f} ({result['same']}/{result['photos']})",
                     f"{ef['share']:.3f} ({opts.inversion})",
                     f"{result['share'] / ef['share']:.2f}" if ef["share"] else "-"))
        rows.append((f"  {name}: PSNR mean / min, dB",
                     f"{result['psnr_mean']:.2f} / {result['psnr_min']:.2f}",
                     f"{ef['psnr_mean']:.2f} / {ef['psnr_min']:.2f}", "-"))
    bar_row("pairs before filtering", before["accuracy"], acc(before), BARS["before"])
    bar_row("pairs after filtering", after["accuracy"], acc(after), BARS["after"])
    rows.append(("kept by the filters (of rendered)", f"{after['pairs']}/{before['pairs']}",
                 "-", f"{after['pairs'] / before['pairs']:.2f}" if before["pairs"] else "-"))
    rows.append(("filters' recall (good pairs kept)", "-" if filters["recall"] is None
                 else f"{filters['recall']:.3f} ({filters['kept_good']}/{filters['good']})",
                 "-", "-"))
    for measure, value, with_control in (
            ("control off: pairs before filtering", off_before, before),
            ("control off: pairs after filtering", off_after, after)):
        ratio = "-" if not value["accuracy"] or not with_control["accuracy"] else \
            f"{value['accuracy'] / with_control['accuracy']:.2f}"
        rows.append((measure, acc(value), f"{acc(with_control)} (control on)", ratio))
    drop = (before["accuracy"] or 0) - (off_before["accuracy"] or 0)
    if drop < BARS["control drop"]:
        failed.append(f"control off: pairs before filtering fell {drop:.3f}, bar >= "
                      f"{BARS['control drop']:.2f}")
    rows.append(("s/pair: diffusers pipeline, 2 captions (baseline)", f"{base:.4f}", "-",
                 "1.00"))
    rows.append(("s/pair: photo renderer (inversion included)", f"{seconds['photo']:.4f}",
                 f"{base:.4f}", f"{seconds['photo'] / base:.2f}"))
    rows.append((f"s/pair: inversion alone ({opts.inversion})", f"{seconds['inversion']:.4f}",
                 f"{base:.4f}", f"{seconds['inversion'] / base:.2f}"))
    rows.append(("s/pair: render stage in the run (loading, PNGs)", f"{stage_s:.4f}",
                 f"{base:.4f}", f"{stage_s / base:.2f}"))

    print(f"photos in, judged by the oracle: {args.recipe} {' '.join(args.overrides)}".rstrip())
    print(f"photos={len(photo_paths)} pairs={rendered} model={opts.model} steps={opts.steps} "
          f"size={opts.width} guidance={opts.guidance[0]:g}-{opts.guidance[1]:g} "
          f"samples={opts.samples} timing: {len(sample)} triplets x {repeat} rounds; "
          f"truth: {truth_note}")
    print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s); wall {wall:.0f} s")
    widths = [max(len(r[i]) for r in rows + [("measure", "value", "bar/baseline", "ratio")])
              for i in range(4)]
    header = ("measure", "value", "bar/baseline", "ratio")
    print(f"{header[0]:{widths[0]}}  " + "  ".join(f"{h:>{w}}" for h, w in
                                                   zip(header[1:], widths[1:])))
    for row in rows:
        print(f"{row[0]:{widths[0]}}  " + "  ".join(f"{c:>{w}}" for c, w in
                                                    zip(row[1:], widths[1:])))
    kinds = ", ".join(f"{k} {v['accuracy']:.2f} ({v['pairs']})" for k, v in
                      on["by_kind"].items() if v["accuracy"] is not None)
    print(f"pairs before filtering by edit kind: {kinds}")
    reasons = ", ".join(f"{r} {n}" for r, n in list(on["reasons"].items())[:5])
    print(f"commonest reasons: {reasons or '-'}")
    for line in failed:
        print(f"BAR FAILED: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
