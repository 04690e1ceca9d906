"""Step time and peak memory of the trainers: full fine-tune, LoRA, LoRA + 8-bit AdamW.

Same data, same size, same steps. Each configuration trains in a fresh process so its peak
memory is its own: CUDA max allocated on a GPU, the process's peak RSS on the CPU. The table
gives ratios against the full fine-tune (the plain diffusers InstructPix2Pix recipe) measured
in the same run.

    python benchmarks/train.py                         # tiny models, CPU, seconds
    python benchmarks/train.py --model sd15-shaped --resolution 512 --mixed-precision fp16
        # an SD-1.5-sized InstructPix2Pix (random weights: same shapes, memory and speed)
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

CONFIGS = {
    "full": ("instruct-pix2pix", {}),
    "lora": ("lora", {"optimizer": "adamw"}),
    "lora + adamw8bit": ("lora", {"optimizer": "adamw8bit"}),
    # the LoRA trained as the weights' difference, exported as factors (training.delta)
    "lora, delta": ("lora", {"optimizer": "adamw", "parametrization": "delta"}),
}


def build_sd15_shaped(path: Path) -> Path:
    """An InstructPix2Pix pipeline with Stable Diffusion 1.5's shapes and random weights."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from editkit.models.tiny import build_tiny_tokenizer

    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(0)
    build_tiny_tokenizer(path / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768,
                                        intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77,
                                        bos_token_id=len(tokenizer) - 2,
                                        eos_token_id=len(tokenizer) - 1))
    unet = UNet2DConditionModel(in_channels=8, out_channels=4, cross_attention_dim=768,
                                sample_size=64)  # the defaults are SD 1.x's UNet
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                        sample_size=512)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(path, safe_serialization=True)
    return path


def worker(args: argparse.Namespace) -> None:
    """One configuration, in its own process; prints its result as JSON."""
    from editkit.plugin.kinds import TrainJob
    from editkit.plugin.registry import registry
    from editkit.testing.pairs import make_pair_dataset

    use, extra = CONFIGS[args.worker]
    cls = registry().get("trainer", use).cls
    work = Path(args.work)
    size = (args.resolution, args.resolution)
    data = make_pair_dataset(work / "data", count=max(4, args.batch_size * 2), size=size)
    options = dict(base=args.base, resolution=args.resolution, steps=args.steps,
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
    trainer = cls(cls.Options(**options))
    result = trainer.train(TrainJob(dataset_dir=data, output_dir=work / args.worker.replace(
        " ", ""), seed=0))
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-ip2p",
                        help="a model reference, or sd15-shaped (SD 1.5 shapes, random weights)")
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
    parser.add_argument("--repeats", type=int, default=1,
                        help="interleaved rounds; each configuration's fastest is reported")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="editkit-bench-") as tmp:
        base = args.model
        if base == "sd15-shaped":
            base = str(build_sd15_shaped(Path(tmp) / "sd15-shaped"))
        rows: dict[str, dict] = {}
        for name in [n for _ in range(args.repeats) for n in CONFIGS]:
            cmd = [sys.executable, __file__, "--worker", name, "--work", tmp, "--base", base,
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
                sys.exit(f"{name} failed:\n{done.stderr[-2000:]}")
            result = json.loads(line[0][7:])
            # rounds interleave the configurations; the fastest round of each is kept, so a
            # burst of load on a shared machine does not land on one configuration only
            if name not in rows or result["seconds_per_step"] < rows[name]["seconds_per_step"]:
                rows[name] = result
            shutil.rmtree(Path(tmp) / name.replace(" ", ""), ignore_errors=True)
    where = "CUDA max allocated" if rows["full"].get("peak_memory_gib") is not None and \
        _cuda() else "peak RSS"
    print(f"model {args.model}, {args.resolution} px, batch {args.batch_size}, "
          f"{args.steps} steps (median), best of {args.repeats}, mixed precision {args.mixed_precision}; memory = {where}")
    full = rows["full"]
    print(f"{'config':<18} {'s/step':>9} {'x full':>7} {'peak GiB':>9} {'x full':>7} "
          f"{'estimate GiB':>13}")
    for name, r in rows.items():
        print(f"{name:<18} {r['seconds_per_step']:>9.4f} "
              f"{r['seconds_per_step'] / full['seconds_per_step']:>7.2f} "
              f"{r['peak_memory_gib']:>9.3f} {r['peak_memory_gib'] / full['peak_memory_gib']:>7.2f} "
              f"{r['memory_estimate_gib']:>13.3f}")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
