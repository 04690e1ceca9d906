"""The model-family seam: what a stage asks of a model instead of naming a diffusers pipeline.

A family knows how to load its text-to-image pipeline and how to turn prompts into what its
denoiser is called with (`Conditioning`): Stable Diffusion 1.x/2.x, one CLIP text encoder's
last hidden states; SDXL, two text encoders' penultimate hidden states side by side, the
second one's pooled embedding and the size and crop time ids. `family_of(pipe)` tells the
family of a loaded pipeline, `family_named(name)` of a name `editkit.models.model_family`
returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

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

    def unet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `UNet2DConditionModel.forward` (only those the family uses,
        so Stable Diffusion's call is what it always was)."""
        if self.added is None:
            return {"encoder_hidden_states": self.hidden}
        return {"encoder_hidden_states": self.hidden, "added_cond_kwargs": self.added}


class ModelFamily:
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

    def encode(self, pipe: Any, negative: list[str], prompts: list[str],
               size: tuple[int, int]) -> Conditioning:
        """Conditioning rows for `negative` (the unconditional prompts of classifier-free
        guidance) then `prompts`, for images of `size` (height, width)."""
        raise NotImplementedError


class StableDiffusion(ModelFamily):
    name = "sd"
    title = "Stable Diffusion"
    text_to_image = "StableDiffusionPipeline"
    editor = "StableDiffusionInstructPix2PixPipeline"

    def load_kwargs(self) -> dict[str, Any]:
        return {"safety_checker": None, "requires_safety_checker": False}

    def encode(self, pipe: Any, negative: list[str], prompts: list[str],
               size: tuple[int, int]) -> Conditioning:
        from editkit.diffusion.sampling import encode_prompts

        return Conditioning(encode_prompts(pipe, negative + prompts))


class StableDiffusionXL(ModelFamily):
    name = "sdxl"
    title = "SDXL"
    text_to_image = "StableDiffusionXLPipeline"
    editor = "StableDiffusionXLInstructPix2PixPipeline"

    @torch.no_grad()
    def encode_texts(self, pipe: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden (n, 77, dim1 + dim2), pooled (n, proj)) as `StableDiffusionXLPipeline.
        encode_prompt` makes them: each encoder's penultimate hidden states, the pooled
        embedding of the last encoder; each distinct text encoded once."""
        unique = list(dict.fromkeys(texts))
        device = pipe.unet.device
        hidden, pooled = [], None
        pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        for tokenizer, encoder in pairs:
            if tokenizer is None or encoder is None:
                continue
            ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            out = encoder(ids.to(device), output_hidden_states=True)
            pooled = out[0]
            hidden.append(out.hidden_states[-2])
        index = torch.tensor([unique.index(t) for t in texts], device=device)
        embeds = torch.cat(hidden, dim=-1).to(pipe.unet.dtype)[index]
        assert pooled is not None
        return embeds, pooled.to(pipe.unet.dtype)[index]

    def time_ids(self, pipe: Any, count: int, size: tuple[int, int]) -> torch.Tensor:
        """(count, 6): original size, crop top-left (0, 0) and target size, all `size`."""
        ids = torch.tensor([[*size, 0, 0, *size]], dtype=pipe.unet.dtype,
                           device=pipe.unet.device)
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
            "time_ids": self.time_ids(pipe, count, size)})


FAMILIES: dict[str, ModelFamily] = {"sd": StableDiffusion(), "ip2p": StableDiffusion(),
                                    "sdxl": StableDiffusionXL(),
                                    "sdxl-ip2p": StableDiffusionXL()}


def family_named(name: str | None) -> ModelFamily:
    """The family of a `model_family` name; an unknown one (None) is Stable Diffusion, as a
    hub id editkit cannot tell offline was before families were told apart."""
    return FAMILIES.get(name or "sd", FAMILIES["sd"])


def family_for(ref: Any) -> ModelFamily:
    """The family of the model `ref` names (configs only: no weights are read)."""
    from editkit.models import model_family

    return family_named(model_family(ref))


def family_of(pipe: Any) -> ModelFamily:
    """The family of a loaded pipeline, by its parts."""
    if getattr(pipe, "text_encoder_2", None) is not None or \
            getattr(pipe.unet.config, "addition_embed_type", None) == "text_time":
        return FAMILIES["sdxl"]
    return FAMILIES["sd"]
