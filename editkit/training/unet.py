"""Load the parts of a Stable Diffusion, SDXL or InstructPix2Pix checkpoint (as its model
family names them, `editkit.models.families`), and make the 8-channel UNet InstructPix2Pix
needs from a plain 4-channel one (`editkit.models.editors.widen_conv_in`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from editkit.models import ModelRef, resolve
from editkit.models.editors import (
    widen_conv_in,  # noqa: F401  (the one widening, shared)
    with_prediction_type,  # noqa: F401  (shared with the loader)
)
from editkit.models.lora import lora_layers, lora_metadata  # noqa: F401 (the trainers save with them)


@dataclass
class Components:
    ref: ModelRef
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    widened: bool = False  # conv_in was widened from 4 to 8 channels here
    family: Any = None  # the `editkit.models.families.ModelFamily` that loaded them
    text_encoder_2: Any = None  # SDXL's second text encoder and its tokenizer
    tokenizer_2: Any = None
    force_zeros_for_empty_prompt: bool = False  # the unconditional text is zeros (SDXL)

    def text_encoders(self) -> dict[str, Any]:
        """The family's text encoders by name (text_encoder, text_encoder_2)."""
        return {name: getattr(self, name) for name in self.family.text_encoders}


def load_components(base: str, *, edit: bool = True, conv_in_init: str = "zeros"
                    ) -> Components:
    """Every part through `from_pretrained`, as the model's family names them
    (`editkit.models.families`); `edit` makes sure the UNet takes twice the latent channels
    (widened with `conv_in_init`, `editkit.models.editors.widen_conv_in`)."""
    from editkit.models.families import family_for

    ref = resolve(base)
    family = family_for(ref)
    loaded = family.training_parts(ref)
    parts = Components(ref=ref, noise_scheduler=loaded.pop("scheduler"), family=family,
                       **loaded)
    latent = parts.unet.config.out_channels
    if edit and parts.unet.config.in_channels == latent:
        # with `zeros` (the default) it predicts exactly what the plain UNet did at first
        widen_conv_in(parts.unet, 2 * latent, conv_in_init)
        parts.widened = True
    return parts


def conv_in_state(unet: Any) -> dict[str, Any]:
    return {"weight": unet.conv_in.weight.detach().float().cpu().contiguous(),
            "bias": unet.conv_in.bias.detach().float().cpu().contiguous()}


def diffusion_goal(scheduler: Any, latents: Any, noise: Any, timesteps: Any) -> Any:
    """What the UNet is trained to predict under the scheduler's prediction type."""
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    return noise


def diffusion_loss(scheduler: Any, pred: Any, goal: Any, timesteps: Any,
                   snr_gamma: float | None) -> Any:
    """Mean squared error of `pred` against `goal` (noise, velocity or clean latents), per
    example weighted by min-SNR-gamma when `snr_gamma` is set: the easy low-noise steps count
    for less. With v-prediction the weight also falls towards zero at high noise
    (BENCHMARKS.md: it hurt the shapes editor, which learns to keep its input's background
    there); with sample (x0) prediction it is min(SNR, gamma) itself."""
    import torch
    import torch.nn.functional as F

    if snr_gamma is None:
        return F.mse_loss(pred.float(), goal.float())
    alphas = scheduler.alphas_cumprod.to(pred.device)[timesteps].float()
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=snr_gamma)
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        weight = weight / (snr + 1)
    elif kind != "sample":
        weight = weight / snr
    per_example = ((pred.float() - goal.float()) ** 2).mean(dim=tuple(range(1, pred.dim())))
    return (weight * per_example).mean()
