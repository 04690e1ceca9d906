"""FLUX.1 Kontext: a FLUX.1 transformer that reads the image to edit as tokens beside the
latents (their position ids' first coordinate 1), CLIP's pooled and T5's hidden states as text,
and an embedded guidance (a guidance-distilled model)."""

from __future__ import annotations

from typing import Any, ClassVar

from editkit.models.family import ModelFamily
from editkit.models.flow import FlowFamily


class FluxKontext(FlowFamily):
    name = "flux-kontext"
    title = "FLUX.1 Kontext"
    text_to_image = "FluxKontextPipeline"
    editor = "FluxKontextPipeline"
    transformer_class: ClassVar[str] = "FluxTransformer2DModel"
    # train_dreambooth_lora_flux_kontext.py's default --lora_layers
    lora_targets: ClassVar[tuple[str, ...]] = (
        "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj",
        "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2",
        "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp")
    default_guidance: ClassVar[float] = 2.5  # FLUX.1-Kontext-dev's model card, for edits
    default_steps: ClassVar[int] = 28
    # the reference trainer's --guidance_scale: what the embedded guidance is trained at
    train_guidance: ClassVar[float] = 3.5
    # T5 tokens: the pipeline's and the reference trainer's max_sequence_length
    max_sequence_length: ClassVar[int] = 512
    text_parts: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer", "text_encoder_2",
                                             "tokenizer_2")
    part_classes: ClassVar[dict[str, tuple[str, str]]] = {
        **ModelFamily.part_classes,
        "text_encoder_2": ("transformers", "T5EncoderModel"),
        "tokenizer_2": ("transformers", "T5TokenizerFast")}

    def load_vae(self, ref: Any) -> Any:
        from diffusers import AutoencoderKL

        from editkit.models import load

        return load(AutoencoderKL, ref, "VAE", subfolder="vae")

    def latent_multiple(self, parts: Any) -> int:
        # the VAE's reduction, times the 2x2 patches latents are packed into
        return 2 ** (len(parts.vae.config.block_out_channels) - 1) * 2

    def image_latents(self, parts: Any, pixels: Any) -> Any:
        config = parts.vae.config
        latents = parts.vae.encode(pixels).latent_dist.mode()
        return (latents - config.shift_factor) * config.scaling_factor

    def text_embeddings(self, parts: Any, prompts: list[str],
                        images: list[Any] | None = None) -> dict[str, Any]:
        """CLIP's pooled output and T5's last hidden states, as `encode_prompt` makes them
        (CLIP's 77 tokens, T5's `max_sequence_length`, both padded to their length)."""
        import torch

        with torch.no_grad():
            clip = parts.text_encoder
            ids = parts.tokenizer(prompts, padding="max_length", truncation=True,
                                  max_length=parts.tokenizer.model_max_length,
                                  return_tensors="pt").input_ids
            pooled = clip(ids.to(clip.device), output_hidden_states=False).pooler_output
            t5 = parts.text_encoder_2
            ids = parts.tokenizer_2(prompts, padding="max_length", truncation=True,
                                    max_length=self.max_sequence_length,
                                    return_tensors="pt").input_ids
            hidden = t5(ids.to(t5.device), output_hidden_states=False)[0]
        return {"prompt_embeds": hidden.to(t5.dtype), "pooled_prompt_embeds": pooled.to(clip.dtype)}

    def predict(self, parts: Any, transformer: Any, noisy: Any, condition: Any,
                text: dict[str, Any], timesteps: Any, guidance: float | None) -> Any:
        """Noisy then condition tokens, 2x2-packed; the condition's ids as the noisy ones' with
        their first coordinate 1; T5's tokens with zero ids; the guidance embedded (the
        reference trainer's when not given)."""
        import torch
        from diffusers import FluxKontextPipeline as Pipe

        dtype, device = parts.dtype, noisy.device
        count, channels, height, width = noisy.shape
        tokens = [Pipe._pack_latents(x.to(dtype), count, channels, height, width)
                  for x in (noisy, condition)]
        ids = Pipe._prepare_latent_image_ids(count, height // 2, width // 2, device, dtype)
        condition_ids = ids.clone()
        condition_ids[..., 0] = 1
        hidden = text["prompt_embeds"].to(device, dtype)
        if parts.transformer.config.guidance_embeds:
            scale = self.train_guidance if guidance is None else guidance
            embedded = torch.full((count,), scale, device=device, dtype=torch.float32)
        else:
            embedded = None
        out = transformer(
            hidden_states=torch.cat(tokens, dim=1), timestep=timesteps.to(device, dtype) / 1000,
            guidance=embedded, pooled_projections=text["pooled_prompt_embeds"].to(device, dtype),
            encoder_hidden_states=hidden,
            txt_ids=torch.zeros(hidden.shape[1], 3, device=device, dtype=dtype),
            img_ids=torch.cat([ids, condition_ids]), return_dict=False)[0]
        return Pipe._unpack_latents(out[:, :tokens[0].shape[1]], height, width, 1)

    def editor_pipeline(self, parts: Any, scheduler: Any = None) -> Any:
        """The pipeline around `parts`, with its own copy of the scheduler by default: a
        pipeline call sets the scheduler's timesteps to its few steps, and a trainer draws
        its training timesteps from `parts.scheduler`'s full schedule."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if scheduler is None:
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(parts.scheduler.config)
        return self.pipeline_class()(
            scheduler=scheduler, vae=parts.vae,
            text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
            text_encoder_2=parts.text_encoder_2, tokenizer_2=parts.tokenizer_2,
            transformer=parts.transformer)

    def run_pipeline(self, pipe: Any, prompts: list[str], images: list[Any], steps: int,
                     height: int, width: int, **call: Any) -> list[Any]:
        """The images edited at their own size: the pipeline otherwise resizes the input to
        the nearest of the resolutions Kontext was trained at (`_auto_resize`) and the output
        to `max_area` (a megapixel) at the requested aspect ratio. Without a guidance, the
        model card's."""
        call.setdefault("guidance_scale", self.default_guidance)
        return pipe(image=images, prompt=prompts, num_inference_steps=steps, height=height,
                    width=width, max_area=height * width, _auto_resize=False, **call).images
