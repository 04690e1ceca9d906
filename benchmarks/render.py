"""Seconds per pair: plain batched generation of the two prompts with diffusers' own
pipeline of the model's family (`StableDiffusionPipeline` or `StableDiffusionXLPipeline`,
prompt=[before, after], same model, steps, size and guidance) against each of our renderer
modes, measured interleaved in one run, with the ratio. And the `editor` renderer (a
before-image drawn, then edited by `--editor`) against the sum of its parts with plain
diffusers calls in the same run: one text-to-image generation of the before-image by the
family's pipeline and one edit by the editor's own pipeline, same steps, guidance and size.

    python benchmarks/render.py                      # tiny-sd on the CPU
    python benchmarks/render.py --model tiny-sdxl --steps 10 --size 64
    python benchmarks/render.py --model tiny-sd --steps 20 --size 64 --repeat 7
    python benchmarks/render.py --sd-sized --device cuda --size 512 --steps 50
    python benchmarks/render.py --sdxl-sized --device cuda --size 1024 --steps 30
    python benchmarks/render.py --sdxl-sized --dry   # builds it on the meta device only
    python benchmarks/render.py --model shapes-sd --editor shapes-edit --steps 10 \
        --edit-steps 20 --image-guidance 1.5 --guidance 1.5

`--sd-sized` builds a randomly initialised model with Stable Diffusion 1.5's layout and
sizes (UNet 860M, CLIP ViT-L text encoder, VAE) in memory, for GPU timings without weights;
`--sdxl-sized` one with SDXL 1.0 base's (UNet 2.57B, CLIP ViT-L and OpenCLIP ViT-bigG text
encoders, VAE), initialised on the GPU. `--dry` builds or loads the model, says what it is
and exits without timing. The targets: median ratio <= 1.15; the editor renderer within 10%
of its parts (ratio <= 1.10).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

BEFORE = "a photo of a red car and a tree on a quiet street"
AFTER = "a photo of a blue car and a tree on a quiet street"
EDIT = "make the car blue"
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


def sdxl_sized(device: str, dtype: Any) -> Any:
    """An SDXL 1.0 base-shaped text-to-image pipeline with random weights, in memory: built on
    `device` (the meta device: its sizes only, no memory), tiny tokenizers."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    from editkit.testing import build_tiny_tokenizer
    from editkit.testing.shaped import SCHEDULER, shaped_parts

    folder = Path(tempfile.mkdtemp())
    tokenizers = {name: CLIPTokenizer.from_pretrained(build_tiny_tokenizer(folder / name))
                  for name in ("tokenizer", "tokenizer_2")}
    torch.manual_seed(0)
    with torch.device(device):
        parts = shaped_parts("sdxl-shaped", in_channels=4, tokens=len(tokenizers["tokenizer"]))
    pipe = StableDiffusionXLPipeline(
        **parts, **tokenizers, force_zeros_for_empty_prompt=True, add_watermarker=False,
        scheduler=EulerDiscreteScheduler(**SCHEDULER, timestep_spacing="leading"))
    if device != "meta":
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def describe(pipe: Any, size: int) -> str:
    """Parameters per part, and the attention layers control runs on at `size` px."""
    from editkit.diffusion.control import unet_layers
    from editkit.diffusion.sampling import latent_size
    from editkit.diffusion.word_maps import map_factor, pick_level

    parts = [(name, getattr(pipe, name, None)) for name in
             ("unet", "text_encoder", "text_encoder_2", "vae")]
    sizes = {name: sum(p.numel() for p in part.parameters()) for name, part in parts
             if part is not None}
    counts = ", ".join(f"{name} {n / 1e6:.1f}M" if n >= 1e5 else f"{name} {n / 1e3:.1f}k"
                       for name, n in sizes.items())
    layers = unet_layers(pipe.unet)
    latent_hw = latent_size(pipe, size, size)
    cross = sorted({layer.factor for layer in layers.values() if layer.cross})
    level = pick_level(layers, map_factor(latent_hw))
    return (f"{type(pipe).__name__}: {counts}; {len(layers)} attention layers, "
            f"cross-attention at factors {cross}; at {size} px latents {latent_hw}, word maps "
            f"from factor {level} "
            f"({sum(1 for x in layers.values() if x.cross and x.factor == level)} layers)")


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
    parser.add_argument("--sdxl-sized", action="store_true",
                        help="SDXL 1.0 base's shapes, random weights (times a GPU)")
    parser.add_argument("--dry", action="store_true",
                        help="build or load the model, describe it and exit")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--editor", default="tiny-ip2p",
                        help="the editor of the editor renderer's row (any editkit edit model)")
    parser.add_argument("--edit-steps", type=int, default=None,
                        help="the editor's steps (default: --steps)")
    parser.add_argument("--guidance", type=float, default=7.5,
                        help="the editor's text guidance")
    parser.add_argument("--image-guidance", type=float, default=1.5,
                        help="the editor's image guidance (InstructPix2Pix editors)")
    args = parser.parse_args()

    import torch

    from editkit.diffusion.renderer import PairRenderer
    from editkit.models import pick_device, pick_dtype
    from editkit.plugin.kinds import RenderJob
    from editkit.plugin.registry import registry

    torch.set_num_threads(args.threads)
    shared = None
    if args.sdxl_sized:
        if args.dry:
            print(describe(sdxl_sized("meta", None), args.size))
            return
        if not args.device.startswith("cuda"):
            parser.error("--sdxl-sized initialises 3.5B parameters for GPU timings: pass "
                         "--device cuda (or --dry to build it on the meta device only)")
        device = pick_device(args.device)
        shared = sdxl_sized(device, pick_dtype(device, args.dtype))
    model = sd_sized(Path(tempfile.mkdtemp())) if args.sd_sized else \
        "sdxl-sized" if args.sdxl_sized else args.model
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
    pipe = shared
    if args.dry:
        print(describe(pipe, args.size))
        return

    def baseline() -> None:
        generator = torch.Generator("cpu").manual_seed(0)
        pipe(prompt=[BEFORE, AFTER], num_images_per_prompt=args.samples,
             num_inference_steps=args.steps, height=args.size, width=args.size,
             guidance_scale=7.5, generator=generator)

    def ours(name: str) -> Callable[[], None]:
        return lambda: list(renderers[name].render(RenderJob(triplets=[triplets[name]], seed=0)))

    cases: dict[str, Callable[[], None]] = {"diffusers pipeline (baseline)": baseline}
    cases.update({name: ours(name) for name in renderers})
    editor_cases = editor_renderer(args, pipe, common)
    cases.update(editor_cases)
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
    label = "sd-sized (random)" if args.sd_sized else "sdxl-sized (random)" \
        if args.sdxl_sized else args.model
    print(f"model={label} ({type(pipe).__name__}) device={pipe.device} "
          f"steps={args.steps} size={args.size} samples={args.samples} repeat={args.repeat}")
    print(f"{'mode':32} {'s/pair':>8} {'ratio':>7}")
    ratios = []
    for name, values in times.items():
        if name in editor_cases:
            continue
        value = statistics.median(values)
        ratio = value / base
        if name != "diffusers pipeline (baseline)":
            ratios.append(ratio)
        print(f"{name:32} {value:8.4f} {ratio:7.2f}")
    print(f"{'median ratio of our modes':32} {'':8} {statistics.median(ratios):7.2f}")
    parts, whole = (statistics.median(times[name]) for name in editor_cases)
    print(f"editor renderer, editor={args.editor} "
          f"edit steps={args.edit_steps or args.steps}:")
    print(f"{'text-to-image + edit (diffusers)':32} {parts:8.4f} {1:7.2f}")
    print(f"{'editor renderer':32} {whole:8.4f} {whole / parts:7.2f}")


