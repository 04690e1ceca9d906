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

from typing import Any, Callable

import torch

from editkit.models.family import Conditioning, ModelFamily, encode_prompts
from editkit.models.flux2_klein import Flux2Klein
from editkit.models.flux_kontext import FluxKontext
from editkit.models.qwen_image_edit import QwenImageEdit

__all__ = ["Conditioning", "ModelFamily", "encode_prompts", "FAMILIES", "family_named",
           "family_for", "family_of"]


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
                                    "sdxl-ip2p": StableDiffusionXL(),
                                    "flux-kontext": FluxKontext(),
                                    "flux2-klein": Flux2Klein(),
                                    "qwen-image-edit": QwenImageEdit()}


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
    """The family of a loaded pipeline, by its class or its parts."""
    for family in FAMILIES.values():
        if getattr(family, "flow", False) and type(pipe).__name__ == family.editor:
            return family
    if getattr(pipe, "text_encoder_2", None) is not None or \
            getattr(pipe.unet.config, "addition_embed_type", None) == "text_time":
        return FAMILIES["sdxl"]
    return FAMILIES["sd"]
