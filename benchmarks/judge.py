"""What judging costs: seconds per held-out case for diffusers' own
`StableDiffusionInstructPix2PixPipeline` call on the shapes judge's held-out images (the
baseline; a LoRA editor loaded by `load_lora_weights` and left unfused, diffusers' default)
against `editkit.evaluation.judging.judge_editors` (the same edits through the evaluate stage's loading
and batching, which merges a LoRA into the base weights, plus the oracle's verdict and the
saved PNG), and seconds per rendered pair for the oracle's pair verdict, all measured
interleaved in one run, with ratios.

    python benchmarks/judge.py                         # tiny-ip2p on the CPU
    python benchmarks/judge.py --model runs/shapes --steps 20 --cases 32

The target: judged edits cost what the plain pipeline costs (ratio <= 1.10); a pair verdict
is a small fraction of one edit.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-ip2p")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from editkit.builtins.shapes.captions import scene_from_dict
    from editkit.builtins.shapes.judge import ShapesJudge
    from editkit.builtins.shapes.world import draw
    from editkit.evaluation.judging import judge_editors
    from editkit.evaluation.settings import EvalSettings
    from editkit.models.editors import load_edit_pipeline

    torch.set_num_threads(args.threads)
    judge = ShapesJudge()
    cases = judge.held_out(args.cases, seed=0)
    images = [c.image.resize((args.size, args.size)) for c in cases]
    settings = EvalSettings(steps=args.steps, resolution=args.size, batch_size=4, seed=0,
                            device=args.device)
    pipe, spec = load_edit_pipeline(args.model, device=args.device)
    if spec.lora is not None:
        pipe.unfuse_lora()  # diffusers' default: the LoRA layers run beside the base weights
    pipe.set_progress_bar_config(disable=True)
    out = Path(tempfile.mkdtemp()) / "judge"
    pairs = [({**c.truth, "id": str(i)}, c.image, draw(scene_from_dict(c.truth["scene_after"])))
             for i, c in enumerate(cases)]

    def baseline() -> None:
        for start in range(0, len(cases), settings.batch_size):
            chunk = slice(start, start + settings.batch_size)
            pipe([c.instruction for c in cases[chunk]], image=images[chunk],
                 num_inference_steps=args.steps,
                 generator=[torch.Generator("cpu").manual_seed(0) for _ in images[chunk]])

    def judged() -> None:
        judge_editors([args.model], [args.model], cases, judge, out, settings)

    def pair_verdicts() -> None:
        for record, before, after in pairs:
            judge.pair(record, before, after)

    cases_fns = {"diffusers pipeline (baseline)": baseline, "judged edits": judged,
                 "pair verdicts (oracle)": pair_verdicts}
    times: dict[str, list[float]] = {name: [] for name in cases_fns}
    for fn in cases_fns.values():
        fn()  # warm up
    for _ in range(args.repeat):
        for name, fn in cases_fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / len(cases))
    base = statistics.median(times["diffusers pipeline (baseline)"])
    print(f"model={args.model} device={args.device} steps={args.steps} size={args.size} "
          f"cases={len(cases)} repeat={args.repeat} threads={args.threads}")
    print(f"{'mode':32} {'s/case':>8} {'ratio':>7}")
    for name, values in times.items():
        value = statistics.median(values)
        print(f"{name:32} {value:8.4f} {value / base:7.3f}")


if __name__ == "__main__":
    main()
