"""The model-family seam: what a stage asks of a model instead of naming a diffusers pipeline.

A family knows how to load its text-to-image pipeline and its InstructPix2Pix editor, how to
run that editor on images of any size (`edit`), and how to turn prompts into what its
denoiser is called with (`Conditioning`): Stable Diffusion 1.x/2.x, one CLIP text encoder's
last hidden states; SDXL, two text encoders' penultimate hidden states side by side, the
second one's pooled embedding and the size and crop time ids. `family_of(pipe)` tells the
family of a loaded pipeline, `family_named(name)` of a name `editkit.models.model_family`
returned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch


@dataclass
class Conditioning:
    """Rows of denoiser conditioning: `hidden` (n, tokens, dim) for cross-attention and, for
    families with extra embeddings, `added` (name -> (n, ...)) for `added_cond_kwargs`."""

    hidden: torch.Tensor
    added: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def __getitem__(self, index: Any) -> "Conditioning":
        added = None if self.added is None else {k: v[index] for k, v in self.added.items()}
        return Conditioning(self.hidden[index], added)

    @staticmethod
    def cat(parts: list["Conditioning"]) -> "Conditioning":
        hidden = torch.cat([p.hidden for p in parts])
        if parts[0].added is None:
            return Conditioning(hidden)
        return Conditioning(hidden, {k: torch.cat([p.added[k] for p in parts])  # type: ignore
                                     for k in parts[0].added})

    def repeat_interleave(self, count: int) -> "Conditioning":
        added = None if self.added is None else \
            {k: v.repeat_interleave(count, dim=0) for k, v in self.added.items()}
        return Conditioning(self.hidden.repeat_interleave(count, dim=0), added)

    def to(self, dtype: Any) -> "Conditioning":
        added = None if self.added is None else {k: v.to(dtype) for k, v in self.added.items()}
        return Conditioning(self.hidden.to(dtype), added)

    def unet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `UNet2DConditionModel.forward` (only those the family uses,
        so Stable Diffusion's call is what it always was)."""
        if self.added is None:
            return {"encoder_hidden_states": self.hidden}
        return {"encoder_hidden_states": self.hidden, "added_cond_kwargs": self.added}


