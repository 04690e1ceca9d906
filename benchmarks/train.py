"""Step time and peak memory of the trainers: full fine-tune, LoRA, LoRA + 8-bit AdamW.

Same data, same size, same steps. Each configuration trains in a fresh process so its peak
memory is its own: CUDA max allocated on a GPU, the process's peak RSS on the CPU, printed
beside the trainer's own memory estimate. The table gives ratios against the full fine-tune
(the plain diffusers InstructPix2Pix recipe) measured in the same run, or against the first
configuration when `--configs` leaves the full fine-tune out.

    python benchmarks/train.py                         # tiny models, CPU, seconds
    python benchmarks/train.py --model sd15-shaped --resolution 512 --mixed-precision fp16
        # an SD-1.5-sized InstructPix2Pix (random weights: same shapes, memory and speed)
    python benchmarks/train.py --model sdxl-shaped --resolution 1024 --batch-size 1 \
        --mixed-precision fp16 --gradient-checkpointing --configs lora-8bit
        # an SDXL-sized InstructPix2Pix (random weights; a GPU: 14 GB written to the disk)
    python benchmarks/train.py --model sdxl-shaped --resolution 1024 --batch-size 1 \
        --mixed-precision fp16 --gradient-checkpointing --estimate-only
        # the trainer's memory estimate only: the model built on the meta device, in seconds
    python benchmarks/train.py --model shapes-sd --resolution 64 --batch-size 32 --rank 64 \
        --steps 20 --targets to_q,to_k,to_v,to_out.0,conv1,conv2,conv_shortcut,time_emb_proj,\
proj_in,proj_out --attention plain          # the shapes recipe's editor

The flow editors (FLUX.1 Kontext, FLUX.2 klein 4B / 9B, Qwen-Image-Edit) by the flow trainer's
memory planner, their configurations being option sets (nf4 / int8 / bf16 base, optimizer,
checkpointing): the plan of each from the real configs, and on a GPU a measured step of the
real-size transformer (random weights, the LoRA on the family's default layers, random packed
inputs of the real token counts) with CUDA's max allocated beside the plan's step estimate
(its transformer, LoRA, optimizer and activations; no text encoders or VAE are built).

    python benchmarks/train.py --model kontext-sized --resolution 1024 --batch-size 1 \
        --mixed-precision bf16 --estimate-only        # the planner's tables, in seconds
    python benchmarks/train.py --model klein-4b-sized --resolution 1024 --batch-size 1 \
        --mixed-precision bf16 --steps 4 --configs nf4,bf16   # measured on a GPU
    python benchmarks/train.py --model qwen-edit-sized --dry   # the same on a CPU, tiny
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CONFIGS = {  # id: (label, trainer, options)
    "full": ("full", "instruct-pix2pix", {}),
    "lora": ("lora", "lora", {"optimizer": "adamw"}),
    "lora-8bit": ("lora + adamw8bit", "lora", {"optimizer": "adamw8bit"}),
    # the LoRA trained as the weights' difference, exported as factors (training.delta)
    "lora-delta": ("lora, delta", "lora", {"optimizer": "adamw", "parametrization": "delta"}),
}


def trainer_options(args: argparse.Namespace, config: str, base: str) -> tuple[str, Any, Any]:
    """(trainer name, trainer class, its validated options) of one configuration."""
    from editkit.plugin.registry import registry

    _, use, extra = CONFIGS[config]
    cls = registry().get("trainer", use).cls
    options = dict(base=base, resolution=args.resolution, steps=args.steps,
                   batch_size=args.batch_size, mixed_precision=args.mixed_precision,
                   gradient_checkpointing=args.gradient_checkpointing,
                   checkpoint_every=args.steps, validation_images=0, min_8bit_size=4096,
                   **extra)
    if use == "lora":
        options["rank"] = args.rank
        if args.targets:
            options["target_modules"] = args.targets.split(",")
    if args.attention:
        options["attention"] = args.attention
    return use, cls, cls.Options(**options)


def worker(args: argparse.Namespace) -> None:
    """One configuration, in its own process; prints its result as JSON."""
    from editkit.plugin.kinds import TrainJob
    from editkit.testing.pairs import make_pair_dataset

    _, cls, options = trainer_options(args, args.worker, args.base)
    work = Path(args.work)
    size = (args.resolution, args.resolution)
    data = make_pair_dataset(work / "data", count=max(4, args.batch_size * 2), size=size)
    result = cls(options).train(TrainJob(dataset_dir=data, output_dir=work / args.worker,
                                         seed=0))
    print("RESULT " + json.dumps(result))


def estimate_only(args: argparse.Namespace, configs: list[str]) -> None:
    """The trainer's memory estimate of each configuration on a GPU, nothing trained: a shaped
    model is built on the meta device (no weights, no time), any other model is loaded; the
    LoRA is attached as the trainer attaches it and the trainer's `size()` counts."""
    import time

    from accelerate import init_empty_weights
    from peft import LoraConfig

    from editkit.models.families import family_named
    from editkit.testing.shaped import SHAPED, shaped_parts
    from editkit.training import memory
    from editkit.training.delta import add_deltas
    from editkit.training.editor import EditTask
    from editkit.training.unet import Components, load_components

    print(f"model {args.model}, {args.resolution} px, batch {args.batch_size}, mixed precision "
          f"{args.mixed_precision}, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}; the trainer's estimate on a GPU")
    print(f"{'config':<18} {'trained':>13} {'estimate GiB':>13}  parts")
    for config in configs:
        start = time.perf_counter()
        use, _, options = trainer_options(args, config, args.model)
        with init_empty_weights():
            if args.model in SHAPED:
                family = family_named("sd" if args.model == "sd15-shaped" else "sdxl")
                parts = Components(ref=None, tokenizer=None, noise_scheduler=None,
                                   family=family, **shaped_parts(args.model))
            else:
                parts = load_components(args.model, edit=True)
            unet = parts.unet
            if use == "lora":
                unet.requires_grad_(False)
                if options.parametrization == "delta":
                    add_deltas(unet, list(options.target_modules), options.rank)
                else:
                    unet.add_adapter(LoraConfig(r=options.rank,
                                                lora_alpha=options.alpha or options.rank,
                                                target_modules=list(options.target_modules)))
                unet.conv_in.requires_grad_(parts.widened if options.train_conv_in is None
                                            else options.train_conv_in)
            else:
                unet.requires_grad_(True)
        task = EditTask(options, Path("."), Path("."), 0,
                        lora=options if use == "lora" else None)
        task.parts = parts
        size = task.size()
        parts_gib = memory.estimate(size, options, cpu=False)
        shown = memory.describe(parts_gib).split("(", 1)[1].rstrip(")")
        print(f"{CONFIGS[config][0]:<18} {size.trainable:>13,} "
              f"{parts_gib['total'] / memory.GIB:>13.3f}  {shown} "
              f"[{time.perf_counter() - start:.1f} s]")


