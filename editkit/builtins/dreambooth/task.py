"""The DreamBooth loss: denoise instance images given the instance prompt, plus (prior
preservation) class images given the class prompt, so the class keeps its variety."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Callable

from editkit.errors import InputError
from editkit.run.folder import IMAGE_SUFFIXES, atomic_save_image
from editkit.training.data import BatchPlan, Row, paired_crop, to_tensor
from editkit.training.loop import seed_for
from editkit.training.memory import ModelSize
from editkit.training.tracker import Tracker
from editkit.training.unet import (
    diffusion_goal,
    diffusion_loss,
    load_components,
    lora_layers,
    lora_metadata,
)


def _trainable_container() -> Any:
    import torch

    class TextToImage(torch.nn.Module):
        """UNet and text encoder in one module, so data parallelism syncs both."""

        def __init__(self, unet: Any, text_encoder: Any):
            super().__init__()
            self.unet = unet
            self.text_encoder = text_encoder

        def forward(self, noisy: Any, timesteps: Any, input_ids: Any) -> Any:
            text = self.text_encoder(input_ids)[0]
            return self.unet(noisy, timesteps, text.to(noisy.dtype)).sample

    return TextToImage


class DreamBoothTask:
    def __init__(self, options: Any, output_dir: Path, seed: int):
        self.options = options
        self.output_dir = Path(output_dir)
        self.seed = seed

    def setup(self, accelerator: Any, weight_dtype: Any, log: Callable[[str], None]) -> None:
        import torch

        o = self.options
        self.device, self.weight_dtype, self.log = accelerator.device, weight_dtype, log
        self.tracker = Tracker(self.output_dir, log)
        self.rows = self._instance_rows()
        log(f"{len(self.rows)} instance images from {o.instance_images}")
        parts = load_components(o.base, edit=False)
        self.parts = parts
        parts.vae.requires_grad_(False).to(self.device)
        scale = 2 ** (len(parts.vae.config.block_out_channels) - 1)
        multiple = scale * (8 if o.resolution >= 128 else 4)
        self.square = (o.resolution // multiple * multiple,) * 2
        self.class_rows: list[Row] = []
        if o.prior_preservation:
            if accelerator.is_main_process:
                self._make_class_images()
            accelerator.wait_for_everyone()
            folder = self.output_dir / "class_images"
            self.class_rows = [Row(id=p.stem, prompt=o.class_prompt, input_image=p,
                                   edited_image=None, size=_size(p))
                               for p in sorted(folder.glob("class-*.png"))[:o.class_images]]
        unet, text_encoder = parts.unet, parts.text_encoder
        unet.requires_grad_(o.mode == "full")
        text_encoder.requires_grad_(o.mode == "full" and o.train_text_encoder)
        if o.mode == "lora":
            from peft import LoraConfig

            unet.add_adapter(LoraConfig(r=o.rank, lora_alpha=o.rank,
                                        init_lora_weights="gaussian",
                                        target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
            if o.train_text_encoder:
                text_encoder.add_adapter(LoraConfig(
                    r=o.rank, lora_alpha=o.rank, init_lora_weights="gaussian",
                    target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
        if weight_dtype != torch.float32:
            parts.vae.to(dtype=weight_dtype)
            for module in (unet, text_encoder):
                if not any(p.requires_grad for p in module.parameters()) or o.mode == "lora":
                    module.to(dtype=weight_dtype)
        for module in (unet, text_encoder):
            module.to(self.device)
            for param in module.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
        if o.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.container = _trainable_container()(unet, text_encoder)
        # square crops: DreamBooth photos are usually square-ish, and the samples are square
        self.plan = BatchPlan(self.rows, None, o.batch_size * accelerator.num_processes,
                              self.seed)

    def _instance_rows(self) -> list[Row]:
        folder = Path(self.options.instance_images)
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
            if folder.is_dir() else []
        if not files:
            raise InputError(f"instance_images: no images in {folder}",
                             "point it at a folder of 3-20 photos of the subject")
        return [Row(id=p.stem, prompt=self.options.instance_prompt, input_image=p,
                    edited_image=None, size=_size(p)) for p in files]

    def _make_class_images(self) -> None:
        """Generate the missing class images with the base model; each image's seed depends
        on its number only, so an interrupted generation resumes with the same images."""
        import torch
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        o = self.options
        folder = self.output_dir / "class_images"
        folder.mkdir(parents=True, exist_ok=True)
        missing = [i for i in range(o.class_images)
                   if not (folder / f"class-{i:05d}.png").exists()]
        if not missing:
            return
        self.log(f"generating {len(missing)} class images for '{o.class_prompt}'")
        p = self.parts
        pipe = StableDiffusionPipeline(
            vae=p.vae, text_encoder=p.text_encoder.to(self.device), tokenizer=p.tokenizer,
            unet=p.unet.to(self.device),
            scheduler=DDIMScheduler.from_config(p.noise_scheduler.config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        for i in missing:
            generator = torch.Generator().manual_seed(seed_for(self.seed, i, 0, 3))
            with torch.no_grad():
                image = pipe(o.class_prompt, height=self.square[1], width=self.square[0],
                             num_inference_steps=o.class_inference_steps,
                             generator=generator).images[0]
            atomic_save_image(image, folder / f"class-{i:05d}.png")

    # --- loop interface -------------------------------------------------------------------

    def model(self) -> Any:
        return self.container

    def trainable(self) -> list[tuple[str, Any]]:
        return [(n, p) for n, p in self.container.named_parameters() if p.requires_grad]

    def size(self) -> ModelSize:
        unet = sum(p.numel() for p in self.container.parameters())
        trainable = sum(p.numel() for _, p in self.trainable())
        vae = sum(p.numel() for p in self.parts.vae.parameters())
        return ModelSize(unet=unet, trainable=trainable, frozen_other=vae,
                         lora=self.options.mode == "lora")

    def batches(self) -> BatchPlan:
        return self.plan

    def _ids(self, prompts: list[str]) -> Any:
        tok = self.parts.tokenizer
        return tok(prompts, padding="max_length", max_length=tok.model_max_length,
                   truncation=True, return_tensors="pt").input_ids.to(self.device)

    def loss(self, model: Any, rows: list[int], micro: int, rank: int) -> Any:
        import torch

        o = self.options
        rng = random.Random(seed_for(self.seed, micro, rank, 1))
        generator = torch.Generator().manual_seed(seed_for(self.seed, micro, rank, 2))
        examples = [self.rows[i] for i in rows]
        if self.class_rows:
            examples += [self.class_rows[rng.randrange(len(self.class_rows))] for _ in rows]
        pixels = []
        for row in examples:
            from PIL import Image

            with Image.open(row.input_image) as image:
                (crop,) = paired_crop([image], self.square, rng, o.random_flip)
            pixels.append(to_tensor(crop))
        batch = torch.stack(pixels).to(self.device, self.weight_dtype)
        with torch.no_grad():
            dist = self.parts.vae.encode(batch).latent_dist
        eps = torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
        latents = (dist.mean + dist.std * eps) * self.parts.vae.config.scaling_factor
        scheduler = self.parts.noise_scheduler
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(examples),),
                                  generator=generator).to(self.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        goal = diffusion_goal(scheduler, latents, noise, timesteps)
        unet_dtype = next(self.parts.unet.parameters()).dtype
        pred = model(noisy.to(unet_dtype), timesteps,
                     self._ids([row.prompt for row in examples])).float()
        goal = goal.float()
        n = len(rows)
        loss = diffusion_loss(scheduler, pred[:n], goal[:n], timesteps[:n], o.snr_gamma)
        if self.class_rows:
            loss = loss + o.prior_loss_weight * diffusion_loss(
                scheduler, pred[n:], goal[n:], timesteps[n:], o.snr_gamma)
        return loss

    def pipeline(self) -> Any:
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        p = self.parts
        return StableDiffusionPipeline(
            vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
            scheduler=DDIMScheduler.from_config(p.noise_scheduler.config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)

    def validate(self, folder: Path, step: int, autocast: Any) -> dict[str, float]:
        """Sample images for each prompt in `sample_prompts` (recontextualisation,
        restyling, accessories)."""
        import torch

        o = self.options
        if not o.samples_per_prompt or not o.sample_prompts:
            return {}
        pipe = self.pipeline()
        pipe.set_progress_bar_config(disable=True)
        out = Path(folder) / f"step-{step:08d}"
        out.mkdir(parents=True, exist_ok=True)
        count = 0
        self.container.eval()
        for n, prompt in enumerate(o.sample_prompts):
            slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60]
            for k in range(o.samples_per_prompt):
                generator = torch.Generator().manual_seed(self.seed + 1000 * n + k)
                with torch.no_grad(), autocast():
                    image = pipe(prompt, height=self.square[1], width=self.square[0],
                                 num_inference_steps=o.validation_inference_steps,
                                 guidance_scale=o.guidance_scale, generator=generator).images[0]
                image.save(out / f"{n:02d}-{slug}-{k}.png")
                self.tracker.image(f"samples/{n:02d}-{k}", image, step)
                count += 1
        self.container.train()
        metrics = {"images": count}
        self.tracker.metrics(metrics, step)
        return metrics

    def resume_at(self, step: int) -> None:
        self.tracker.resume_at(step)

    def log_scalar(self, name: str, value: float, step: int) -> None:
        self.tracker.scalar(name, value, step)

    def export(self, folder: Path) -> dict[str, Any]:
        """A LoRA file for `StableDiffusionPipeline.load_lora_weights`, or a pipeline folder."""
        from diffusers import AutoencoderKL, StableDiffusionPipeline

        from editkit.models import load

        o = self.options
        info = {"task": "text-to-image", "base": o.base, "instance_prompt": o.instance_prompt}
        if o.mode == "lora":
            text = self.parts.text_encoder if o.train_text_encoder else None
            StableDiffusionPipeline.save_lora_weights(
                folder, unet_lora_layers=lora_layers(self.parts.unet),
                text_encoder_lora_layers=lora_layers(text) if text is not None else None,
                unet_lora_adapter_metadata=lora_metadata(self.parts.unet),
                text_encoder_lora_adapter_metadata=(lora_metadata(text) if text is not None
                                                    else None),
                safe_serialization=True)
            return {"type": "lora", "lora": "pytorch_lora_weights.safetensors",
                    "conv_in": None, **info}
        pipe = self.pipeline()
        pipe.register_modules(vae=load(AutoencoderKL, self.parts.ref, "VAE", subfolder="vae"),
                              unet=self.parts.unet.float(),
                              text_encoder=self.parts.text_encoder.float())
        pipe.save_pretrained(folder, safe_serialization=True)
        return {"type": "pipeline", **info}

    def close(self) -> None:
        self.tracker.close()


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size
