"""What a model family is: the contract each family implements (`ModelFamily`) and the
conditioning rows a UNet family's denoiser is called with (`Conditioning`).

`editkit.models.families` holds the families themselves and tells which one a model is.
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

    def edit_defaults(self, pipe: Any) -> tuple[dict[str, float] | None, int]:
        """(guidance, denoising steps) the family's editors run with when neither the user
        nor the editor's editkit_weights.json says: None is InstructPix2Pix's guidance."""
        return None, 20

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
