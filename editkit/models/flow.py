"""Flow-matching instruction editors: FLUX.1 Kontext, FLUX.2 klein and Qwen-Image-Edit.

A transformer denoises packed latents; the image to edit is given as more tokens beside them
(its own latents, with position ids that set it apart), and the instruction as the text
encoder's hidden states. There is no UNet, no image guidance and no Prompt-to-Prompt: what a
stage asks of these families is to load the editor, edit with it, and the four things a LoRA
trainer needs (`image_latents`, `text_embeddings`, `predict`, `save_lora`). Training is flow
matching as each family's reference trainer does it (`editkit.training.flow`): the noisy
latents are (1 - sigma) x + sigma noise, and the transformer predicts noise - x.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Callable, ClassVar

from editkit.errors import ModelError
from editkit.models.family import ModelFamily


class FlowFamily(ModelFamily):
    """One flow-matching editor family. Subclasses name their diffusers classes and fill in
    the training methods; loading, editing and saving LoRA files are shared."""

    flow: ClassVar[bool] = True
    transformer_class: ClassVar[str]  # the diffusers class of the denoiser
    # LoRA target modules by default: those of the family's diffusers reference trainer
    lora_targets: ClassVar[tuple[str, ...]]
    default_guidance: ClassVar[float]  # what `editkit edit` runs a base editor with
    default_steps: ClassVar[int]  # the pipeline's recommended denoising steps
    guidance_argument: ClassVar[str] = "guidance_scale"  # Qwen-Image-Edit: true_cfg_scale
    # whether the text encoder reads the image to edit too (Qwen-Image-Edit's Qwen2.5-VL):
    # its text embeddings are then cached per example, not per instruction
    text_reads_image: ClassVar[bool] = False
    # the parts a trainer loads, by subfolder, besides transformer, vae and scheduler
    text_parts: ClassVar[tuple[str, ...]] = ("text_encoder", "tokenizer")

    def pipeline_class(self, editor: bool = True) -> Any:
        import diffusers

        return getattr(diffusers, self.editor)

    def recommended(self, pipe: Any) -> tuple[float, int]:
        """(guidance, steps) to run `pipe` with (a loaded pipeline, or a trainer's parts):
        `default_guidance` and `default_steps`, unless the family's variants differ (FLUX.2
        klein: a step-distilled model and its base want different ones)."""
        return self.default_guidance, self.default_steps

    def negative_prompt(self, parts: Any, guidance: float) -> str | None:
        """The negative prompt the pipeline encodes when it edits at `guidance` (Qwen-Image-
        Edit's true CFG: " "); None when it guides without one."""
        return None

    # --- what these families cannot do ----------------------------------------------------

    def _cannot(self, what: str) -> ModelError:
        return ModelError(f"{self.title} is a flow-matching editor: it cannot {what}",
                          "render pairs with a Stable Diffusion or SDXL model, and use "
                          f"{self.title} as the editor (editkit edit, use: flow-lora)")

    def encode(self, pipe: Any, negative: list[str], prompts: list[str],
               size: tuple[int, int]) -> Any:
        raise self._cannot("render Prompt-to-Prompt or masked-blend pairs")

    def caption_conditioning(self, parts: Any, prompts: list[str], grad: bool = False,
                             with_null: bool = False) -> Any:
        raise self._cannot("train with the InstructPix2Pix trainers")

    def load_text_to_image(self, ref: Any, device: str, dtype: Any) -> Any:
        raise self._cannot("render text-to-image pairs")

    # --- loading and editing --------------------------------------------------------------

    def edit_defaults(self, pipe: Any) -> tuple[dict[str, float] | None, int]:
        guidance, steps = self.recommended(pipe)
        return {"text": guidance}, steps

    def load_editor(self, ref: Any, dtype: Any) -> Any:
        """The family's editing pipeline of `ref`, on the CPU."""
        from editkit.models import load

        return load(self.pipeline_class(), ref, f"{self.title} editor", torch_dtype=dtype)

    def edit(self, pipe: Any, prompts: list[str], images: list[Any], steps: int,
             on_step: Callable[[int], None] | None = None, **call: Any) -> list[Any]:
        """The editor run on `images` (all one size) at their size, one instruction each.
        `call` may hold guidance_scale (passed as the family's guidance argument) and
        generator; image_guidance_scale has no meaning here and is dropped."""
        call.pop("image_guidance_scale", None)
        if "guidance_scale" in call and self.guidance_argument != "guidance_scale":
            call[self.guidance_argument] = call.pop("guidance_scale")
        if on_step is not None:
            def step_end(_pipe: Any, i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                on_step(i)
                return kwargs

            call["callback_on_step_end"] = step_end
        width, height = images[0].size
        return self.run_pipeline(pipe, prompts, images, steps, height, width, **call)

    def run_pipeline(self, pipe: Any, prompts: list[str], images: list[Any], steps: int,
                     height: int, width: int, **call: Any) -> list[Any]:
        """One call of the pipeline (families whose pipeline reads a list of images as
        references for one edit call it once per image)."""
        return pipe(image=images, prompt=prompts, num_inference_steps=steps, height=height,
                    width=width, **call).images

    # --- training (editkit.training.flow) --------------------------------------------------

    def training_parts(self, ref: Any, dtype: Any = None) -> dict[str, Any]:
        """transformer, vae, scheduler and `text_parts` on the CPU, by name; the transformer
        and text encoders in `dtype` (default fp32), each loaded straight into it: Kontext's
        12B transformer and 4.7B T5 would need 68 GB of host memory in fp32."""
        import importlib

        import diffusers

        from editkit.models import load

        held = {} if dtype is None else {"dtype": dtype}
        parts: dict[str, Any] = {
            "transformer": load(getattr(diffusers, self.transformer_class), ref,
                                "transformer", subfolder="transformer", **held),
            "vae": self.load_vae(ref),
            "scheduler": load(diffusers.FlowMatchEulerDiscreteScheduler, ref, "scheduler",
                              subfolder="scheduler")}
        for name in self.text_parts:
            module, cls = self.part_classes[name]
            parts[name] = load(getattr(importlib.import_module(module), cls), ref,
                               name.replace("_", " "), subfolder=name,
                               **(held if name.startswith("text_encoder") else {}))
        return parts

    @abstractmethod
    def load_vae(self, ref: Any) -> Any:
        """The family's VAE of `ref`."""

    @abstractmethod
    def latent_multiple(self, parts: Any) -> int:
        """Image sides (pixels) must be a multiple of this (the VAE's scale times the
        transformer's patch)."""

    @abstractmethod
    def image_latents(self, parts: Any, pixels: Any) -> Any:
        """(B, C, h, w): the latents the transformer's packing starts from, normalised as the
        pipeline normalises them (the VAE distribution's mode), for `pixels` (B, 3, H, W) in
        [-1, 1] on the VAE's device and dtype."""

    def condition_image(self, parts: Any, image: Any) -> Any:
        """The image to edit (PIL) as the pipeline resizes it before encoding it as the
        condition latents, so a trainer's condition is the one the editor sees: as it is,
        unless the family's pipeline resizes it (Qwen-Image-Edit: to about a megapixel,
        whatever the output size)."""
        return image

    @abstractmethod
    def text_embeddings(self, parts: Any, prompts: list[str],
                        images: list[Any] | None = None) -> dict[str, Any]:
        """What the transformer is called with for each instruction, as the pipeline's
        `encode_prompt` makes it: tensors with a leading batch dimension (cacheable on disk).
        `images`: the images to edit, one per prompt, for families whose text encoder reads
        them (`text_reads_image`)."""

    @abstractmethod
    def predict(self, parts: Any, transformer: Any, noisy: Any, condition: Any,
                text: dict[str, Any], timesteps: Any, guidance: float | None) -> Any:
        """The transformer's velocity prediction (B, C, h, w) for `noisy` latents given the
        `condition` latents (the image to edit, same shape) and `text`, at `timesteps`
        (B,) on the scheduler's 0-1000 scale, as the pipeline calls it; `guidance`: the
        embedded guidance of a guidance-distilled transformer (ignored by the others)."""

    @abstractmethod
    def editor_pipeline(self, parts: Any, scheduler: Any = None) -> Any:
        """The family's editing pipeline around a trainer's parts."""

    def save_lora(self, folder: Any, transformer: Any, text_encoders: Any = None) -> None:
        """A LoRA file of the transformer that the family's pipeline loads with
        `load_lora_weights`."""
        from editkit.models.lora import lora_layers, lora_metadata

        self.pipeline_class().save_lora_weights(
            folder, transformer_lora_layers=lora_layers(transformer),
            transformer_lora_adapter_metadata=lora_metadata(transformer),
            safe_serialization=True)
