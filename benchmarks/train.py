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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-ip2p",
                        help="a model reference, or sd15-shaped / sdxl-shaped (SD 1.5's / SDXL "
                        "1.0's shapes as an 8-channel editor, random weights)")
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
                        help=f"configurations, comma-separated, of {', '.join(CONFIGS)} [all]")
    parser.add_argument("--estimate-only", action="store_true",
                        help="print the trainer's memory estimate of each configuration (on a "
                        "GPU) and train nothing")
    parser.add_argument("--repeats", type=int, default=1,
                        help="interleaved rounds; each configuration's fastest is reported")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
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
        rows: dict[str, dict] = {}
        for config in [c for _ in range(args.repeats) for c in configs]:
            cmd = [sys.executable, __file__, "--worker", config, "--work", tmp, "--base", base,
                   "--resolution", str(args.resolution), "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--rank", str(args.rank),
                   "--mixed-precision", args.mixed_precision, "--targets", args.targets]
            if args.attention:
                cmd += ["--attention", args.attention]
            if args.gradient_checkpointing:
                cmd.append("--gradient-checkpointing")
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not line:
                sys.exit(f"{config} failed:\n{done.stderr[-2000:]}")
            result = json.loads(line[0][7:])
            # rounds interleave the configurations; the fastest round of each is kept, so a
            # burst of load on a shared machine does not land on one configuration only
            if config not in rows or \
                    result["seconds_per_step"] < rows[config]["seconds_per_step"]:
                rows[config] = result
            shutil.rmtree(Path(tmp) / config, ignore_errors=True)
    where = "CUDA max allocated" if _cuda() else "peak RSS"
    print(f"model {args.model}, {args.resolution} px, batch {args.batch_size}, "
          f"{args.steps} steps (median), best of {args.repeats}, mixed precision "
          f"{args.mixed_precision}, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}; memory = {where}")
    ref = "full" if "full" in rows else configs[0]
    against = f"x {CONFIGS[ref][0]}"[:8]
    print(f"{'config':<18} {'s/step':>9} {against:>8} {'peak GiB':>9} {against:>8} "
          f"{'estimate GiB':>13} {'est/peak':>9}")
    for config, r in rows.items():
        print(f"{CONFIGS[config][0]:<18} {r['seconds_per_step']:>9.4f} "
              f"{r['seconds_per_step'] / rows[ref]['seconds_per_step']:>8.2f} "
              f"{r['peak_memory_gib']:>9.3f} "
              f"{r['peak_memory_gib'] / rows[ref]['peak_memory_gib']:>8.2f} "
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
