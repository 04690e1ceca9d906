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
                      description="model to start from: an InstructPix2Pix editor (Stable "
                                  "Diffusion or SDXL), or a plain Stable Diffusion / SDXL "
                                  "model (conv_in is widened to 8 channels)")
    resolution: int = Field(256, ge=8, description="training area is resolution² pixels")
    steps: int = Field(1000, ge=0, description="optimizer updates (0 exports the untrained "
                       "start point: the baseline that shows what training is worth)")
    batch_size: int = Field(4, ge=1, description="examples per process per micro-batch")
    gradient_accumulation: int = Field(1, ge=1, description="micro-batches per optimizer "
                                       "update: the batch of an update is batch_size x this x "
                                       "processes, for the memory of one micro-batch")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate, reached after "
                                 "the warm-up")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="learning rate after the warm-up: constant, or a linear or "
                                "cosine decay to 0 at the last step (see decay_steps)")
    warmup_steps: int = Field(0, ge=0, description="steps over which the learning rate rises "
                              "linearly to learning_rate; 0: none")
    decay_steps: int | None = Field(
        None, ge=1, description="linear / cosine: decay over the last N steps only, the rate "
                                "constant before them (warmup-stable-decay); default: over "
                                "all steps after the warm-up")
    optimizer: Optimizer = Field(
        "adamw", description="adamw (PyTorch), or bitsandbytes' 8-bit AdamW with a quarter "
                             "of adamw's optimizer memory; paged-adamw8bit also lets CUDA "
                             "page that state out to CPU memory when the GPU runs short")
    optimizer_fallback: Literal["error", "adamw"] = Field(
        "error", description="when bitsandbytes cannot run on the device: stop with an error, "
                             "or use plain adamw (said in the log and the manifest)")
    min_8bit_size: int = Field(4096, ge=1, description="8-bit optimizers keep 32-bit state "
                               "for tensors smaller than this (the bitsandbytes default)")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW's decoupled weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradients are clipped to this total "
                                 "norm before each update")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="compute in 16 bits, trained weights kept in fp32: fp16 needs a "
                          "GPU; bf16 on a CPU without native bf16 trains in fp32")
    gradient_checkpointing: bool = Field(False, description="recompute the UNet's activations "
                                         "in the backward pass: much less memory, slower steps")
    ema: bool = Field(False, description="keep an exponential moving average of the trained "
                      "weights; the final validation and the export use it")
    ema_decay: float = Field(0.9999, gt=0, lt=1, description="EMA decay per step, warmed up as "
                             "min(ema_decay, (1 + step) / (10 + step))")
    ema_on_cpu: bool = Field(False, description="keep the EMA copy in CPU memory")
    random_flip: bool = Field(True, description="mirror each training example left-right "
                              "half the time (both images of a pair alike); turn off when "
                              "left and right matter")
    snr_gamma: float | None = Field(
        None, gt=0, description="min-SNR loss weighting (Hang et al. 2023): each timestep's "
                                "loss weighted by min(SNR, gamma)/SNR (epsilon) or "
                                "/(SNR+1) (v-prediction); 5 is the paper's value; "
                                "default: unweighted")
    checkpoint_every: int = Field(500, ge=1, description="save a resumable checkpoint every "
                                  "N steps and after the last")
    keep_checkpoints: int = Field(2, ge=1, description="last N checkpoints kept")
    validate_every: int = Field(0, ge=0, description="0: validate only after the last step")
    validation_images: int = Field(4, ge=0, description="editing trainers: pairs edited at "
                                   "each validation (held-out pairs, else training pairs); "
                                   "0: none")
    validation_inference_steps: int = Field(20, ge=1, description="DDIM steps of each "
                                            "validation or sample image")