# --- the flow editors ---------------------------------------------------------------------

FLOW_MODELS = {"kontext-sized": "black-forest-labs/FLUX.1-Kontext-dev",
               "klein-4b-sized": "black-forest-labs/FLUX.2-klein-4B",
               "klein-9b-sized": "black-forest-labs/FLUX.2-klein-9B",
               "qwen-edit-sized": "Qwen/Qwen-Image-Edit-2509"}
FLOW_CONFIGS = {  # id: (label, flow trainer options)
    "nf4": ("nf4 + adamw8bit", {"quantize": "nf4", "optimizer": "adamw8bit",
                                "gradient_checkpointing": True}),
    "int8": ("int8 + adamw8bit", {"quantize": "int8", "optimizer": "adamw8bit",
                                  "gradient_checkpointing": True}),
    "bf16": ("bf16 + adamw8bit", {"quantize": "none", "optimizer": "adamw8bit",
                                  "gradient_checkpointing": True}),
    "bf16-full": ("bf16 + adamw", {"quantize": "none", "optimizer": "adamw",
                                   "gradient_checkpointing": False}),
}
# --dry: the family's transformer with two blocks of two 32-wide heads, at 64 px
DRY_TRANSFORMER = {"FluxTransformer2DModel": {"num_layers": 1, "num_single_layers": 1,
                                              "axes_dims_rope": [4, 14, 14]},
                   "Flux2Transformer2DModel": {"num_layers": 1, "num_single_layers": 1,
                                               "axes_dims_rope": [8, 8, 8, 8]},
                   "QwenImageTransformer2DModel": {"num_layers": 2,
                                                   "axes_dims_rope": [8, 12, 12]}}


