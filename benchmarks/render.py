"""Seconds per pair: plain batched generation of the two prompts with diffusers' own
`StableDiffusionPipeline` (prompt=[before, after], same model, steps, size and guidance)
against each of our renderer modes, measured interleaved in one run, with the ratio.

    python benchmarks/render.py                      # tiny-sd on the CPU
    python benchmarks/render.py --model tiny-sd --steps 20 --size 64 --repeat 7
    python benchmarks/render.py --sd-sized --device cuda --size 512 --steps 50

`--sd-sized` builds a randomly initialised model with Stable Diffusion 1.5's layout and
sizes (UNet 860M, CLIP ViT-L text encoder, VAE) in memory, for GPU timings without weights.
The target: median ratio <= 1.15.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

BEFORE = "a photo of a red car and a tree on a quiet street"
AFTER = "a photo of a blue car and a tree on a quiet street"
LONGER = "a photo of a blue car and a small tree on a quiet street"


def sd_sized(folder: Path) -> str:
    """A Stable Diffusion 1.5-shaped pipeline with random weights, saved to `folder`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from editkit.testing import build_tiny_tokenizer

    torch.manual_seed(0)
    build_tiny_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768,
                                        intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77,
                                        bos_token_id=len(tokenizer) - 2,
                                        eos_token_id=len(tokenizer) - 1,
                                        pad_token_id=len(tokenizer) - 1))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                        sample_size=512)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return str(folder)


def modes(common: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """name -> (renderer, options, triplet)."""
    swap = {"id": "000000", "input": BEFORE, "output": AFTER, "words": ["blue"],
            "region": "foreground"}
    grow = {**swap, "output": LONGER, "words": ["blue", "small"]}
    p2p, blend = "prompt-to-prompt", "masked-blend"
    return {
        "p2p inject (0.1-0.9)": (p2p, common, swap),
        "p2p inject (all steps)": (p2p, {**common, "self_fraction": (1.0, 1.0)}, swap),
        "p2p replace": (p2p, {**common, "cross": "replace"}, swap),
        "p2p refine": (p2p, {**common, "cross": "refine"}, grow),
        "p2p reweight": (p2p, {**common, "edited_scale": 2.0}, swap),
        "p2p replace + local blend": (p2p, {**common, "cross": "replace",
                                            "local_blend": True}, swap),
        "masked-blend words": (blend, common, swap),
        "masked-blend foreground": (blend, {**common, "mask": "foreground"}, swap),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--sd-sized", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionPipeline

    from editkit.diffusion.renderer import PairRenderer
    from editkit.plugin.kinds import RenderJob
    from editkit.plugin.registry import registry

    torch.set_num_threads(args.threads)
    model = sd_sized(Path(tempfile.mkdtemp())) if args.sd_sized else args.model
    common = dict(model=model, samples=args.samples, steps=args.steps, width=args.size,
                  height=args.size, guidance=(7.5, 7.5), device=args.device, dtype=args.dtype)
    renderers: dict[str, PairRenderer] = {}
    triplets: dict[str, dict[str, Any]] = {}
    plugins = registry().plugins
    shared = None
    for name, (use, options, triplet) in modes(common).items():
        cls = next(p.cls for p in plugins.values() if p.name == use and p.kind == "renderer")
        renderers[name] = cls(cls.Options(**options))
        if shared is None:
            shared = renderers[name].pipeline()
        renderers[name]._pipe = shared  # one copy of the weights for every mode
        triplets[name] = triplet
    pipe: StableDiffusionPipeline = shared

    def baseline() -> None:
        generator = torch.Generator("cpu").manual_seed(0)
        pipe(prompt=[BEFORE, AFTER], num_images_per_prompt=args.samples,
             num_inference_steps=args.steps, height=args.size, width=args.size,
             guidance_scale=7.5, generator=generator)

    def ours(name: str) -> Callable[[], None]:
        return lambda: list(renderers[name].render(RenderJob(triplets=[triplets[name]], seed=0)))

    cases: dict[str, Callable[[], None]] = {"diffusers pipeline (baseline)": baseline}
    cases.update({name: ours(name) for name in renderers})
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
            times[name].append((time.perf_counter() - start) / args.samples)
    base = statistics.median(times["diffusers pipeline (baseline)"])
    print(f"model={'sd-sized (random)' if args.sd_sized else args.model} device={pipe.device} "
          f"steps={args.steps} size={args.size} samples={args.samples} repeat={args.repeat}")
    print(f"{'mode':32} {'s/pair':>8} {'ratio':>7}")
    ratios = []
    for name, values in times.items():
        value = statistics.median(values)
        ratio = value / base
        if name != "diffusers pipeline (baseline)":
            ratios.append(ratio)
        print(f"{name:32} {value:8.4f} {ratio:7.2f}")
    print(f"{'median ratio of our modes':32} {'':8} {statistics.median(ratios):7.2f}")


if __name__ == "__main__":
    main()