def editor_renderer(args: Any, pipe: Any, common: dict[str, Any]
                    ) -> dict[str, Callable[[], None]]:
    """The two cases of the editor renderer's row: its parts as plain diffusers calls (the
    text-to-image pipeline draws BEFORE, the editor's pipeline edits the images), and the
    renderer, sharing the text-to-image weights and the editor."""
    import torch

    from editkit.builtins.editor import EditorRenderer, editor_family
    from editkit.models import FLOW_FAMILIES
    from editkit.plugin.kinds import RenderJob

    steps = args.edit_steps or args.steps
    family = editor_family(args.editor)
    if family == "qwen-image-edit":
        sys.exit("--editor: Qwen-Image-Edit's pipeline takes one image a call; time it with "
                 "an InstructPix2Pix, FLUX.1 Kontext or FLUX.2 klein editor")
    flow = family in FLOW_FAMILIES
    made = EditorRenderer(EditorRenderer.Options(
        model=common["model"], editor=args.editor, samples=args.samples, width=args.size,
        height=args.size, before_steps=args.steps, before_guidance=7.5, steps=steps,
        guidance=args.guidance, device=args.device, dtype=args.dtype,
        **({} if flow else {"image_guidance": args.image_guidance})))
    made._pipe = pipe
    editor = made.editor()
    # the SDXL editor works at its default size unless told the image's (as the renderer does)
    size = {"height": args.size, "width": args.size} if flow or family == "sdxl-ip2p" else {}
    triplet = {"id": "000000", "input": BEFORE, "edit": EDIT, "output": AFTER}

    def parts() -> None:
        generator = torch.Generator("cpu").manual_seed(0)
        images = pipe(prompt=BEFORE, num_images_per_prompt=args.samples,
                      num_inference_steps=args.steps, height=args.size, width=args.size,
                      guidance_scale=7.5, generator=generator).images
        generators = [torch.Generator("cpu").manual_seed(k) for k in range(args.samples)]
        prompts = [EDIT] * args.samples
        image_guidance = {} if flow else {"image_guidance_scale": args.image_guidance}
        editor.pipe(prompt=prompts, image=images, num_inference_steps=steps,
                    guidance_scale=args.guidance, generator=generators, **size,
                    **image_guidance)

    def whole() -> None:
        list(made.render(RenderJob(triplets=[triplet], seed=0)))

    return {"text-to-image + edit (diffusers)": parts, "editor renderer": whole}


if __name__ == "__main__":
    main()