def flow_options(args: argparse.Namespace, config: str) -> Any:
    from editkit.training.flow import FlowLoraOptions

    extra = dict(FLOW_CONFIGS[config][1])
    if args.targets:
        extra["target_modules"] = args.targets.split(",")
    return FlowLoraOptions(resolution=args.resolution, batch_size=args.batch_size,
                           rank=args.rank, mixed_precision=args.mixed_precision,
                           min_8bit_size=4096, **extra)


def flow_model(args: argparse.Namespace, work: Path) -> Any:
    """The planner's model: the real configs, or with --dry a tiny transformer of the family
    (its configs written to `work`, the other parts kept at their real sizes)."""
    from editkit.training import planner

    ref = FLOW_MODELS[args.model]
    if not args.dry:
        return planner.flow_model(ref)
    shipped = planner.SHIPPED[ref]
    index = {"_class_name": shipped["_class_name"]}
    parts = {name: part for name, part in shipped.items() if name != "_class_name"}
    for name, (library, cls, config) in parts.items():
        if name == "transformer":
            config = {**config, "num_attention_heads": 2, "attention_head_dim": 32,
                      **DRY_TRANSFORMER[cls]}
        (work / name).mkdir(parents=True, exist_ok=True)
        (work / name / "config.json").write_text(json.dumps({"_class_name": cls, **config}))
        index[name] = [library, cls]
    (work / "model_index.json").write_text(json.dumps(index))
    return planner.flow_model(work)


def step_estimate(plan: Any) -> float:
    """The plan's bytes of what the benchmark builds: transformer, LoRA, optimizer, activations
    (not the text encoders, the VAE, nor CUDA's context, which max allocated does not see)."""
    return sum(v for k, v in plan.training.items() if k not in ("VAE", "text encoders"))


def flow_estimate_only(args: argparse.Namespace, configs: list[str]) -> None:
    """The planner's table of each configuration, then one line each in the script's table."""
    import time

    from editkit.training import planner

    with tempfile.TemporaryDirectory(prefix="editkit-bench-") as tmp:
        model = flow_model(args, Path(tmp))
    rows = []
    for config in configs:
        start = time.perf_counter()
        plan = planner.plan(model, flow_options(args, config))
        print("\n".join(planner.describe(plan)))
        rows.append((config, plan, time.perf_counter() - start))
    print(f"model {args.model}, {args.resolution} px, batch {args.batch_size}, mixed precision "
          f"{args.mixed_precision}; the planner's estimate on a GPU")
    print(f"{'config':<18} {'trained':>13} {'estimate GiB':>13}  parts")
    for config, plan, seconds in rows:
        shown = planner.summary(plan.parts()).split("(", 1)[1].rstrip(")")
        print(f"{FLOW_CONFIGS[config][0]:<18} {plan.lora_params:>13,} "
              f"{plan.total / planner.GIB:>13.3f}  {shown} [{seconds:.1f} s]")


