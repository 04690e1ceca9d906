"""FLUX.2 klein (4B and 9B): a FLUX.2 transformer that reads the image to edit as reference tokens
(a time offset in their position ids), Qwen3 hidden states of three layers as text, and
latents patchified 2x2 and batch-normalised by the VAE's running statistics."""

from __future__ import annotations

from typing import ClassVar

from editkit.models.flow import FlowFamily


class Flux2Klein(FlowFamily):
    name = "flux2-klein"
    title = "FLUX.2 klein"
    text_to_image = "Flux2KleinPipeline"
    editor = "Flux2KleinPipeline"
    transformer_class: ClassVar[str] = "Flux2Transformer2DModel"

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
