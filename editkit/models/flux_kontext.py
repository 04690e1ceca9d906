"""FLUX.1 Kontext: a FLUX.1 transformer that reads the image to edit as tokens beside the
latents (their position ids' first coordinate 1), CLIP's pooled and T5's hidden states as text,
and an embedded guidance (a guidance-distilled model)."""

from __future__ import annotations

from typing import ClassVar

from editkit.models.flow import FlowFamily


class FluxKontext(FlowFamily):
    name = "flux-kontext"
    title = "FLUX.1 Kontext"
    text_to_image = "FluxKontextPipeline"
    editor = "FluxKontextPipeline"
    transformer_class: ClassVar[str] = "FluxTransformer2DModel"

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