def flow_inputs(model: Any, transformer: Any, batch: int, side: int, device: Any) -> dict:
    """Random packed inputs as the family's pipeline makes them for an edit: the noisy
    latents' tokens and as many of the image to edit, the text's tokens."""
    import torch

    image, text = side * side, model.text_tokens
    config = transformer.config
    inputs = dict(hidden_states=torch.randn(batch, 2 * image, config.in_channels),
                  encoder_hidden_states=torch.randn(batch, text, config.joint_attention_dim),
                  timestep=torch.full((batch,), 0.5))
    if model.transformer_class == "QwenImageTransformer2DModel":
        inputs.update(encoder_hidden_states_mask=torch.ones(batch, text, dtype=torch.bool),
                      img_shapes=[[(1, side, side), (1, side, side)]] * batch)
    else:
        axes = len(config.axes_dims_rope)
        inputs.update(img_ids=torch.zeros(2 * image, axes), txt_ids=torch.zeros(text, axes))
        if model.transformer_class == "FluxTransformer2DModel":
            inputs["pooled_projections"] = torch.randn(batch, config.pooled_projection_dim)
        if config.guidance_embeds:
            inputs["guidance"] = torch.full((batch,), 3.5)
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def flow_worker(args: argparse.Namespace) -> None:
    """One configuration in its own process: the transformer at the model's size with random
    weights (16-bit, or quantized layer by layer onto the device), the LoRA as the flow trainer
    adds it, a few steps; prints its result as JSON."""
    import time

    import diffusers
    import torch
    from peft import LoraConfig

    from editkit.training import planner
    from editkit.training.optim import make_optimizer
    from editkit.training.quantize import quantize

    device = torch.device("cuda" if _cuda() else "cpu")
    options = flow_options(args, args.flow_worker)
    model = flow_model(args, Path(args.work) / "configs")
    plan = planner.plan(model, options, cpu=device.type == "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cls = getattr(diffusers, model.transformer_class)
    config = json.loads((Path(args.work) / "configs" / "transformer" / "config.json").read_text()
                        ) if args.dry else planner.SHIPPED[FLOW_MODELS[args.model]]["transformer"][2]
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device if options.quantize == "none" else "cpu"):
        transformer = cls.from_config(config)
    torch.set_default_dtype(torch.float32)
    transformer.requires_grad_(False)
    if options.quantize != "none":
        quantize(transformer, options.quantize, torch.bfloat16, device)
    transformer.add_adapter(LoraConfig(r=options.rank, lora_alpha=options.rank,
                                       init_lora_weights="gaussian",
                                       target_modules=list(options.target_modules
                                                           or model.default_targets)))
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if options.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    optimizer, _ = make_optimizer(params, options, device.type, lambda _: None)
    side = options.resolution // model.pixels_per_token
    inputs = flow_inputs(model, transformer, options.batch_size, side, device)
    times = []
    for _ in range(args.steps):
        tick = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = transformer(**inputs).sample
        out[:, : side * side].float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - tick)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    steady = sorted(times[1:] or times)
    print("RESULT " + json.dumps({"seconds_per_step": steady[len(steady) // 2],
                                  "peak_memory_gib": peak / planner.GIB,
                                  "memory_estimate_gib": step_estimate(plan) / planner.GIB}))


def flow_main(args: argparse.Namespace) -> None:
    """The flow editors' rows: each configuration trained a few steps in a fresh process."""
    configs = [c.strip() for c in args.configs.split(",") if c.strip()] \
        if args.configs != ",".join(CONFIGS) else ["nf4", "bf16"]
    unknown = [c for c in configs if c not in FLOW_CONFIGS]
    if unknown or not configs:
        sys.exit(f"--configs: {', '.join(unknown) or 'none given'}; for the flow editors "
                 f"choose from {', '.join(FLOW_CONFIGS)}")
    if args.dry:
        args.resolution, args.steps = 64, min(args.steps, 3)
    if args.estimate_only:
        flow_estimate_only(args, configs)
        return
    with tempfile.TemporaryDirectory(prefix="editkit-bench-") as tmp:
        def command(config: str) -> list[str]:
            return [sys.executable, __file__, "--model", args.model, "--flow-worker", config,
                    "--work", tmp, "--resolution", str(args.resolution), "--steps",
                    str(args.steps), "--batch-size", str(args.batch_size), "--rank",
                    str(args.rank), "--mixed-precision", args.mixed_precision, "--targets",
                    args.targets] + (["--dry"] if args.dry else [])

        rows = run_rounds(args, configs, command, Path(tmp))
    print_rows(args, {c: (FLOW_CONFIGS[c][0], r) for c, r in rows.items()}, configs[0],
               "memory = CUDA max allocated, estimate = the plan's transformer, LoRA, "
               "optimizer and activations" if _cuda() else "memory = peak RSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-ip2p",
                        help="a model reference, or sd15-shaped / sdxl-shaped (SD 1.5's / SDXL "
                        "1.0's shapes as an 8-channel editor, random weights), or a flow "
                        f"editor's size: {', '.join(FLOW_MODELS)} (the flow trainer's "
                        "planner; random weights)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--targets", default="", help="LoRA target modules, comma-separated "
                        "[the trainer's default: attention]; the shapes recipe's: "
                        "to_q,to_k,to_v,to_out.0,conv1,conv2,conv_shortcut,time_emb_proj,"
                        "proj_in,proj_out")
    parser.add_argument("--attention", choices=["sdpa", "plain"], default=None,
                        help="the trainers' attention option [sdpa]")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"configurations, comma-separated, of {', '.join(CONFIGS)} [all]; "
                        f"for the flow editors of {', '.join(FLOW_CONFIGS)} [nf4,bf16]")
    parser.add_argument("--dry", action="store_true",
                        help="flow editors: a two-block transformer of the family at 64 px, "
                        "a few steps on any device (tests the benchmark end to end)")
    parser.add_argument("--estimate-only", action="store_true",
                        help="print the trainer's memory estimate of each configuration (on a "
                        "GPU) and train nothing")
    parser.add_argument("--repeats", type=int, default=1,
                        help="interleaved rounds; each configuration's fastest is reported")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--flow-worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.flow_worker:
        flow_worker(args)
        return
    if args.model in FLOW_MODELS:
        flow_main(args)
        return
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        parser.error(f"--configs: {', '.join(unknown) or 'none given'}; choose from "
                     f"{', '.join(CONFIGS)}")
    if args.estimate_only:
        estimate_only(args, configs)
        return
    with tempfile.TemporaryDirectory(prefix="editkit-bench-") as tmp:
        base = args.model
        if base in ("sd15-shaped", "sdxl-shaped"):
            from editkit.testing.shaped import build_shaped

            base = str(build_shaped(base, Path(tmp) / base, "cuda" if _cuda() else "cpu"))

        def command(config: str) -> list[str]:
            cmd = [sys.executable, __file__, "--worker", config, "--work", tmp, "--base", base,
                   "--resolution", str(args.resolution), "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--rank", str(args.rank),
                   "--mixed-precision", args.mixed_precision, "--targets", args.targets]
            if args.attention:
                cmd += ["--attention", args.attention]
            if args.gradient_checkpointing:
                cmd.append("--gradient-checkpointing")
            return cmd

        rows = run_rounds(args, configs, command, Path(tmp))
    where = "CUDA max allocated" if _cuda() else "peak RSS"
    print_rows(args, {c: (CONFIGS[c][0], r) for c, r in rows.items()},
               "full" if "full" in rows else configs[0],
               f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; "
               f"memory = {where}")


