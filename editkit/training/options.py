"""Options every trainer shares; the plugins add their own on top.

Names follow DESIGN.md's recipe example (`base`, `rank`, `optimizer`, `steps`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from editkit.plugin.kinds import PluginOptions

Optimizer = Literal["adamw", "adamw8bit", "paged-adamw8bit"]


class TrainOptions(PluginOptions):
    base: str = Field("timbrooks/instruct-pix2pix",
                      description="model to start from: InstructPix2Pix, or plain Stable "
                                  "Diffusion (conv_in is widened to 8 channels)")
    resolution: int = Field(256, ge=8, description="training area is resolution² pixels")
    steps: int = Field(1000, ge=0, description="optimizer updates (0 exports the untrained "
                       "start point: the baseline that shows what training is worth)")
    batch_size: int = Field(4, ge=1, description="examples per process per micro-batch")
    gradient_accumulation: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    decay_steps: int | None = Field(
        None, ge=1, description="linear / cosine: decay over the last N steps only, the rate "
                                "constant before them (warmup-stable-decay); default: over "
                                "all steps after the warm-up")
    optimizer: Optimizer = "adamw"
    optimizer_fallback: Literal["error", "adamw"] = Field(
        "error", description="when bitsandbytes cannot run on the device: stop with an error, "
                             "or use plain adamw (said in the log and the manifest)")
    min_8bit_size: int = Field(4096, ge=1, description="8-bit optimizers keep 32-bit state "
                               "for tensors smaller than this (the bitsandbytes default)")
    weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = Field(0.9999, gt=0, lt=1)
    ema_on_cpu: bool = Field(False, description="keep the EMA copy in CPU memory")
    random_flip: bool = True
    snr_gamma: float | None = Field(
        None, gt=0, description="min-SNR loss weighting (Hang et al. 2023): each timestep's "
                                "loss weighted by min(SNR, gamma)/SNR (epsilon) or "
                                "/(SNR+1) (v-prediction); 5 is the paper's value; "
                                "default: unweighted")
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="last N checkpoints kept")
    validate_every: int = Field(0, ge=0, description="0: validate only after the last step")
    validation_images: int = Field(4, ge=0)
    validation_inference_steps: int = Field(20, ge=1)
