"""The InstructPix2Pix task: edited-image latents are denoised given the instruction and the
input image's latents concatenated as 4 extra UNet channels. Full fine-tune or LoRA.

Conditioning dropout follows InstructPix2Pix: per example, the text alone, both, or the image
alone is dropped (default 5% each), which is what makes classifier-free guidance on text and
image possible at inference.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from editkit.errors import RunError
from editkit.models.editors import weights_probe
from editkit.training.data import (
    BatchPlan,
    Row,
    make_buckets,
    paired_crop,
    plan_crop,
    read_pair_rows,
    to_tensor,
)
from editkit.training.loop import seed_for
from editkit.training.memory import ModelSize, model_size
from editkit.training.options import TrainOptions
from editkit.training.tracker import Tracker
from editkit.training.unet import (
    Components,
    conv_in_state,
    diffusion_goal,
    diffusion_loss,
    load_components,
    with_prediction_type,
)

# Words that say what to do, not what to do it to: skipped when looking for the edit's object.
_VERBS = set("""a an the of and with in on at to for from into it them this that there make
turn paint add remove replace change swap put take away get rid give let have be is are was
were more less some any its their into onto""".split())
_ADDING = {"add", "put", "insert", "place", "draw", "include"}


class EditOptions(TrainOptions):
    dataset: str | None = Field(None, description="a dataset as editkit writes it (a run "
                                "folder or its dataset/), or a folder with metadata.jsonl "
                                "(columns input_image, edit_prompt, edited_image); default: "
                                "the run's kept pairs")
    buckets: bool = Field(True, description="aspect-ratio buckets instead of square crops")
    cache_latents: bool = Field(False, description="encode each image once, and once mirrored "
                                "when random_flip is on (crops are then "
                                "centred: the latents are fixed)")
    text_dropout: float = Field(0.05, ge=0, le=1, description="share of examples trained "
                                "with the empty instruction, for text guidance at inference")
    image_dropout: float = Field(0.05, ge=0, le=1, description="share of examples trained "
                                 "with zeroed input-image latents, for image guidance")
    both_dropout: float = Field(0.05, ge=0, le=1, description="share of examples trained "
                                "with both dropped; the three shares sum to at most 1")
    no_change_fraction: float = Field(
        0.0, ge=0, le=0.5,
        description="fraction of examples given an instruction naming something absent from "
                    "the input caption, with the input as target (teaches leaving such images "
                    "alone; too much teaches never editing). Default off")
    validation_clip: str | None = Field(
        None, description="CLIP model (like openai/clip-vit-large-patch14) for CLIP_im, "
                          "CLIP_dir and CLIP_out of the sample edits; default: L1 only")
    guidance_scale: float = Field(7.5, description="text guidance of the validation edits; "
                                  "also written to editkit_weights.json as the editor's "
                                  "recommended guidance, which `editkit edit` uses unless "
                                  "--guidance is given")
    image_guidance_scale: float = Field(1.5, description="image guidance of the validation "
                                        "edits; recommended to `editkit edit` the same way")
    prediction_type: Literal["epsilon", "v_prediction", "sample"] | None = Field(
        None, description="what the editor's UNet predicts: the noise, the velocity or the "
                          "edited image's latents themselves (sample); default: the base's. "
                          "Recorded with the weights, so every loader samples it right. "
                          "`sample` lets a small UNet copy what the edit keeps exactly "
                          "(BENCHMARKS.md, shapes editor)")

    conv_in_init: Literal["zeros", "copy"] = Field(
        "zeros", description="how a plain text-to-image base's widened conv_in starts: zeros "
                             "(InstructPix2Pix: the image is ignored at first) or copy "
                             "(Marigold: the latents' weights duplicated onto the image "
                             "channels, both halved: the input is read from the first step)")
    attention: Literal["sdpa", "plain"] = Field(
        "sdpa", description="the UNet's attention while training: sdpa (PyTorch's fused "
                            "kernel, diffusers' default) or plain (matmul and softmax, "
                            "diffusers' AttnProcessor). On the CPU with short sequences (the "
                            "shapes world's 64 latent cells) plain is ~12% faster a step; it "
                            "holds each whole attention matrix, so keep sdpa for large images")
    grounding: float = Field(
        0.0, ge=0, description="weight of a loss that asks the cross-attention of the "
                               "instruction's content words (as `editkit edit --localize` "
                               "picks them) to fall where the example's before and after "
                               "images differ (TokenCompose's token loss on a mask made from "
                               "the pair itself); 0: off")
    grounding_threshold: float = Field(
        0.3, gt=0, le=1, description="a latent cell is in the changed region when its "
                                     "change is at least this share of the example's largest")

    @model_validator(mode="after")
    def _dropout_sum(self) -> "EditOptions":
        if self.text_dropout + self.image_dropout + self.both_dropout > 1:
            raise ValueError("text_dropout + image_dropout + both_dropout must be at most 1")
        return self


def edit_object_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in _VERBS and len(w) > 2}


class EditTask:
    """Loads the model, makes batches from pairs, computes the InstructPix2Pix loss."""

    def __init__(self, options: EditOptions, dataset_dir: Path, output_dir: Path, seed: int,
                 lora: Any = None):
        self.options = options
        self.dataset_dir = Path(options.dataset) if options.dataset else Path(dataset_dir)
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.lora = lora  # None for a full fine-tune; else an object with rank/alpha/...
        self.train_text = False  # a LoRA on the text encoder too (lora.train_text_encoder)
        self.deltas = False  # the LoRA trained as W0 + D (lora.parametrization: delta)
        self.parts: Components | None = None
        self._latents: dict[tuple[str, bool, tuple[int, int]], Any] = {}
        self._grounding_words: dict[str, Any] = {}
        self.grounding_seen: list[float] = []  # the grounding loss of each batch, for the log

    # --- setup ----------------------------------------------------------------------------

    def setup(self, accelerator: Any, weight_dtype: Any, log: Callable[[str], None]) -> None:
        import torch

        device, world = accelerator.device, accelerator.num_processes
        self.log, self.device, self.weight_dtype = log, device, weight_dtype
        self.tracker = Tracker(self.output_dir, log)
        self.rows, self.held_out, problems = read_pair_rows(self.dataset_dir)
        log(f"{len(self.rows)} training pairs, {len(self.held_out)} held out "
            f"from {self.dataset_dir}")
        for problem in problems[:5]:
            log(f"skipped: {problem}")
        if len(problems) > 5:
            log(f"skipped {len(problems) - 5} more rows")
        parts = load_components(self.options.base, edit=True,
                                conv_in_init=self.options.conv_in_init)
        parts.noise_scheduler = with_prediction_type(parts.noise_scheduler,
                                                     self.options.prediction_type)
        self.parts = parts
        self.base_probe = weights_probe(parts.unet)  # before any LoRA layer wraps a weight
        if parts.widened:
            start = ("start at zero" if self.options.conv_in_init == "zeros" else
                     "start as a halved copy of the latents' (the latents' halved too)")
            log(f"{self.options.base} is a text-to-image model: conv_in widened to "
                f"{parts.unet.config.in_channels} channels, "
                f"the image channels {start} and are trained")
        unet = parts.unet
        if self.options.attention == "plain":
            from diffusers.models.attention_processor import AttnProcessor

            unet.set_attn_processor(AttnProcessor())
        family = parts.family
        for frozen in (parts.vae, *parts.text_encoders().values()):
            frozen.requires_grad_(False).to(device)
            dtype = family.vae_dtype(frozen, weight_dtype) if frozen is parts.vae \
                else weight_dtype
            if dtype != torch.float32:
                frozen.to(dtype=dtype)
        if self.lora is None:
            unet.requires_grad_(True)
            unet.to(device)
        else:
            from peft import LoraConfig

            unet.requires_grad_(False)
            self.deltas = getattr(self.lora, "parametrization", "factors") == "delta"
            if self.deltas:  # W0 + D trained, exported as LoRA factors (training.delta)
                from editkit.training.delta import add_deltas

                layers, params, factors = add_deltas(unet, list(self.lora.target_modules),
                                                     self.lora.rank)
                log(f"parametrization delta: {layers} UNet layers train their weight "
                    f"difference, exported as a rank-{self.lora.rank} LoRA ({params:,} "
                    f"parameters trained; the factors would have {factors:,})")
                if params > 2 * factors:
                    log("these layers are much wider than the rank: parametrization "
                        "factors trains fewer parameters and needs less memory")
            else:
                unet.add_adapter(LoraConfig(
                    r=self.lora.rank, lora_alpha=self.lora.alpha or self.lora.rank,
                    lora_dropout=self.lora.lora_dropout, init_lora_weights="gaussian",
                    target_modules=list(self.lora.target_modules)))
            self.train_conv_in = (parts.widened if self.lora.train_conv_in is None
                                  else self.lora.train_conv_in)
            self.train_text = bool(getattr(self.lora, "train_text_encoder", False))
            if self.train_text:
                if world > 1:
                    raise RunError("train_text_encoder runs on one process only",
                                   "launch without accelerate's multi-process, or set "
                                   "train_text_encoder: false")
                for encoder in parts.text_encoders().values():  # SDXL: both
                    if self.deltas:
                        from editkit.training.delta import add_deltas

                        add_deltas(encoder, list(self.lora.text_encoder_modules),
                                   self.lora.rank)
                    else:
                        encoder.add_adapter(LoraConfig(
                            r=self.lora.rank, lora_alpha=self.lora.alpha or self.lora.rank,
                            lora_dropout=self.lora.lora_dropout, init_lora_weights="gaussian",
                            target_modules=list(self.lora.text_encoder_modules)))
                    for param in encoder.parameters():
                        if param.requires_grad:
                            param.data = param.data.float()
            unet.conv_in.requires_grad_(self.train_conv_in)
            unet.to(device)
            if weight_dtype != torch.float32:
                unet.to(dtype=weight_dtype)
            for param in unet.parameters():  # trained weights stay fp32 under mixed precision
                if param.requires_grad:
                    param.data = param.data.float()
        if self.options.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        scale = 2 ** (len(parts.vae.config.block_out_channels) - 1)
        self.multiple = scale * 8 if self.options.resolution >= 128 else scale * 4
        self.square = (self.options.resolution // self.multiple * self.multiple,) * 2
        buckets = make_buckets(self.options.resolution, self.multiple) \
            if self.options.buckets else None
        self.plan = BatchPlan(self.rows, buckets, self.options.batch_size * world, self.seed)
        self.null_embedding = family.null_conditioning(parts)
        too_long = sum(len(parts.tokenizer(r.prompt).input_ids) > parts.tokenizer.model_max_length
                       for r in self.rows)
        if too_long:
            log(f"{too_long} instructions are longer than CLIP's "
                f"{parts.tokenizer.model_max_length} tokens and are cut there")
        if self.options.cache_latents:
            log("cache_latents: crops are centred" + (", each image cached as is and mirrored"
                                                      if self.options.random_flip else ""))
        if self.options.no_change_fraction:
            usable = sum(bool(r.caption) for r in self.rows)
            log(f"no-change augmentation on {self.options.no_change_fraction:.0%} of examples "
                f"({usable} of {len(self.rows)} pairs have an input caption to check against)")
        torch.manual_seed(self.seed)

    def model(self) -> Any:
        return self.parts.unet

    def trainable(self) -> list[tuple[str, Any]]:
        unet = [(n, p) for n, p in self.parts.unet.named_parameters() if p.requires_grad]
        if not self.train_text:
            return unet
        return unet + [(f"{name}.{n}", p)
                       for name, encoder in self.parts.text_encoders().items()
                       for n, p in encoder.named_parameters() if p.requires_grad]

    def size(self) -> ModelSize:
        import torch

        parts = self.parts  # a VAE the family runs in fp32 (SDXL's) stays so in any precision
        full = [parts.vae] if parts.family.vae_dtype(parts.vae, torch.float16) == torch.float32 \
            else []
        return model_size(parts.unet, [parts.vae, *parts.text_encoders().values()],
                          lora=self.lora is not None, full_precision=full,
                          activation_scale=parts.family.activation_scale(parts.unet))

    def batches(self) -> BatchPlan:
        return self.plan

    # --- one batch ------------------------------------------------------------------------

    def _example(self, index: int, rng: random.Random
                 ) -> tuple[str, list[Any], tuple[int, int], tuple[int, ...]]:
        """(instruction, [before, after] images, bucket, the crop's SDXL time ids) for one
        row, augmented; with cached latents the images are (path, mirrored) keys."""
        from PIL import Image

        row = self.rows[index]
        bucket = self.plan.bucket(index, self.square)
        prompt, target = row.prompt, row.edited_image
        if self.options.no_change_fraction and rng.random() < self.options.no_change_fraction:
            absent = self._absent_instruction(row, rng)
            if absent is not None:
                prompt, target = absent, row.input_image
        if self.options.cache_latents:
            mirror = self.options.random_flip and rng.random() < 0.5
            crop = replace(plan_crop(row.size, bucket, None, False), mirror=mirror)
            return (prompt, [(row.input_image, mirror), (target, mirror)], bucket,
                    crop.time_ids(row.size, bucket))
        with Image.open(row.input_image) as a, Image.open(target) as b:
            crop = plan_crop(a.size, bucket, rng, self.options.random_flip)
            images = paired_crop([a, b], bucket, rng, self.options.random_flip, crop)
        return prompt, images, bucket, crop.time_ids(a.size, bucket)

    def _absent_instruction(self, row: Row, rng: random.Random) -> str | None:
        if not row.caption:
            return None
        present = edit_object_words(row.caption) | edit_object_words(row.prompt)
        # "add a tree" to a picture without one is a real edit, not one to refuse
        options = [r.prompt for r in self.rows
                   if edit_object_words(r.prompt) and not edit_object_words(r.prompt) & present
                   and r.prompt.lower().split()[0] not in _ADDING]
        return rng.choice(options) if options else None

    def _latents_for(self, examples: list[list[Any]], bucket_of: list[tuple[int, int]],
                     generator: Any) -> tuple[Any, Any, Any]:
        """(target latents, sampled and scaled; input-image latents, the distribution mode;
        the target's mode) for a batch of [before, after] examples: cached, or encoded in
        one VAE call."""
        import torch
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        vae = self.parts.vae
        if self.options.cache_latents:
            params = self._cached_dists([(str(path), mirror, bucket)
                                         for pair, bucket in zip(examples, bucket_of)
                                         for path, mirror in pair])
        else:
            pixels = torch.stack([to_tensor(im) for pair in examples for im in pair])
            with torch.no_grad():
                params = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.parameters
        before = DiagonalGaussianDistribution(params[0::2]).mode()
        after = DiagonalGaussianDistribution(params[1::2])
        noise = torch.randn(after.mean.shape, generator=generator).to(after.mean)
        target = (after.mean + after.std * noise) * vae.config.scaling_factor
        return target, before, after.mean

    def _cached_dists(self, keys: list[tuple[str, bool, tuple[int, int]]]) -> Any:
        """The VAE's distribution parameters of each (path, mirrored, bucket), each image
        encoded alone the first time it is asked for. Alone, not with the others missing
        from the same batch: a convolution's result for one image differs in the last bits
        with the batch it runs in, and which images are missing together depends on where
        the run started (a resumed run fills its cache from another step), so batched
        encoding made resumed runs drift from uninterrupted ones."""
        import torch
        from PIL import Image

        for key in dict.fromkeys(keys):
            if key in self._latents:
                continue
            path, mirror, bucket = key
            with Image.open(path) as image:
                (cropped,) = paired_crop([image], bucket, None, False)
            if mirror:
                cropped = cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            with torch.no_grad():
                self._latents[key] = self.parts.vae.encode(to_tensor(cropped)[None].to(
                    self.device, self.parts.vae.dtype)).latent_dist.parameters
        return torch.cat([self._latents[key] for key in keys])

    def loss(self, model: Any, rows: list[int], micro: int, rank: int) -> Any:
        import torch

        rng = random.Random(seed_for(self.seed, micro, rank, 1))
        generator = torch.Generator().manual_seed(seed_for(self.seed, micro, rank, 2))
        examples = [self._example(index, rng) for index in rows]
        prompts = [prompt for prompt, _, _, _ in examples]
        latents, before, after = self._latents_for(
            [images for _, images, _, _ in examples], [bucket for _, _, bucket, _ in examples],
            generator)
        batch = latents.shape[0]
        scheduler = self.parts.noise_scheduler
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,),
                                  generator=generator).to(self.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        family = self.parts.family
        if self.train_text:  # the empty instruction as the encoders now read it
            text, null = family.caption_conditioning(self.parts, prompts, grad=True,
                                                     with_null=True)
        else:
            text, null = family.caption_conditioning(self.parts, prompts), self.null_embedding
        u = torch.rand(batch, generator=generator).to(self.device)
        o = self.options
        drop_text = u < o.text_dropout + o.both_dropout
        drop_image = (u >= o.text_dropout) & (u < o.text_dropout + o.both_dropout
                                              + o.image_dropout)
        text = _dropped(text, null, drop_text)
        image_latents = before * (~drop_image).to(before)[:, None, None, None]
        goal = diffusion_goal(scheduler, latents, noise, timesteps)
        model_input = torch.cat([noisy, image_latents], dim=1)
        unet_dtype = next(p for p in self.parts.unet.parameters()).dtype
        condition = family.with_time_ids(text, [ids for _, _, _, ids in examples]
                                         ).to(unet_dtype).unet_kwargs()
        if not o.grounding:
            pred = model(model_input.to(unet_dtype), timesteps, **condition).sample
            return diffusion_loss(scheduler, pred, goal, timesteps, o.snr_gamma)
        from editkit.diffusion.control import attention_control
        from editkit.diffusion.grounding import (
            AttentionRecorder,
            attention_inside_loss,
            change_masks,
        )
        recorder = AttentionRecorder()
        with attention_control(self.parts.unet, recorder) as layers:
            recorder.begin(tuple(latents.shape[-2:]), (1, batch, 1))
            pred = model(model_input.to(unet_dtype), timesteps, **condition).sample
        sizes = {layer.map_size(tuple(latents.shape[-2:]))
                 for layer in layers.values() if layer.cross}
        masks = change_masks(before, after, sorted(sizes), o.grounding_threshold)
        # the content words of each instruction, where the example has text and a change
        member = torch.stack([self._grounded_tokens(p) for p in prompts]).to(self.device)
        changed = next(iter(masks.values())).flatten(1).amax(dim=1) > 0
        member = member * (~drop_text & changed)[:, None]
        grounded = attention_inside_loss(recorder.maps, member[:, None], masks)
        self.grounding_seen.append(float(grounded))
        return (diffusion_loss(scheduler, pred, goal, timesteps, o.snr_gamma)
                + o.grounding * grounded)

    def _grounded_tokens(self, prompt: str) -> Any:
        """(tokens,) 1 at the instruction's content words, 0 elsewhere (cached)."""
        import torch

        from editkit.diffusion.alignment import word_weights
        from editkit.diffusion.localize import instruction_words
        from editkit.errors import InputError

        if prompt not in self._grounding_words:
            tok = self.parts.tokenizer
            try:
                words = instruction_words(prompt)
            except InputError:  # nothing to ground: "do it again"
                words = []
            self._grounding_words[prompt] = (word_weights(tok, prompt, words,
                                                          tok.model_max_length)
                                             if words else torch.zeros(tok.model_max_length))
        return self._grounding_words[prompt]

    # --- validation and export --------------------------------------------------------------

    def pipeline(self) -> Any:
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.parts.noise_scheduler.config)
        return self.parts.family.editor_pipeline(self.parts, scheduler)

    def validate(self, folder: Path, step: int, autocast: Any) -> dict[str, float]:
        """Edit held-out inputs (or training ones when none are held out); save the results
        and the L1 distance to the target."""
        import numpy as np
        import torch
        from PIL import Image

        count = self.options.validation_images
        rows = (self.held_out or self.rows)[:count]
        if not rows:
            return {}
        pipe = self.pipeline()
        pipe.set_progress_bar_config(disable=True)
        unet = self.parts.unet
        was_training = unet.training
        unet.eval()
        out_dir = Path(folder) / f"step-{step:08d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        from editkit.models.encoders import l1_distance

        l1, triples = [], []
        for n, row in enumerate(rows):
            with Image.open(row.input_image) as a, Image.open(row.edited_image) as b:
                before, after = paired_crop([a, b], self.square, None, False)
            generator = torch.Generator().manual_seed(self.seed + n)
            with torch.no_grad(), autocast():
                image = pipe(row.prompt, image=before, generator=generator,
                             num_inference_steps=self.options.validation_inference_steps,
                             guidance_scale=self.options.guidance_scale,
                             image_guidance_scale=self.options.image_guidance_scale,
                             **self.parts.family.editor_call_kwargs(before.size)).images[0]
            image = image.resize(after.size)
            self.tracker.sample_sheet(out_dir, row.id, [before, image, after], step)
            l1.append(l1_distance(after, image))
            triples.append((row, before, image))
        if was_training:
            unet.train()
        metrics: dict[str, Any] = {"l1": round(float(np.mean(l1)), 6), "images": len(rows),
                                   "held_out": bool(self.held_out)}
        if self.options.validation_clip:
            metrics.update(self._clip_metrics(triples))
        self.tracker.metrics(metrics, step)
        (out_dir / "prompts.txt").write_text("".join(f"{r.id}\t{r.prompt}\n" for r in rows))
        return metrics

    def _clip_metrics(self, triples: list[tuple[Row, Any, Any]]) -> dict[str, float]:
        """InstructPix2Pix's CLIP_im, CLIP_dir, CLIP_out (editkit.models.encoders) of the edits, for
        rows whose input and output captions are known."""
        import numpy as np

        from editkit.models.encoders import ClipEncoder, clip_pair_scores

        usable = [t for t in triples if t[0].caption and t[0].output]
        if not usable:
            return {}
        if not hasattr(self, "_clip"):
            self._clip = ClipEncoder(self.options.validation_clip)
        images = self._clip.encode_images([im for _, before, edited in usable
                                           for im in (before, edited)])
        texts = self._clip.embed_texts([c for row, _, _ in usable
                                        for c in (row.caption, row.output)])
        scores = [clip_pair_scores(images[2 * k], images[2 * k + 1], texts[row.caption],
                                   texts[row.output]) for k, (row, _, _) in enumerate(usable)]
        return {"clip_im": round(float(np.mean([s["clip_image"] for s in scores])), 6),
                "clip_dir": round(float(np.mean([s["clip_direction"] for s in scores])), 6),
                "clip_out": round(float(np.mean([s["clip_text_after"] for s in scores])), 6)}

    def resume_at(self, step: int) -> None:
        self.tracker.resume_at(step)

    def log_scalar(self, name: str, value: float, step: int) -> None:
        self.tracker.scalar(name, value, step)
        if name == "train/loss" and self.grounding_seen and step % 100 == 0:
            mean = sum(self.grounding_seen) / len(self.grounding_seen)
            self.tracker.scalar("train/grounding", mean, step)
            self.log(f"step {step}: grounding loss {mean:.4f} (weight "
                     f"{self.options.grounding:g}, included in the loss)")
            self.grounding_seen.clear()

    def export(self, folder: Path) -> dict[str, Any]:
        """A LoRA file the family's editor pipeline's `load_lora_weights` accepts (+ conv_in
        when trained), or a full InstructPix2Pix pipeline folder."""
        unet = self.parts.unet
        encoders = self.parts.text_encoders()
        guidance = {"text": self.options.guidance_scale,
                    "image": self.options.image_guidance_scale}
        if self.lora is not None:
            from safetensors.torch import save_file

            if self.deltas:
                from editkit.training.delta import deltas_to_lora

                alpha = self.lora.alpha or self.lora.rank
                deltas_to_lora(unet, self.lora.rank, alpha, list(self.lora.target_modules),
                               self.log, "UNet")
                for name, encoder in encoders.items() if self.train_text else ():
                    deltas_to_lora(encoder, self.lora.rank, alpha,
                                   list(self.lora.text_encoder_modules), self.log,
                                   name.replace("_", " "))
            self.parts.family.save_lora(folder, unet, encoders if self.train_text else {})
            conv_in = None
            if self.train_conv_in:
                conv_in = "conv_in.safetensors"
                save_file(conv_in_state(unet), folder / conv_in)
            return {"type": "lora", "base": self.options.base,
                    "lora": "pytorch_lora_weights.safetensors", "conv_in": conv_in,
                    "rank": self.lora.rank, "alpha": self.lora.alpha or self.lora.rank,
                    "guidance": guidance,
                    "prediction_type": self.parts.noise_scheduler.config.prediction_type,
                    "base_probe": self.base_probe}
        # the frozen parts are reloaded so a mixed-precision run exports them unrounded
        pipe = self.pipeline()
        family = self.parts.family
        pipe.register_modules(**{name: family.load_part(self.parts.ref, name)
                                 for name in ("vae", *encoders)}, unet=unet.float())
        pipe.save_pretrained(folder, safe_serialization=True)
        return {"type": "pipeline", "base": self.options.base, "guidance": guidance}

    def close(self) -> None:
        self.tracker.close()


def _dropped(text: Any, null: Any, drop: Any) -> Any:
    """`text` (a `Conditioning`) with the examples where `drop` is true given `null`'s row."""
    import torch

    from editkit.models.families import Conditioning

    def where(kept: Any, empty: Any) -> Any:
        mask = drop.reshape(-1, *[1] * (kept.dim() - 1))
        return torch.where(mask, empty.to(kept), kept)

    added = None if text.added is None else \
        {k: where(v, null.added[k]) for k, v in text.added.items()}
    return Conditioning(where(text.hidden, null.hidden), added)