@torch.no_grad()
def encode_prompts(pipe: Any, texts: list[str]) -> torch.Tensor:
    """Text embeddings, each distinct text encoded once."""
    unique = list(dict.fromkeys(texts))
    ids = pipe.tokenizer(unique, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    device = pipe.unet.device
    embeds = pipe.text_encoder(ids.to(device))[0].to(pipe.unet.dtype)
    index = torch.tensor([unique.index(t) for t in texts], device=device)
    return embeds[index]


class ModelFamily(ABC):
    """One family of text-to-image models and their InstructPix2Pix editors."""

    name: ClassVar[str]
    title: ClassVar[str]
    text_to_image: ClassVar[str]  # diffusers pipeline class names
    editor: ClassVar[str]

    def pipeline_class(self, editor: bool = False) -> Any:
        import diffusers

        return getattr(diffusers, self.editor if editor else self.text_to_image)

    def load_text_to_image(self, ref: Any, device: str, dtype: Any) -> Any:
        """The text-to-image pipeline of `ref` on `device`, progress bars off."""
        from editkit.models import load

        pipe = load(self.pipeline_class(), ref, f"{self.title} model", torch_dtype=dtype,
                    **self.load_kwargs())
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def load_kwargs(self) -> dict[str, Any]:
        return {}

    def load_editor(self, ref: Any, dtype: Any) -> Any:
        """The family's InstructPix2Pix pipeline of `ref` (an editor, or a text-to-image base
        whose `conv_in` the caller widens), on the CPU."""
        from editkit.models import load

        return load(self.pipeline_class(editor=True), ref, "edit model", torch_dtype=dtype)

    @abstractmethod
    def edit(self, pipe: Any, prompts: list[str], images: list[Any], steps: int,
             on_step: Callable[[int], None] | None = None, **call: Any) -> list[Any]:
        """The editor `pipe` run on `images` (all one size) with one instruction each; the
        result is at the images' size. `on_step(i)` is called after step i; `call` holds the
        pipeline's other arguments (guidance_scale, image_guidance_scale, generator)."""
        raise NotImplementedError

    @abstractmethod
    def encode(self, pipe: Any, negative: list[str], prompts: list[str],
               size: tuple[int, int]) -> Conditioning:
        """Conditioning rows for `negative` (the unconditional prompts of classifier-free
        guidance) then `prompts`, for images of `size` (height, width)."""
        raise NotImplementedError

    # --- training (editkit.training) ------------------------------------------------------
    # The parts a trainer loads, by subfolder, and their classes (diffusers or transformers).
    # Training holds them in an object with these names as attributes (`training.unet.
    # Components`); the text encoders and tokenizers pair up in order.
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer",)
    part_classes: ClassVar[dict[str, tuple[str, str]]] = {
        "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel"),
        "tokenizer": ("transformers", "CLIPTokenizer"),
        "scheduler": ("diffusers", "DDPMScheduler")}
    part_titles: ClassVar[dict[str, str]] = {
        "unet": "UNet", "vae": "VAE", "text_encoder": "text encoder",
        "text_encoder_2": "second text encoder", "tokenizer": "tokenizer",
        "tokenizer_2": "second tokenizer", "scheduler": "scheduler"}

    def load_part(self, ref: Any, name: str) -> Any:
        """One part of `ref` (a subfolder: unet, vae, text_encoder, ..., scheduler; the
        scheduler as the DDPM noise scheduler training adds noise with)."""
        import importlib

        from editkit.models import load

        module, cls = self.part_classes[name]
        return load(getattr(importlib.import_module(module), cls), ref,
                    self.part_titles[name], subfolder=name)

    def training_parts(self, ref: Any) -> dict[str, Any]:
        """Every part a trainer needs, by name (the order of loading is fixed)."""
        names = ("unet", "vae", *self.text_encoders, *self.tokenizers, "scheduler")
        return {name: self.load_part(ref, name) for name in names}

    def vae_dtype(self, vae: Any, weight_dtype: Any) -> Any:
        """The dtype the frozen VAE is held and run in under mixed precision."""
        return weight_dtype

    def activation_scale(self, unet: Any) -> float | None:
        """The UNet's training activations per pixel relative to SD 1.5's, for the memory
        estimate (`editkit.training.memory`); None: in proportion to its parameters."""
        return None

    @abstractmethod
    def caption_conditioning(self, parts: Any, prompts: list[str], grad: bool = False,
                             with_null: bool = False) -> Any:
        """Training conditioning (a `Conditioning`, time ids not yet added) of `prompts`, with
        gradients when `grad` (a trained text encoder); with `with_null`, the pair (prompts',
        the unconditional row of guidance as the encoders now read it)."""
        raise NotImplementedError

    def null_conditioning(self, parts: Any) -> Any:
        """The unconditional text of guidance (one row), as an editor pipeline feeds it."""
        return self.caption_conditioning(parts, [""])

    def editor_call_kwargs(self, size: tuple[int, int]) -> dict[str, Any]:
        """What the editor pipeline's call needs besides the image to edit an image of `size`
        (width, height) at that size."""
        return {}

    def with_time_ids(self, text: Conditioning, geometry: list[tuple[int, ...]]) -> Conditioning:
        """`text` with what the family's UNet takes besides the text, per example (SDXL:
        size and crop time ids from `geometry`, (original h, w, crop top, left, target h,
        w) each)."""
        return text

    @abstractmethod
    def editor_pipeline(self, parts: Any, scheduler: Any) -> Any:
        """The family's InstructPix2Pix pipeline around a trainer's parts."""
        raise NotImplementedError

    def save_lora(self, folder: Any, unet: Any, text_encoders: dict[str, Any]) -> None:
        """A LoRA file of `unet` and the trained text encoders (name -> module, None when not
        trained) that the family's editor pipeline reads with `load_lora_weights`."""
        from editkit.models.lora import lora_layers, lora_metadata

        kwargs: dict[str, Any] = {}
        for name in self.text_encoders:
            module = text_encoders.get(name)
            kwargs[f"{name}_lora_layers"] = None if module is None else lora_layers(module)
            kwargs[f"{name}_lora_adapter_metadata"] = (None if module is None
                                                       else lora_metadata(module))
        self.pipeline_class(editor=True).save_lora_weights(
            folder, unet_lora_layers=lora_layers(unet),
            unet_lora_adapter_metadata=lora_metadata(unet), safe_serialization=True, **kwargs)


