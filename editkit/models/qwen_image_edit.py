"""Qwen-Image-Edit (and its Plus releases): a Qwen-Image transformer that reads the image to edit as
more packed latent tokens, and Qwen2.5-VL's hidden states of the instruction with the image
itself as text; true classifier-free guidance with a negative prompt.

Two diffusers pipelines run these models, and a model's model_index.json names its own:
QwenImageEditPipeline (Qwen/Qwen-Image-Edit: the VL model sees the image at about a megapixel)
and QwenImageEditPlusPipeline (Qwen-Image-Edit-2509 and -2511: several reference images per
edit, the VL model sees each at 384x384-ish). Both encode the image to edit for the transformer
at about a megapixel, whatever size the output is.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from editkit.models.flow import FlowFamily

PLUS = "QwenImageEditPlusPipeline"


@functools.cache
def processor_class() -> Any:
    """Qwen2VLProcessor holding only its image processor and tokenizer. transformers builds a
    Qwen2VLProcessor only with its video processor, and that needs torchvision; the edit
    pipelines give it images only, so this subclass (which loads a model's processor/ folder
    as it is) is what they run with here."""
    from transformers import ProcessorMixin, Qwen2VLProcessor

    class QwenVLImageProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor: Any = None, tokenizer: Any = None,
                     chat_template: Any = None, **kwargs: Any) -> None:
            self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
            self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer,
                                    chat_template=chat_template, **kwargs)

    return QwenVLImageProcessor


def __getattr__(name: str) -> Any:
    """`QwenVLImageProcessor`, made on first use (transformers is imported then)."""
    if name == "QwenVLImageProcessor":
        return processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class QwenImageEdit(FlowFamily):
    name = "qwen-image-edit"
    title = "Qwen-Image-Edit"
    text_to_image = PLUS
    editor = PLUS
    transformer_class: ClassVar[str] = "QwenImageTransformer2DModel"
    # train_dreambooth_lora_qwen_image.py's default --lora_layers
    lora_targets: ClassVar[tuple[str, ...]] = ("to_k", "to_q", "to_v", "to_out.0")
    # the model cards of 2509 and 2511: true_cfg_scale 4 with negative prompt " ", 40 steps;
    # the first Qwen-Image-Edit's: 50 steps
    default_guidance: ClassVar[float] = 4.0
    default_steps: ClassVar[int] = 40
    first_steps: ClassVar[int] = 50
    guidance_argument: ClassVar[str] = "true_cfg_scale"
    negative_text: ClassVar[str] = " "  # what the pipelines' true CFG guides against
    text_reads_image: ClassVar[bool] = True
    text_parts: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer", "processor")
    part_classes: ClassVar[dict[str, tuple[str, str]]] = {
        "transformer": ("diffusers", "QwenImageTransformer2DModel"),
        "vae": ("diffusers", "AutoencoderKLQwenImage"),
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
        "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration"),
        "tokenizer": ("transformers", "Qwen2Tokenizer"),
        "processor": ("editkit.models.qwen_image_edit", "QwenVLImageProcessor")}

    # --- loading --------------------------------------------------------------------------

    def editor_name(self, ref: Any) -> str:
        """The pipeline class `ref`'s model_index.json names (Plus when it cannot be read)."""
        from diffusers import DiffusionPipeline

        from editkit.models import ModelRef, resolve

        try:
            index = DiffusionPipeline.load_config(
                (ref if isinstance(ref, ModelRef) else resolve(ref)).location)
        except Exception:
            return PLUS
        name = index.get("_class_name", PLUS)
        return name if name in (PLUS, "QwenImageEditPipeline") else PLUS

    def load_processor(self, ref: Any) -> Any:
        """`ref`'s processor/ folder as `processor_class` (the pipelines' own loading of a
        Qwen2VLProcessor fails without torchvision)."""
        from editkit.models import load

        return load(processor_class(), ref, "processor", subfolder="processor")

    def load_editor(self, ref: Any, dtype: Any) -> Any:
        """The pipeline class the model names, with the processor loaded here (see
        `processor_class`)."""
        import diffusers

        from editkit.models import load

        return load(getattr(diffusers, self.editor_name(ref)), ref, f"{self.title} editor",
                    dtype=dtype, processor=self.load_processor(ref))

    def training_parts(self, ref: Any, dtype: Any = None) -> dict[str, Any]:
        """The base's parts, and `editor`: the pipeline class the model names (the two
        pipelines' text templates differ)."""
        return {**super().training_parts(ref, dtype), "editor": self.editor_name(ref)}

    def load_vae(self, ref: Any) -> Any:
        from diffusers import AutoencoderKLQwenImage

        from editkit.models import load

        return load(AutoencoderKLQwenImage, ref, "VAE", subfolder="vae")

    def recommended(self, pipe: Any) -> tuple[float, int]:
        """The model card's guidance and steps of the model `pipe` (a pipeline, or a trainer's
        parts with their `editor`) is."""
        first = getattr(pipe, "editor", type(pipe).__name__) == "QwenImageEditPipeline"
        return self.default_guidance, self.first_steps if first else self.default_steps

    # --- what the transformer sees ----------------------------------------------------------

    def latent_multiple(self, parts: Any) -> int:
        # the VAE's reduction (one per temporal-downsample entry), times the 2x2 packing
        return 2 ** len(parts.vae.temperal_downsample) * 2

    def condition_image(self, parts: Any, image: Any) -> Any:
        """The image to edit as both pipelines encode it for the transformer: resized to about
        a megapixel (sides multiples of 32) at its aspect ratio, whatever the output size."""
        from diffusers.image_processor import VaeImageProcessor
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
            VAE_IMAGE_SIZE,
            calculate_dimensions,
        )

        width, height = calculate_dimensions(VAE_IMAGE_SIZE, image.width / image.height)
        # the pipelines' image processor: Lanczos
        resizer = VaeImageProcessor(vae_scale_factor=self.latent_multiple(parts))
        return resizer.resize(image, height, width)

    def image_latents(self, parts: Any, pixels: Any) -> Any:
        """The VAE's mode of `pixels` as one frame, normalised by the latents' per-channel
        mean and std (`_encode_vae_image`)."""
        config = parts.vae.config
        latents = parts.vae.encode(pixels[:, :, None]).latent_dist.mode()
        shape = (1, config.z_dim, 1, 1, 1)
        mean = latents.new_tensor(config.latents_mean).view(shape)
        std = latents.new_tensor(config.latents_std).view(shape)
        return ((latents - mean) / std)[:, :, 0]

    def text_embeddings(self, parts: Any, prompts: list[str],
                        images: list[Any] | None = None) -> dict[str, Any]:
        """Qwen2.5-VL's last hidden states of each instruction with its image, by the
        pipeline's own `encode_prompt` (its template, the image as the VL model sees it, the
        system prompt's tokens dropped), one prompt at a time as the pipeline runs; padded
        with zeros to the longest, `prompt_embeds_mask` marking the real tokens."""
        import torch

        pipe = self._pipeline(parts)
        device = parts.text_encoder.device
        found = []
        for prompt, image in zip(prompts, images or [None] * len(prompts)):
            seen = None if image is None else self._seen_image(pipe, image)
            with torch.no_grad():
                embeds, _ = pipe.encode_prompt(prompt=[prompt], image=seen, device=device)
            found.append(embeds[0])
        longest = max(e.shape[0] for e in found)
        mask = torch.zeros(len(found), longest, dtype=torch.long, device=device)
        for i, e in enumerate(found):
            mask[i, :e.shape[0]] = 1
        embeds = torch.stack([torch.cat([e, e.new_zeros(longest - e.shape[0], e.shape[1])])
                              for e in found])
        return {"prompt_embeds": embeds, "prompt_embeds_mask": mask}

    def _seen_image(self, pipe: Any, image: Any) -> Any:
        """What `encode_prompt` is given: Plus, a list of the image resized to about 384x384
        (CONDITION_IMAGE_SIZE); the first pipeline, the image at its megapixel size."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
            CONDITION_IMAGE_SIZE,
            VAE_IMAGE_SIZE,
            calculate_dimensions,
        )

        plus = type(pipe).__name__ == PLUS
        area = CONDITION_IMAGE_SIZE if plus else VAE_IMAGE_SIZE
        width, height = calculate_dimensions(area, image.width / image.height)
        resized = pipe.image_processor.resize(image, height, width)
        return [resized] if plus else resized

    def _pipeline(self, parts: Any, scheduler: Any = None, transformer: Any = None) -> Any:
        """The pipeline `parts` are of (`parts.editor`, else Plus) around them; without a
        scheduler and transformer, it encodes text only. Parts a trainer has let go (None)
        stay None."""
        import diffusers

        cls = getattr(diffusers, getattr(parts, "editor", PLUS))
        return cls(scheduler=scheduler, vae=getattr(parts, "vae", None),
                   text_encoder=getattr(parts, "text_encoder", None),
                   tokenizer=getattr(parts, "tokenizer", None),
                   processor=getattr(parts, "processor", None), transformer=transformer)

    def predict(self, parts: Any, transformer: Any, noisy: Any, condition: Any,
                text: dict[str, Any], timesteps: Any, guidance: float | None) -> Any:
        """Noisy then condition tokens, each 2x2-packed, with `img_shapes` listing both (the
        transformer's rotary positions and, for 2511, the condition's zero timestep come from
        it); the text mask dropped when it marks every token, as `encode_prompt` does. The
        condition may be larger than the noisy latents (the pipelines encode it at a
        megapixel)."""
        import torch
        from diffusers import QwenImageEditPlusPipeline as Pipe

        dtype, device = parts.dtype, noisy.device
        count, channels, height, width = noisy.shape
        tokens = [Pipe._pack_latents(x.to(dtype), count, channels, *x.shape[-2:])
                  for x in (noisy, condition)]
        shapes = [[(1, height // 2, width // 2),
                   (1, condition.shape[-2] // 2, condition.shape[-1] // 2)]] * count
        mask = text.get("prompt_embeds_mask")
        mask = None if mask is None or bool(mask.all()) else mask.to(device)
        out = transformer(
            hidden_states=torch.cat(tokens, dim=1), timestep=timesteps.to(device, dtype) / 1000,
            encoder_hidden_states=text["prompt_embeds"].to(device, dtype),
            encoder_hidden_states_mask=mask, img_shapes=shapes, return_dict=False)[0]
        return Pipe._unpack_latents(out[:, :tokens[0].shape[1]], height, width, 1)[:, :, 0]

    # --- editing --------------------------------------------------------------------------

    def editor_pipeline(self, parts: Any, scheduler: Any = None) -> Any:
        """The pipeline around `parts`, with its own copy of the scheduler by default: a
        pipeline call sets the scheduler's timesteps to its few steps, and a trainer draws
        its training timesteps from `parts.scheduler`'s full schedule."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if scheduler is None:
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(parts.scheduler.config)
        return self._pipeline(parts, scheduler, parts.transformer)

    def run_pipeline(self, pipe: Any, prompts: list[str] | None, images: list[Any], steps: int,
                     height: int, width: int, **call: Any) -> list[Any]:
        """One pipeline call per image: the Plus pipeline reads a list of images as references
        for one edit, and takes one prompt a call. True guidance needs a negative prompt: the
        model card's " " unless its embeddings are given; without a guidance, the model
        card's. `generator` may be one per image; prompt embeddings (a trainer's cache) are
        split per image."""
        generators = call.pop("generator", None)
        if call.get(self.guidance_argument) is None:
            call[self.guidance_argument] = self.default_guidance
        if call.get("negative_prompt_embeds") is None:
            call.setdefault("negative_prompt", self.negative_text)
        rows = {k: call.pop(k) for k in list(call)
                if k.endswith(("prompt_embeds", "prompt_embeds_mask")) and call[k] is not None}
        out = []
        for i, image in enumerate(images):
            generator = generators[i] if isinstance(generators, list) else generators
            one = {k: v[i:i + 1] for k, v in rows.items()}
            prompt = None if prompts is None else prompts[i]
            out += pipe(image=image, prompt=prompt, num_inference_steps=steps, height=height,
                        width=width, generator=generator, **one, **call).images
        return out

    def negative_prompt(self, parts: Any, guidance: float) -> str | None:
        return self.negative_text if guidance > 1 else None
