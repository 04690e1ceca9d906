"""FLUX.2 klein (4B and 9B): a FLUX.2 transformer that reads the image to edit as reference tokens
(a time offset in their position ids), Qwen3 hidden states of three layers as text, and
latents patchified 2x2 and batch-normalised by the VAE's running statistics.

Two variants share the pipeline: the step-distilled FLUX.2-klein-4B/9B (4 steps, guidance
ignored) and the undistilled FLUX.2-klein-base-4B/9B (about 50 steps, classifier-free guidance
against the empty prompt), told apart by model_index.json's `is_distilled`. The base is what
the reference trainer fine-tunes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from editkit.errors import InputError
from editkit.models.family import ModelFamily
from editkit.models.flow import FlowFamily

BASE_GUIDANCE = 4.0  # FLUX.2-klein-base-4B's model card (the pipeline's own default too)
BASE_STEPS = 50


class Flux2Klein(FlowFamily):
    name = "flux2-klein"
    title = "FLUX.2 klein"
    text_to_image = "Flux2KleinPipeline"
    editor = "Flux2KleinPipeline"
    transformer_class: ClassVar[str] = "Flux2Transformer2DModel"
    # train_dreambooth_lora_flux2_klein_img2img.py's default: the double blocks' attention
    # projections, the single blocks' fused qkv+mlp input and (of up to 24 blocks) their output
    lora_targets: ClassVar[tuple[str, ...]] = (
        "to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj",
        *(f"single_transformer_blocks.{i}.attn.to_out" for i in range(24)))
    # FLUX.2-klein-4B's model card: the step-distilled model in 4 steps; guidance has no effect
    default_guidance: ClassVar[float] = 1.0
    default_steps: ClassVar[int] = 4
    # the Qwen3 layers whose hidden states are stacked as text (the pipeline's default) and the
    # tokens the instruction is padded to (the pipeline's and the reference trainer's)
    text_layers: ClassVar[tuple[int, ...]] = (9, 18, 27)
    max_sequence_length: ClassVar[int] = 512
    part_classes: ClassVar[dict[str, tuple[str, str]]] = {
        **ModelFamily.part_classes,
        "text_encoder": ("transformers", "Qwen3ForCausalLM"),
        "tokenizer": ("transformers", "Qwen2TokenizerFast")}

    @staticmethod
    def distilled(pipe: Any) -> bool:
        """Whether `pipe` (a pipeline, or a trainer's parts) is a step-distilled klein."""
        config = getattr(pipe, "config", None)
        if config is None:
            return bool(getattr(pipe, "is_distilled", False))
        return bool(getattr(config, "is_distilled", False))

    def recommended(self, pipe: Any) -> tuple[float, int]:
        if self.distilled(pipe):
            return self.default_guidance, self.default_steps
        return BASE_GUIDANCE, BASE_STEPS

    def negative_prompt(self, parts: Any, guidance: float) -> str | None:
        # a base model guides against the empty prompt; a distilled one does not guide
        return None if self.distilled(parts) or guidance <= 1 else ""

    def training_parts(self, ref: Any, dtype: Any = None) -> dict[str, Any]:
        """The parts, and `is_distilled` from model_index.json (validation edits of a base
        use classifier-free guidance; a distilled model's pipeline skips it)."""
        from editkit.models import resolve

        parts = super().training_parts(ref, dtype)
        found = resolve(ref) if isinstance(ref, str) else ref
        try:
            index = self.pipeline_class().load_config(found.location)
        except (OSError, ValueError):  # no model_index.json to be had: the pipeline's default
            index = {}
        parts["is_distilled"] = bool(index.get("is_distilled", False))
        return parts

    def load_vae(self, ref: Any) -> Any:
        from diffusers import AutoencoderKLFlux2

        from editkit.models import load

        return load(AutoencoderKLFlux2, ref, "VAE", subfolder="vae")

    def latent_multiple(self, parts: Any) -> int:
        # the VAE's reduction, times the 2x2 patchify
        return 2 ** (len(parts.vae.config.block_out_channels) - 1) * 2

    def image_latents(self, parts: Any, pixels: Any) -> Any:
        """The VAE's mode, patchified 2x2 and normalised by the batch-norm statistics, as
        `_encode_vae_image` does: (B, 4 x latent channels, H/16, W/16)."""
        import torch
        from diffusers import Flux2KleinPipeline as Pipe

        vae = parts.vae
        latents = Pipe._patchify_latents(vae.encode(pixels).latent_dist.mode())
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        return (latents - mean) / std.to(latents)

    def text_embeddings(self, parts: Any, prompts: list[str],
                        images: list[Any] | None = None) -> dict[str, Any]:
        """Each instruction in Qwen3's chat template (thinking off), padded to
        `max_sequence_length` tokens, its hidden states of `text_layers` side by side: what
        `encode_prompt` makes (the transformer reads the padding too: no mask)."""
        import torch
        from diffusers import Flux2KleinPipeline as Pipe

        with torch.no_grad():
            embeds = Pipe._get_qwen3_prompt_embeds(
                parts.text_encoder, parts.tokenizer, prompts,
                max_sequence_length=self.max_sequence_length,
                hidden_states_layers=self.text_layers)
        return {"prompt_embeds": embeds}

    def predict(self, parts: Any, transformer: Any, noisy: Any, condition: Any,
                text: dict[str, Any], timesteps: Any, guidance: float | None) -> Any:
        """Noisy then condition tokens (one per latent pixel); the condition's position ids
        those of the pipeline's first reference image (time coordinate 10); the text's ids
        counting its tokens; an embedded guidance only where the transformer has one (the
        reference trainer's rule: klein's has none)."""
        import torch
        from diffusers import Flux2KleinPipeline as Pipe

        dtype, device = parts.dtype, noisy.device
        count, _, height, width = noisy.shape
        hidden = text["prompt_embeds"].to(device, dtype)
        ids = Pipe._prepare_latent_ids(noisy).to(device)
        condition_ids = Pipe._prepare_image_ids([condition[:1]]).to(device)
        tokens = torch.cat([Pipe._pack_latents(noisy), Pipe._pack_latents(condition)], dim=1)
        embedded = None
        if parts.transformer.config.guidance_embeds and guidance is not None:
            embedded = torch.full((count,), guidance, device=device, dtype=torch.float32)
        out = transformer(
            hidden_states=tokens.to(dtype), timestep=timesteps.to(device, dtype) / 1000,
            guidance=embedded, encoder_hidden_states=hidden,
            txt_ids=Pipe._prepare_text_ids(hidden).to(device),
            img_ids=torch.cat([ids, condition_ids.expand(count, -1, -1)], dim=1),
            return_dict=False)[0]
        return Pipe._unpack_latents_with_ids(out[:, :height * width], ids, height, width)

    def editor_pipeline(self, parts: Any, scheduler: Any = None) -> Any:
        return self.pipeline_class()(
            scheduler=scheduler or parts.scheduler, vae=parts.vae,
            text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
            transformer=parts.transformer, is_distilled=self.distilled(parts))

    def run_pipeline(self, pipe: Any, prompts: list[str] | None, images: list[Any],
                     steps: int, height: int, width: int, **call: Any) -> list[Any]:
        """One pipeline call per image (it reads a list of images as the references of one
        edit), each at the image's size; the generators and prompt embeddings of a batch
        (when given instead of `prompts`) are shared out. Without a guidance, the loaded
        variant's recommended one."""
        from PIL import Image

        call.setdefault("guidance_scale", self.recommended(pipe)[0])
        generator = call.pop("generator", None)
        edited = []
        for k, image in enumerate(images):
            self._check_image(pipe, image)
            one = {name: value[k:k + 1] if name.endswith("prompt_embeds")
                   and len(images) > 1 and value.shape[0] == len(images) else value
                   for name, value in call.items()}
            if prompts is not None:
                one["prompt"] = prompts[k]
            out = pipe(image=image, num_inference_steps=steps, height=height, width=width,
                       generator=generator[k] if isinstance(generator, list) else generator,
                       max_sequence_length=self.max_sequence_length,
                       text_encoder_out_layers=self.text_layers, **one).images[0]
            if isinstance(out, Image.Image) and out.size != (width, height):
                # sides that are not multiples of 16: the pipeline cropped them down
                out = out.resize((width, height), Image.Resampling.LANCZOS)
            edited.append(out)
        return edited

    def _check_image(self, pipe: Any, image: Any) -> None:
        try:
            pipe.image_processor.check_image_input(image)
        except ValueError as exc:
            raise InputError(f"{self.title} cannot edit this image: {exc}",
                             "edit at a size of at least 64 px a side, sides at most 8:1 "
                             "(--size)") from exc
