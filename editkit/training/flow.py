"""The flow-matching LoRA task: FLUX.1 Kontext, FLUX.2 klein and Qwen-Image-Edit learn an
edit from (before, instruction, after) pairs.

As each family's diffusers reference trainer does it: the target image's latents x and noise
e give the noisy latents (1 - sigma) x + sigma e at a timestep drawn from the training
scheduler's own (shifted) schedule, uniformly or by `weighting_scheme`; the transformer sees
them with the image to edit's latents as extra tokens and the instruction's embeddings, and
predicts the velocity e - x (`editkit.models.flow.FlowFamily.predict`). The frozen transformer
may be held in 4 or 8 bits (QLoRA, `editkit.training.quantize`); latents and text embeddings
are cached on disk in a first pass, after which the text encoders leave memory. Randomness per
micro-batch comes from generators seeded by (seed, micro-batch, process), so a resumed run is
bit-identical to one never stopped (`editkit.training.loop`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Literal

from pydantic import Field, model_validator

from editkit.errors import RunError
from editkit.models.editors import weights_probe
from editkit.training.data import (
    BatchPlan,
    Row,
    make_buckets,
    paired_crop,
    read_pair_rows,
    to_tensor,
)
from editkit.training.loop import seed_for
from editkit.training.memory import ModelSize, model_size
from editkit.training.options import TrainOptions
from editkit.training.tracker import Tracker

WEIGHTING = Literal["none", "logit_normal", "mode", "cosmap", "sigma_sqrt"]


class FlowLoraOptions(TrainOptions):
    base: str = Field("black-forest-labs/FLUX.2-klein-4B",
                      description="the editor to fine-tune: FLUX.1 Kontext, FLUX.2 klein or "
                                  "Qwen-Image-Edit (hub id, local folder or built-in tiny one)")
    resolution: int = Field(512, ge=16, description="training area is resolution² pixels "
                                                    "(1024 is these editors' native size)")
    dataset: str | None = Field(None, description="a dataset as editkit writes it (a run "
                                "folder or its dataset/), or a folder with metadata.jsonl "
                                "(columns input_image, edit_prompt, edited_image); default: "
                                "the run's kept pairs")
    buckets: bool = Field(True, description="aspect-ratio buckets instead of square crops; "
                                            "before and after are cropped alike")
    rank: int = Field(16, ge=1, description="LoRA rank")
    alpha: int | None = Field(None, ge=1, description="LoRA alpha; default: the rank")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA branch "
                                                             "while training")
    target_modules: list[str] | None = Field(
        None, min_length=1, description="transformer layers that get a LoRA, by name suffix "
        "as peft matches them; default: those of the family's diffusers reference trainer")
    quantize: Literal["none", "nf4", "int8"] = Field(
        "none", description="hold the frozen transformer in 4 bits (nf4, QLoRA) or 8 bits "
                            "(int8) with bitsandbytes: FLUX.1 Kontext and FLUX.2 klein 9B "
                            "then fit 16-24 GB cards; the LoRA itself trains in full "
                            "precision")
    cache_latents: bool = Field(True, description="encode every image once (centred crops, "
                                "and mirrored when random_flip is on) before training, kept "
                                "on disk in the train folder")
    cache_text: bool = Field(True, description="encode every instruction once before "
                             "training, kept on disk; the text encoders then leave memory")
    text_dropout: float = Field(0.0, ge=0, le=1, description="share of examples trained with "
                                "the empty instruction (for families with classifier-free "
                                "guidance: Qwen-Image-Edit, FLUX.2 klein base)")
    image_dropout: float = Field(0.0, ge=0, le=1, description="share of examples trained with "
                                 "the image to edit blanked (zero latents): keeps the "
                                 "editor's text-to-image skill; 0: never")
    weighting_scheme: WEIGHTING = Field(
        "none", description="timestep sampling: none (uniform over the scheduler's shifted "
                            "schedule, the reference trainers' default), logit_normal, mode; "
                            "or uniform sampling with the loss weighted by cosmap or "
                            "sigma_sqrt (SD3's schemes)")
    logit_mean: float = Field(0.0, description="logit_normal: mean")
    logit_std: float = Field(1.0, gt=0, description="logit_normal: standard deviation")
    mode_scale: float = Field(1.29, description="mode: scale")
    guidance_scale: float | None = Field(
        None, description="guidance of the validation edits and the recommendation written "
                          "with the weights for `editkit edit`; default: the family's "
                          "(Kontext 2.5, klein 1 (distilled) or 4, Qwen-Image-Edit 4)")
    train_guidance: float | None = Field(
        None, description="the embedded guidance a guidance-distilled transformer (FLUX.1 "
                          "Kontext) is trained at; default: its diffusers reference "
                          "trainer's (3.5)")
    validation_inference_steps: int | None = Field(  # type: ignore[assignment]
        None, ge=1, description="denoising steps of each validation edit and the "
                                "recommendation written with the weights; default: the "
                                "family's (Kontext 28, klein 4 distilled / 50 base, Qwen 40)")

    @model_validator(mode="after")
    def _flow_only(self) -> "FlowLoraOptions":
        if self.snr_gamma is not None:
            raise ValueError("snr_gamma is min-SNR weighting for the UNet trainers; flow "
                             "editors weight timesteps with weighting_scheme")
        if self.text_dropout + self.image_dropout > 1:
            raise ValueError("text_dropout + image_dropout must be at most 1")
        return self


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


class FlowEditTask:
    """Loads the editor, caches latents and text, computes the flow-matching loss."""

    def __init__(self, options: FlowLoraOptions, dataset_dir: Path, output_dir: Path,
                 seed: int):
        self.options = options
        self.dataset_dir = Path(options.dataset) if options.dataset else Path(dataset_dir)
        self.output_dir = Path(output_dir)
        self.cache_dir = self.output_dir / "cache"
        self.seed = seed
        self._latents: dict[str, Any] = {}
        self._text: dict[str, dict[str, Any]] = {}

    # --- setup ----------------------------------------------------------------------------

    def setup(self, accelerator: Any, weight_dtype: Any, log: Callable[[str], None]) -> None:
        import torch

        from editkit.models import resolve
        from editkit.models.families import family_for

        o = self.options
        self.log, self.device, self.weight_dtype = log, accelerator.device, weight_dtype
        self.world = accelerator.num_processes
        self.tracker = Tracker(self.output_dir, log)
        self.rows, self.held_out, problems = read_pair_rows(self.dataset_dir)
        log(f"{len(self.rows)} training pairs, {len(self.held_out)} held out "
            f"from {self.dataset_dir}")
        for problem in problems[:5]:
            log(f"skipped: {problem}")
        self.ref = resolve(o.base)
        family = family_for(self.ref)
        if not getattr(family, "flow", False):
            raise RunError(f"'{o.base}' is {family.title}, not a flow-matching editor",
                           "use: lora or instruct-pix2pix for Stable Diffusion and SDXL")
        self.family = family
        self._plan_memory(log)  # from the configs, before any weight is read
        loaded = family.training_parts(self.ref, weight_dtype)
        compute = weight_dtype if weight_dtype != torch.float32 else (
            torch.bfloat16 if o.mixed_precision == "bf16" and self.device.type != "cpu"
            else torch.float32)
        self.parts = SimpleNamespace(**loaded, dtype=compute, family=family)
        parts = self.parts
        guidance, steps = family.recommended(parts)
        self.guidance = o.guidance_scale if o.guidance_scale is not None else guidance
        self.steps = o.validation_inference_steps or steps
        self.negative = family.negative_prompt(parts, self.guidance)
        # None: the family's (Kontext: its reference trainer's 3.5)
        self.train_guidance = o.train_guidance
        # training draws timesteps from the scheduler's full schedule; a validation edit
        # sets the pipeline's scheduler to its few steps, so training keeps its own copy
        self.schedule = copy.deepcopy(parts.scheduler)
        for name in ("vae", *family.text_parts):
            module = getattr(parts, name)
            if hasattr(module, "requires_grad_"):
                module.requires_grad_(False).eval()
                module.to(self.device)
                if weight_dtype != torch.float32:
                    module.to(dtype=weight_dtype)
        transformer = parts.transformer
        transformer.requires_grad_(False)
        self.base_probe = weights_probe(transformer)
        self.multiple = family.latent_multiple(parts)
        self.square = (max(self.multiple, o.resolution // self.multiple * self.multiple),) * 2
        buckets = make_buckets(o.resolution, self.multiple) if o.buckets else None
        self.plan = BatchPlan(self.rows, buckets, o.batch_size * self.world, self.seed)
        # the caches are filled before the transformer comes to the device: the text
        # encoders have left it by then (what the memory plan counts on)
        self._fill_caches(log)
        self._add_lora(transformer, compute, log)
        torch.manual_seed(self.seed)

    def _add_lora(self, transformer: Any, compute: Any, log: Callable[[str], None]) -> None:
        """The frozen transformer on the device (quantized when asked), with a LoRA whose
        weights train in fp32."""
        import torch
        from peft import LoraConfig

        o = self.options
        if o.quantize != "none":
            from editkit.training.quantize import quantize

            quantize(transformer, o.quantize, compute, self.device)
            log(f"transformer quantized to {o.quantize} (frozen base, QLoRA)")
        else:
            transformer.to(self.device)
            if self.weight_dtype != torch.float32:
                transformer.to(dtype=self.weight_dtype)
        targets = list(o.target_modules or self.family.lora_targets)
        transformer.add_adapter(LoraConfig(
            r=o.rank, lora_alpha=o.alpha or o.rank, lora_dropout=o.lora_dropout,
            init_lora_weights="gaussian", target_modules=targets))
        for param in transformer.parameters():  # the LoRA trains in fp32
            if param.requires_grad:
                param.data = param.data.float()
        trained = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
        log(f"LoRA rank {o.rank} on {len(targets)} kinds of {self.family.title} transformer "
            f"layers: {trained:,} parameters trained")
        if o.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()

    def _plan_memory(self, log: Callable[[str], None]) -> None:
        """The memory plan from the model's configs (`editkit.training.planner`), printed;
        a plan larger than the GPU, or than this machine's memory, is refused with the
        option changes that would fit."""
        import psutil

        from editkit.training import planner
        from editkit.training.memory import GIB

        cpu = self.device.type == "cpu"
        try:
            self.model_plan = planner.flow_model(self.ref.location)
        except Exception as exc:  # no configs to plan from: said, and training goes on
            self.model_plan = None
            log(f"no memory plan: {str(exc).splitlines()[0]}")
            return
        found = planner.plan(self.model_plan, self.options, cpu=cpu, pairs=len(self.rows))
        for line in planner.describe(found):
            log(line)
        host = psutil.virtual_memory().total
        if found.host_total > host:
            raise RunError(f"the memory plan needs about {found.host_total / GIB:.1f} GiB of "
                           f"host memory to load {self.options.base}; this machine has "
                           f"{host / GIB:.1f} GiB", "train on a machine with more memory")
        if not cpu and self.device.type == "cuda":
            import torch

            available = torch.cuda.get_device_properties(self.device).total_memory
            if found.total > available:
                fits = planner.fitting_changes(self.model_plan, self.options, available)
                raise RunError(
                    f"the memory plan needs about {found.total / GIB:.1f} GiB of GPU memory; "
                    f"{self.device} has {available / GIB:.1f} GiB",
                    "options that should fit: " + "; ".join(fits) if fits else
                    "no option change fits: use a larger GPU")

    def memory_estimate(self, options: Any, cpu: bool) -> dict[str, float]:
        """The loop's memory line: the planner's parts (the UNet heuristic without one)."""
        from editkit.training import planner
        from editkit.training.memory import estimate

        if self.model_plan is None:
            return estimate(self.size(), options, cpu)
        return planner.plan(self.model_plan, options, cpu=cpu, pairs=len(self.rows)).parts()

    def fitting_changes(self, options: Any, available: float, cpu: bool) -> list[str]:
        from editkit.training import planner
        from editkit.training.memory import fitting_changes

        if self.model_plan is None:
            return fitting_changes(self.size(), options, available, cpu)
        return planner.fitting_changes(self.model_plan, options, available, cpu)

    def _fill_caches(self, log: Callable[[str], None]) -> None:
        """Encode what the caches hold before the first step (a rerun reads them from disk),
        then send the text encoders away when every instruction is cached."""
        o = self.options
        flips = (False, True) if o.random_flip else (False,)
        if o.cache_latents:
            keys = {(str(p), m, self.plan.bucket(i, self.square), p == row.input_image)
                    for i, row in enumerate(self.rows) for p in (row.input_image,
                                                                 row.edited_image)
                    for m in flips}
            for key in sorted(keys):
                self._cached_latents(*key)
            log(f"latents cached: {len(keys)} images in {self.cache_dir / 'latents'}")
        if o.cache_text:
            # keyed as `loss` asks for them (a training row's own bucket) and as validation
            # asks (index -1: the square it edits at), which differ for a family whose text
            # encoder reads the image
            for i, row in enumerate(self.rows):
                for mirror in flips:
                    self._row_text(i, row, mirror)
                    if o.text_dropout:
                        self._row_text(i, row, mirror, prompt="")
            for row in self._validation_rows():
                self._row_text(-1, row, False)
                if self.negative is not None:  # what the validation edits guide against
                    self._row_text(-1, row, False, prompt=self.negative)
            log(f"text cached: {len(self._text)} embeddings in {self.cache_dir / 'text'}")
            for name in self.family.text_parts:  # not needed again: free their memory
                setattr(self.parts, name, None)
            import gc

            gc.collect()

    def _validation_rows(self) -> list[Row]:
        return (self.held_out or self.rows)[: self.options.validation_images]

    # --- caches ---------------------------------------------------------------------------

    def _crop(self, path: str, mirror: bool, bucket: tuple[int, int]) -> Any:
        from PIL import Image

        with Image.open(path) as image:
            (cropped,) = paired_crop([image], bucket, None, False)
        return cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else cropped

    def _encode_image(self, image: Any) -> Any:
        """One image's latents, encoded alone (a convolution's last bits depend on the batch
        it runs in; alone, a resumed run's cache equals an uninterrupted run's)."""
        import torch

        pixels = to_tensor(image)[None].to(self.device, self.parts.vae.dtype)
        with torch.no_grad():
            return self.family.image_latents(self.parts, pixels)[0].float().cpu()

    def _cached_latents(self, path: str, mirror: bool, bucket: tuple[int, int],
                        condition: bool = False) -> Any:
        """The latents of one image's crop; as the image to edit (`condition`), at the size
        the family's pipeline encodes it (`FlowFamily.condition_image`)."""
        from safetensors.torch import load_file, save_file

        stat = Path(path).stat()
        key = _key(self.family.name, self.ref.ref, path, stat.st_size, stat.st_mtime_ns,
                   mirror, bucket, self._condition_size(bucket) if condition else bucket)
        if key not in self._latents:
            file = self.cache_dir / "latents" / f"{key}.safetensors"
            if file.exists():
                self._latents[key] = load_file(file)["latents"]
            else:
                image = self._crop(path, mirror, bucket)
                if condition:
                    image = self.family.condition_image(self.parts, image)
                self._latents[key] = self._encode_image(image)
                _save_atomic(save_file, {"latents": self._latents[key]}, file)
        return self._latents[key]

    def _condition_size(self, bucket: tuple[int, int]) -> tuple[int, int]:
        from PIL import Image

        return self.family.condition_image(self.parts, Image.new("RGB", bucket)).size

    def _row_text(self, index: int, row: Row, mirror: bool, prompt: str | None = None
                  ) -> dict[str, Any]:
        """The embeddings of `row`'s instruction (or `prompt`): per instruction, or per
        example when the family's text encoder reads the image too."""
        import torch
        from safetensors.torch import load_file, save_file

        text = row.prompt if prompt is None else prompt
        reads = self.family.text_reads_image
        bucket = self.plan.bucket(index, self.square) if index >= 0 else self.square
        key = _key(self.family.name, self.ref.ref, text,
                   *((str(row.input_image), mirror, bucket) if reads else ()))
        if key in self._text:
            return self._text[key]
        file = self.cache_dir / "text" / f"{key}.safetensors"
        if self.options.cache_text and file.exists():
            self._text[key] = load_file(file)
            return self._text[key]
        if getattr(self.parts, self.family.text_parts[0]) is None:
            raise RunError(f"instruction {text!r} is not in the text cache",
                           "delete the train folder's cache/ and rerun")
        images = [self._crop(str(row.input_image), mirror, bucket)] if reads else None
        with torch.no_grad():
            found = self.family.text_embeddings(self.parts, [text], images)
        value = {k: v[0].float().cpu().contiguous() for k, v in found.items()}
        if self.options.cache_text:
            _save_atomic(save_file, value, file)
            self._text[key] = value
        return value

    # --- the loop's task ------------------------------------------------------------------

    def model(self) -> Any:
        return self.parts.transformer

    def trainable(self) -> list[tuple[str, Any]]:
        return [(n, p) for n, p in self.parts.transformer.named_parameters()
                if p.requires_grad]

    def size(self) -> ModelSize:
        others = [m for m in (self.parts.vae, *(getattr(self.parts, n)
                                                for n in self.family.text_parts))
                  if hasattr(m, "parameters")]
        return model_size(self.parts.transformer, others, lora=True)

    def batches(self) -> BatchPlan:
        return self.plan

    def loss(self, model: Any, rows: list[int], micro: int, rank: int) -> Any:
        import torch
        from diffusers.training_utils import (
            compute_density_for_timestep_sampling,
            compute_loss_weighting_for_sd3,
        )

        o = self.options
        rng = random.Random(seed_for(self.seed, micro, rank, 1))
        generator = torch.Generator().manual_seed(seed_for(self.seed, micro, rank, 2))
        before, after, texts = [], [], []
        for index in rows:
            row = self.rows[index]
            bucket = self.plan.bucket(index, self.square)
            if o.cache_latents:
                mirror = o.random_flip and rng.random() < 0.5
                a = self._cached_latents(str(row.input_image), mirror, bucket, condition=True)
                b = self._cached_latents(str(row.edited_image), mirror, bucket)
            else:
                from PIL import Image

                with Image.open(row.input_image) as x, Image.open(row.edited_image) as y:
                    crop_a, crop_b = paired_crop([x, y], bucket, rng, o.random_flip)
                mirror = False  # the crop above may have mirrored both already
                a = self._encode_image(self.family.condition_image(self.parts, crop_a))
                b = self._encode_image(crop_b)
            before.append(a)
            after.append(b)
            texts.append((index, row, mirror))
        latents = torch.stack(after).to(self.device)
        condition = torch.stack(before).to(self.device)
        batch = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        u = compute_density_for_timestep_sampling(
            o.weighting_scheme, batch, o.logit_mean, o.logit_std, o.mode_scale,
            generator=generator)
        scheduler = self.schedule
        indices = (u * scheduler.config.num_train_timesteps).long()
        timesteps = scheduler.timesteps[indices].to(self.device)
        sigmas = scheduler.sigmas[indices].to(self.device, latents.dtype).view(-1, 1, 1, 1)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        drop = torch.rand(batch, generator=generator)
        drop_text = drop < o.text_dropout
        drop_image = (drop >= o.text_dropout) & (drop < o.text_dropout + o.image_dropout)
        condition = condition * (~drop_image).to(condition)[:, None, None, None]
        text = _stack_text([self._row_text(i, row, m, prompt="" if dropped else None)
                            for (i, row, m), dropped in zip(texts, drop_text.tolist())],
                           self.device)
        pred = self.family.predict(self.parts, model, noisy, condition, text, timesteps,
                                   self.train_guidance)
        weighting = compute_loss_weighting_for_sd3(o.weighting_scheme, sigmas)
        target = noise - latents
        return (weighting.float() * (pred.float() - target.float()) ** 2).mean()

    # --- validation and export --------------------------------------------------------------

    def pipeline(self) -> Any:
        return self.family.editor_pipeline(self.parts)

    def validate(self, folder: Path, step: int, autocast: Any) -> dict[str, float]:
        """Edit held-out inputs (or training ones when none are held out) at the training
        size; save before | edit | target sheets and the L1 distance to the target."""
        import numpy as np
        import torch
        from PIL import Image

        from editkit.models.encoders import l1_distance

        rows = self._validation_rows()
        if not rows:
            return {}
        pipe = self.pipeline()
        pipe.set_progress_bar_config(disable=True)
        transformer = self.parts.transformer
        was_training = transformer.training
        transformer.eval()
        out_dir = Path(folder) / f"step-{step:08d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        l1 = []
        for n, row in enumerate(rows):
            with Image.open(row.input_image) as a, Image.open(row.edited_image) as b:
                before, after = paired_crop([a, b], self.square, None, False)
            call: dict[str, Any] = {"guidance_scale": self.guidance,
                                    "generator": torch.Generator().manual_seed(self.seed + n)}
            if self.options.cache_text:
                call.update(self._pipeline_text(row))
                prompts = None
            else:
                prompts = [row.prompt]
            with torch.no_grad(), autocast():
                image = self.family.edit(pipe, prompts, [before], self.steps, **call)[0]
            image = image.resize(after.size)
            self.tracker.sample_sheet(out_dir, row.id, [before, image, after], step)
            l1.append(l1_distance(after, image))
        transformer.train(was_training)
        metrics: dict[str, Any] = {"l1": round(float(np.mean(l1)), 6), "images": len(rows),
                                   "held_out": bool(self.held_out)}
        self.tracker.metrics(metrics, step)
        (out_dir / "prompts.txt").write_text("".join(f"{r.id}\t{r.prompt}\n" for r in rows))
        return metrics

    def _pipeline_text(self, row: Row) -> dict[str, Any]:
        """The pipeline's prompt-embedding arguments for `row`'s instruction from the cache
        (its text encoders are gone): the embeddings' names are the pipeline's own."""
        import inspect

        accepted = inspect.signature(self.family.pipeline_class().__call__).parameters
        out = {k: v[None].to(self.device, self.parts.dtype) if v.is_floating_point()
               else v[None].to(self.device)
               for k, v in self._row_text(-1, row, False).items() if k in accepted}
        if self.negative is not None:
            negative = self._row_text(-1, row, False, prompt=self.negative)
            out.update({f"negative_{k}": v[None].to(self.device, self.parts.dtype)
                        if v.is_floating_point() else v[None].to(self.device)
                        for k, v in negative.items() if f"negative_{k}" in accepted})
        return out

    def resume_at(self, step: int) -> None:
        self.tracker.resume_at(step)

    def log_scalar(self, name: str, value: float, step: int) -> None:
        self.tracker.scalar(name, value, step)

    def export(self, folder: Path) -> dict[str, Any]:
        """A LoRA file the family's pipeline loads with `load_lora_weights`, and what
        `editkit edit` needs to run it as trained."""
        self.family.save_lora(folder, self.parts.transformer)
        return {"type": "lora", "base": self.options.base, "family": self.family.name,
                "lora": "pytorch_lora_weights.safetensors", "conv_in": None,
                "rank": self.options.rank, "alpha": self.options.alpha or self.options.rank,
                "guidance": {"text": self.guidance}, "steps": self.steps,
                "base_probe": self.base_probe}

    def close(self) -> None:
        self.tracker.close()


def _stack_text(items: list[dict[str, Any]], device: Any) -> dict[str, Any]:
    """One batch of per-example embeddings; sequences of different lengths (Qwen's, whose
    mask marks the real tokens) are padded with zeros to the longest."""
    import torch

    out = {}
    for name in items[0]:
        values = [item[name] for item in items]
        if values[0].dim() >= 1 and len({v.shape[0] for v in values}) > 1:
            longest = max(v.shape[0] for v in values)
            values = [torch.cat([v, v.new_zeros((longest - v.shape[0], *v.shape[1:]))])
                      for v in values]
        out[name] = torch.stack(values).to(device)
    return out


def _save_atomic(save: Callable[..., None], tensors: dict[str, Any], file: Path) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    save(tensors, str(tmp))
    tmp.replace(file)