class StableDiffusion(ModelFamily):
    name = "sd"
    title = "Stable Diffusion"
    text_to_image = "StableDiffusionPipeline"
    editor = "StableDiffusionInstructPix2PixPipeline"

    def load_kwargs(self) -> dict[str, Any]:
        return {"safety_checker": None, "requires_safety_checker": False}

    def encode(self, pipe: Any, negative: list[str], prompts: list[str],
               size: tuple[int, int]) -> Conditioning:
        return Conditioning(encode_prompts(pipe, negative + prompts))

    def edit(self, pipe: Any, prompts: list[str], images: list[Any], steps: int,
             on_step: Callable[[int], None] | None = None, **call: Any) -> list[Any]:
        if on_step is not None:
            def step_end(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                on_step(i)
                return kwargs

            call["callback_on_step_end"] = step_end
        return pipe(prompts, image=images, num_inference_steps=steps, **call).images

    def caption_conditioning(self, parts: Any, prompts: list[str], grad: bool = False,
                             with_null: bool = False) -> Any:
        tok = parts.tokenizer
        texts = prompts + [""] if with_null else prompts
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids.to(parts.text_encoder.device)
        with torch.set_grad_enabled(grad):
            text = Conditioning(parts.text_encoder(ids)[0])
        return (text[:-1], text[-1:]) if with_null else text

    def editor_pipeline(self, parts: Any, scheduler: Any) -> Any:
        return self.pipeline_class(editor=True)(
            vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
            unet=parts.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)


class StableDiffusionXL(ModelFamily):
    name = "sdxl"
    title = "SDXL"
    text_to_image = "StableDiffusionXLPipeline"
    editor = "StableDiffusionXLInstructPix2PixPipeline"

    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    part_classes = {**ModelFamily.part_classes,
                    "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
                    "tokenizer_2": ("transformers", "CLIPTokenizer")}

    @torch.no_grad()
    def encode_texts(self, pipe: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden (n, 77, dim1 + dim2), pooled (n, proj)) as `StableDiffusionXLPipeline.
        encode_prompt` makes them: each encoder's penultimate hidden states, the pooled
        embedding of the last encoder; each distinct text encoded once."""
        embeds, pooled = self.text_states(pipe, texts)
        dtype = pipe.unet.dtype  # diffusers finds it by walking the model: once
        return embeds.to(dtype), pooled.to(dtype)

    def text_states(self, parts: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode_texts` of the encoders and tokenizers `parts` (a pipeline or a trainer's
        parts) holds, in their dtype, with gradients where they are enabled."""
        unique = list(dict.fromkeys(texts))
        device = parts.unet.device
        hidden, pooled = [], None
        pairs = [(parts.tokenizer, parts.text_encoder),
                 (parts.tokenizer_2, parts.text_encoder_2)]
        for tokenizer, encoder in pairs:
            if tokenizer is None or encoder is None:
                continue
            ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            out = encoder(ids.to(device), output_hidden_states=True)
            pooled = out[0]
            hidden.append(out.hidden_states[-2])
        index = torch.tensor([unique.index(t) for t in texts], device=device)
        assert pooled is not None
        return torch.cat(hidden, dim=-1)[index], pooled[index]

    def training_parts(self, ref: Any) -> dict[str, Any]:
        from pathlib import Path

        from editkit.models import _hub_cached_json, _read_json, resolve

        parts = super().training_parts(ref)
        found = resolve(ref) if isinstance(ref, str) else ref
        index = (_hub_cached_json(found.location, "model_index.json") if found.source == "hub"
                 else _read_json(Path(found.location) / "model_index.json")) or {}
        # as the pipeline's own default: the unconditional text of guidance is zeros
        parts["force_zeros_for_empty_prompt"] = bool(index.get("force_zeros_for_empty_prompt",
                                                               True))
        return parts

    def activation_scale(self, unet: Any) -> float | None:
        # measured: the tensors autograd saves in a bf16 forward of SDXL's UNet at 1024 px,
        # 33.7 GiB, against SD 1.5's at 512 px, 7.9 GiB (4.27 for 4x the pixels), scaled for a
        # smaller UNet of SDXL's shape by its parameters
        return 1.07 * sum(p.numel() for p in unet.parameters()) / 2.567e9

    def vae_dtype(self, vae: Any, weight_dtype: Any) -> Any:
        # SDXL's VAE overflows in fp16 (its config says force_upcast): kept in fp32
        return torch.float32 if getattr(vae.config, "force_upcast", False) else weight_dtype

    def caption_conditioning(self, parts: Any, prompts: list[str], grad: bool = False,
                             with_null: bool = False) -> Any:
        zeros = with_null and parts.force_zeros_for_empty_prompt
        texts = prompts + [""] if with_null and not zeros else prompts
        with torch.set_grad_enabled(grad):
            hidden, pooled = self.text_states(parts, texts)
        text = Conditioning(hidden, {"text_embeds": pooled})
        if not with_null:
            return text
        if zeros:  # the unconditional text the SDXL pipelines feed: zeros, not ""'s encoding
            return text, Conditioning(hidden.new_zeros((1, *hidden.shape[1:])),
                                      {"text_embeds": pooled.new_zeros((1, *pooled.shape[1:]))})
        return text[:-1], text[-1:]

    def null_conditioning(self, parts: Any) -> Any:
        null = self.caption_conditioning(parts, [""])
        if not parts.force_zeros_for_empty_prompt:
            return null
        return Conditioning(torch.zeros_like(null.hidden),
                            {k: torch.zeros_like(v) for k, v in null.added.items()})

    def editor_call_kwargs(self, size: tuple[int, int]) -> dict[str, Any]:
        # without them the SDXL editor resizes the image to the model's default size
        return {"width": size[0], "height": size[1]}

    def with_time_ids(self, text: Conditioning, geometry: list[tuple[int, ...]]) -> Conditioning:
        ids = torch.tensor(geometry, dtype=text.hidden.dtype, device=text.hidden.device)
        return Conditioning(text.hidden, {**(text.added or {}), "time_ids": ids})

    def editor_pipeline(self, parts: Any, scheduler: Any) -> Any:
        return self.pipeline_class(editor=True)(
            vae=parts.vae, text_encoder=parts.text_encoder, text_encoder_2=parts.text_encoder_2,
            tokenizer=parts.tokenizer, tokenizer_2=parts.tokenizer_2, unet=parts.unet,
            scheduler=scheduler, force_zeros_for_empty_prompt=parts.force_zeros_for_empty_prompt,
            add_watermarker=False)

    def time_ids(self, pipe: Any, count: int, size: tuple[int, int],
                 like: torch.Tensor | None = None) -> torch.Tensor:
        """(count, 6): original size, crop top-left (0, 0) and target size, all `size`; on
        `like`'s device and dtype, else the UNet's."""
        device, dtype = (like.device, like.dtype) if like is not None else \
            (pipe.unet.device, pipe.unet.dtype)
        ids = torch.tensor([[*size, 0, 0, *size]], dtype=dtype, device=device)
        return ids.repeat(count, 1)

    def encode(self, pipe: Any, negative: list[str], prompts: list[str],
               size: tuple[int, int]) -> Conditioning:
        hidden, pooled = self.encode_texts(pipe, prompts)
        if negative and all(n == "" for n in negative) and \
                getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            # as the SDXL pipelines do: an empty negative prompt is zeros, not its encoding
            neg_hidden = hidden.new_zeros((len(negative), *hidden.shape[1:]))
            neg_pooled = pooled.new_zeros((len(negative), *pooled.shape[1:]))
        elif negative:
            neg_hidden, neg_pooled = self.encode_texts(pipe, negative)
        else:
            neg_hidden, neg_pooled = hidden[:0], pooled[:0]
        count = len(negative) + len(prompts)
        return Conditioning(torch.cat([neg_hidden, hidden]), {
            "text_embeds": torch.cat([neg_pooled, pooled]),
            "time_ids": self.time_ids(pipe, count, size, like=hidden)})

    def edit(self, pipe: Any, prompts: list[str], images: list[Any], steps: int,
             on_step: Callable[[int], None] | None = None, **call: Any) -> list[Any]:
        # the SDXL editor works at its native size unless told the image's; its original and
        # target sizes (the time ids) then default to that size too
        width, height = images[0].size
        if on_step is not None:  # this pipeline has only the older per-step callback
            call.update(callback=lambda i, _t, _latents: on_step(i), callback_steps=1)
        return pipe(prompts, image=images, num_inference_steps=steps, height=height,
                    width=width, **call).images


FAMILIES: dict[str, ModelFamily] = {"sd": StableDiffusion(), "ip2p": StableDiffusion(),
                                    "sdxl": StableDiffusionXL(),
                                    "sdxl-ip2p": StableDiffusionXL()}


def family_named(name: str | None) -> ModelFamily:
    """The family of a `model_family` name; an unknown one (None) is Stable Diffusion, as a
    hub id editkit cannot tell offline was before families were told apart."""
    return FAMILIES.get(name or "sd", FAMILIES["sd"])


def family_for(ref: Any) -> ModelFamily:
    """The family of the model `ref` names (configs only: no weights are read; a built-in
    tiny model not built yet is built first, so its config can tell)."""
    from editkit.models import model_family, resolve
    from editkit.models.tiny import BUILDERS

    if isinstance(ref, str) and ref.strip() in BUILDERS:
        ref = resolve(ref.strip())
    return family_named(model_family(ref))


def family_of(pipe: Any) -> ModelFamily:
    """The family of a loaded pipeline, by its parts."""
    if getattr(pipe, "text_encoder_2", None) is not None or \
            getattr(pipe.unet.config, "addition_embed_type", None) == "text_time":
        return FAMILIES["sdxl"]
    return FAMILIES["sd"]
