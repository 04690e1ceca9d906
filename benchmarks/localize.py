"""Seconds per edit: diffusers' own `StableDiffusionInstructPix2PixPipeline` call against the
same call with `--localize`'s attention capture (and the mask made from it), on the same
model, inputs, steps and seeds, measured interleaved in one run, with the ratio.

    python benchmarks/localize.py                          # tiny-ip2p on the CPU
    python benchmarks/localize.py --sd-sized --size 256 --steps 4 --repeat 3
    python benchmarks/localize.py --sd-sized --device cuda --size 512 --steps 20

`--sd-sized` is render.py's randomly initialised Stable Diffusion 1.5-shaped model with an
8-channel (InstructPix2Pix) UNet, for timings without weights. The target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

INSTRUCTION = "turn the red car into a blue bus"


def ip2p_sized(folder: Path) -> str:
    """render.py's SD 1.5-shaped pipeline with an InstructPix2Pix UNet (8 input channels)."""
    from diffusers import (
        StableDiffusionInstructPix2PixPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    sys.path.insert(0, str(Path(__file__).parent))
    from render import sd_sized

    sd = StableDiffusionPipeline.from_pretrained(sd_sized(folder / "sd"))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, in_channels=8)
    pipe = StableDiffusionInstructPix2PixPipeline(
        **{**sd.components, "unet": unet}, requires_safety_checker=False)
    pipe.save_pretrained(folder / "ip2p", safe_serialization=True)
    return str(folder / "ip2p")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-ip2p")
    parser.add_argument("--sd-sized", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from editkit.diffusion.localize import edit_with_maps, instruction_words, localize_mask
    from editkit.models.editors import load_edit_pipeline

    torch.set_num_threads(args.threads)
    model = ip2p_sized(Path(tempfile.mkdtemp())) if args.sd_sized else args.model
    pipe, _ = load_edit_pipeline(model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    width, height = args.size, args.size * 3 // 4 // 8 * 8  # a 4:3 photo
    images = [Image.new("RGB", (width, height), (40 * i, 120, 200)) for i in range(args.batch)]
    words = instruction_words(INSTRUCTION)

    def generators() -> list:
        return [torch.Generator("cpu").manual_seed(i) for i in range(args.batch)]

    def baseline() -> None:
        pipe([INSTRUCTION] * args.batch, image=images, num_inference_steps=args.steps,
             generator=generators())

    def ours() -> None:
        _, maps, _ = edit_with_maps(pipe, INSTRUCTION, images, words, args.steps,
                                    generator=generators())
        localize_mask(maps, (width, height))

    cases: dict[str, Callable[[], None]] = {"diffusers pipeline (baseline)": baseline,
                                            "--localize (capture + mask)": ours}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm up
    for _ in range(args.repeat):
        for name, fn in cases.items():
            if pipe.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if pipe.device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / args.batch)
    base = statistics.median(times["diffusers pipeline (baseline)"])
    print(f"model={'sd-sized (random)' if args.sd_sized else args.model} device={pipe.device} "
          f"steps={args.steps} size={width}x{height} batch={args.batch} repeat={args.repeat} "
          f"words={','.join(words)}")
    print(f"{'mode':32} {'s/edit':>8} {'ratio':>7}")
    for name, values in times.items():
        value = statistics.median(values)
        print(f"{name:32} {value:8.4f} {value / base:7.2f}")


if __name__ == "__main__":
    main()
