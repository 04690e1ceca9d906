"""Models with a real model's shapes and random weights, for benchmarks: their memory and speed
are the real model's. Built on the meta device (accelerate's `init_empty_weights`) their sizes
cost neither memory nor time, for memory estimates.

`sd15-shaped`: Stable Diffusion 1.5 (859.5M-parameter UNet, CLIP ViT-L text encoder);
`sdxl-shaped`: SDXL 1.0 base (2.57B-parameter UNet, CLIP ViT-L and OpenCLIP ViT-bigG text
encoders, the VAE its config runs in fp32). Both as InstructPix2Pix editors: the UNet takes 8
channels (the latents and the image's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHAPED = ("sd15-shaped", "sdxl-shaped")

CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
              hidden_act="quick_gelu")
# SDXL 1.0 base's configs (stabilityai/stable-diffusion-xl-base-1.0)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816)
SDXL_TEXT_2 = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120,
                   num_hidden_layers=32, num_attention_heads=20, max_position_embeddings=77,
                   projection_dim=1280, hidden_act="gelu")
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), latent_channels=4,
              down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2)
SDXL_VAE = dict(SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1)


def shaped_parts(name: str, in_channels: int = 8, tokens: int = 49408) -> dict[str, Any]:
    """The UNet (`in_channels` wide), VAE and text encoder(s) of `name` by their pipeline
    names, built where torch builds now (inside `init_empty_weights`: on the meta device);
    `tokens`: the tokenizer's size (its last two are the start and end tokens)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if name not in SHAPED:
        raise KeyError(name)
    ids = dict(bos_token_id=tokens - 2, eos_token_id=tokens - 1)
    if name == "sd15-shaped":
        return {"text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids)),
                # the defaults are SD 1.x's UNet
                "unet": UNet2DConditionModel(in_channels=in_channels, out_channels=4,
                                             cross_attention_dim=768, sample_size=64),
                "vae": AutoencoderKL(**SD_VAE, sample_size=512)}
    return {"text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2,
                                                                         **ids)),
            "unet": UNet2DConditionModel(**{**SDXL_UNET, "in_channels": in_channels}),
            "vae": AutoencoderKL(**SDXL_VAE)}


def build_shaped(name: str, path: str | Path, device: str = "cpu") -> Path:
    """`name`'s InstructPix2Pix pipeline folder with random weights (seeded; initialised on
    `device`, where a GPU does SDXL's 3.5B parameters in seconds), saved in fp32; a folder
    already built is kept."""
    import torch
    from diffusers import DDIMScheduler, EulerDiscreteScheduler
    from transformers import CLIPTokenizer

    from editkit.models.tiny import build_tiny_tokenizer

    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    torch.manual_seed(0)
    names = ("tokenizer",) if name == "sd15-shaped" else ("tokenizer", "tokenizer_2")
    tokenizers = {n: CLIPTokenizer.from_pretrained(build_tiny_tokenizer(path / n))
                  for n in names}
    with torch.device(device):
        parts = shaped_parts(name, tokens=len(tokenizers["tokenizer"]))
    if name == "sd15-shaped":
        from diffusers import StableDiffusionInstructPix2PixPipeline

        pipe = StableDiffusionInstructPix2PixPipeline(
            **parts, **tokenizers, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, scheduler=DDIMScheduler(
                **SCHEDULER, clip_sample=False, set_alpha_to_one=False))
    else:
        from diffusers import StableDiffusionXLInstructPix2PixPipeline

        pipe = StableDiffusionXLInstructPix2PixPipeline(
            **parts, **tokenizers, force_zeros_for_empty_prompt=True, add_watermarker=False,
            scheduler=EulerDiscreteScheduler(**SCHEDULER, timestep_spacing="leading"))
    pipe.to("cpu").save_pretrained(path, safe_serialization=True)
    return path
