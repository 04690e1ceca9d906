"""Load the parts of a Stable Diffusion / InstructPix2Pix checkpoint, and make the 8-channel
UNet InstructPix2Pix needs from a plain 4-channel one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from editkit.models import ModelRef, load, resolve


@dataclass
class Components:
    ref: ModelRef
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    widened: bool = False  # conv_in was widened from 4 to 8 channels here


def load_components(base: str, *, edit: bool = True) -> Components:
    """Every part through `from_pretrained`; `edit` makes sure the UNet takes 8 channels."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    ref = resolve(base)
    parts = Components(
        ref=ref,
        unet=load(UNet2DConditionModel, ref, "UNet", subfolder="unet"),
        vae=load(AutoencoderKL, ref, "VAE", subfolder="vae"),
        text_encoder=load(CLIPTextModel, ref, "text encoder", subfolder="text_encoder"),
        tokenizer=load(CLIPTokenizer, ref, "tokenizer", subfolder="tokenizer"),
        noise_scheduler=load(DDPMScheduler, ref, "scheduler", subfolder="scheduler"),
    )
    if edit and parts.unet.config.in_channels == 4:
        widen_conv_in(parts.unet)
        parts.widened = True
    return parts


def widen_conv_in(unet: Any) -> Any:
    """4 -> 8 input channels; the 4 new (image-conditioning) channels start at zero so the
    widened UNet predicts exactly what the plain one did until training moves them."""
    import torch

    old = unet.conv_in
    if old.in_channels == 8:
        return unet
    new = torch.nn.Conv2d(8, old.out_channels, old.kernel_size, old.stride, old.padding,
                          dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :4] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=8)
    return unet


def conv_in_state(unet: Any) -> dict[str, Any]:
    return {"weight": unet.conv_in.weight.detach().float().cpu().contiguous(),
            "bias": unet.conv_in.bias.detach().float().cpu().contiguous()}


def load_conv_in(unet: Any, path: str) -> Any:
    """Widen a plain UNet and put trained conv_in weights (`conv_in.safetensors`) in it."""
    import torch
    from safetensors.torch import load_file

    widen_conv_in(unet)
    state = load_file(path)
    with torch.no_grad():
        unet.conv_in.weight.copy_(state["weight"].to(unet.conv_in.weight))
        unet.conv_in.bias.copy_(state["bias"].to(unet.conv_in.bias))
    return unet