def run_rounds(args: argparse.Namespace, configs: list[str], command: Any,
               work: Path) -> dict[str, dict]:
    """Each configuration in a fresh process (`command(config)`), in `args.repeats`
    interleaved rounds; the fastest round of each."""
    rows: dict[str, dict] = {}
    for config in [c for _ in range(args.repeats) for c in configs]:
        done = subprocess.run(command(config), capture_output=True, text=True)
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode or not line:
            sys.exit(f"{config} failed:\n{done.stderr[-2000:]}")
        result = json.loads(line[0][7:])
        # rounds interleave the configurations; the fastest round of each is kept, so a
        # burst of load on a shared machine does not land on one configuration only
        if config not in rows or \
                result["seconds_per_step"] < rows[config]["seconds_per_step"]:
            rows[config] = result
        shutil.rmtree(work / config, ignore_errors=True)
    return rows


def print_rows(args: argparse.Namespace, rows: dict[str, tuple[str, dict]], ref: str,
               setting: str) -> None:
    """The table: step time and peak memory, each against `ref`'s, and the estimate."""
    print(f"model {args.model}, {args.resolution} px, batch {args.batch_size}, "
          f"{args.steps} steps (median), best of {args.repeats}, mixed precision "
          f"{args.mixed_precision}, {setting}")
    against = f"x {rows[ref][0]}"[:8]
    base = rows[ref][1]
    print(f"{'config':<18} {'s/step':>9} {against:>8} {'peak GiB':>9} {against:>8} "
          f"{'estimate GiB':>13} {'est/peak':>9}")
    for label, r in rows.values():
        print(f"{label:<18} {r['seconds_per_step']:>9.4f} "
              f"{r['seconds_per_step'] / base['seconds_per_step']:>8.2f} "
              f"{r['peak_memory_gib']:>9.3f} "
              f"{r['peak_memory_gib'] / base['peak_memory_gib']:>8.2f} "
              f"{r['memory_estimate_gib']:>13.3f} "
              f"{r['memory_estimate_gib'] / r['peak_memory_gib']:>9.2f}")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
