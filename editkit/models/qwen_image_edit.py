"""Qwen-Image-Edit (and its Plus releases): a Qwen-Image transformer that reads the image to edit as
more packed latent tokens, and Qwen2.5-VL's hidden states of the instruction with the image
itself as text; true classifier-free guidance with a negative prompt."""

from __future__ import annotations

from typing import ClassVar

from editkit.models.flow import FlowFamily


class QwenImageEdit(FlowFamily):
    name = "qwen-image-edit"
    title = "Qwen-Image-Edit"
    text_to_image = "QwenImageEditPlusPipeline"
    editor = "QwenImageEditPlusPipeline"
    transformer_class: ClassVar[str] = "QwenImageTransformer2DModel"

    def load_vae(self, ref):
        raise NotImplementedError

    def latent_multiple(self, parts):
        raise NotImplementedError

    def image_latents(self, parts, pixels):
        raise NotImplementedError

    def text_embeddings(self, parts, prompts, images=None):
        raise NotImplementedError

    def predict(self, parts, transformer, noisy, condition, text, timesteps, guidance):
        raise NotImplementedError

    def editor_pipeline(self, parts, scheduler=None):
        raise NotImplementedError
