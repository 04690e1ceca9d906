"""A memory estimate printed before training, and the advice given on out-of-memory.

Weights, gradients, optimizer state and EMA are counted exactly from parameter counts and
dtypes. Activations are a heuristic calibrated on Stable Diffusion 1.5 (about 5 GiB per
512 px example in half precision, a quarter of that with gradient checkpointing), scaled by
pixels, batch and UNet size (or by the family's own ratio to SD 1.5: SDXL's UNet saves about
1.07 times SD 1.5's activations per pixel, as its largest level has no attention): treat the
total as a guide, not a promise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024 ** 3
SD15_UNET_PARAMS = 860e6
OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2, "paged-adamw8bit": 2}


@dataclass
class ModelSize:
    unet: int  # all UNet parameters
    trainable: int  # parameters the optimizer updates
    frozen_other: int  # VAE + text encoder(s) (+ anything else resident and frozen)
    lora: bool  # frozen UNet weights are held in the mixed-precision dtype
    frozen_fp32: int = 0  # of frozen_other, those held in fp32 in any precision (SDXL's VAE)
    # activations per pixel relative to SD 1.5's UNet; None: in proportion to the parameters
    activation_scale: float | None = None


def half_weights(mixed_precision: str, cpu: bool) -> bool:
    """Whether the frozen weights are held in 16 bits. Not for bf16 on the CPU: its kernels
    reject some mixed-dtype ops (layer_norm with bf16 weights on fp32 inputs), so the weights
    stay fp32 there and autocast computes the convolutions and matmuls in bf16."""
    return mixed_precision == "fp16" or (mixed_precision == "bf16" and not cpu)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's own test: AVX-512 BF16 or AMX);
    without it the loop trains a bf16 run in fp32."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def estimate(size: ModelSize, options: Any, cpu: bool = False) -> dict[str, float]:
    """Bytes per part for a run with `options` (resolution, batch_size, optimizer, ...)."""
    half = options.mixed_precision in ("fp16", "bf16")
    low = 2 if half_weights(options.mixed_precision, cpu) else 4
    frozen_unet = size.unet - size.trainable if size.lora else 0
    parts = {
        "weights": (size.trainable * 4 + frozen_unet * low
                    + (size.frozen_other - size.frozen_fp32) * low + size.frozen_fp32 * 4),
        "gradients": size.trainable * 4,
        "optimizer": size.trainable * OPTIMIZER_BYTES[options.optimizer],
        "ema": 0 if not options.ema or options.ema_on_cpu else size.trainable * 4,
    }
    scale = size.unet / SD15_UNET_PARAMS if size.activation_scale is None \
        else size.activation_scale
    per_example = 5 * GIB * (options.resolution / 512) ** 2 * scale
    per_example *= 1 if half else 2
    per_example *= 0.25 if options.gradient_checkpointing else 1
    parts["activations"] = per_example * options.batch_size
    parts["total"] = sum(parts.values())
    return parts


def describe(parts: dict[str, float]) -> str:
    shown = ", ".join(f"{k} {_gib(v)}" for k, v in parts.items() if k != "total")
    return f"memory estimate: {_gib(parts['total'])} ({shown})"


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB" if value >= GIB / 100 else f"{value / 2**20:.1f} MiB"


def fitting_changes(size: ModelSize, options: Any, available: float,
                    cpu: bool = False) -> list[str]:
    """Concrete option changes (alone, then together) whose estimate fits in `available`."""
    candidates: list[dict[str, Any]] = []
    if options.optimizer == "adamw":
        candidates.append({"optimizer": "adamw8bit"})
    if not options.gradient_checkpointing:
        candidates.append({"gradient_checkpointing": True})
    if options.mixed_precision == "no" and (not cpu or cpu_has_bf16()):
        candidates.append({"mixed_precision": "bf16"})
    if options.batch_size > 1:
        candidates.append({"batch_size": 1,
                           "gradient_accumulation": options.gradient_accumulation
                           * options.batch_size})
    if options.ema and not options.ema_on_cpu:
        candidates.append({"ema_on_cpu": True})
    if options.resolution > 256:
        candidates.append({"resolution": 256})
    combined: dict[str, Any] = {}
    for change in candidates:
        combined.update(change)
    if len(candidates) > 1:
        candidates.append(combined)
    out = []
    for change in candidates:
        total = estimate(size, options.model_copy(update=change), cpu)["total"]
        if total <= available:
            text = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                            for k, v in change.items())
            out.append(f"{text} (about {_gib(total)})")
    if not size.lora:
        out.append("use: lora with optimizer=adamw8bit (trains a fraction of the weights)")
    return out


def model_size(unet: Any, others: list[Any], lora: bool, full_precision: list[Any] = (),
               activation_scale: float | None = None) -> ModelSize:
    """The sizes of a UNet and the frozen `others` beside it (`full_precision`: those of them
    kept in fp32 whatever the precision; `activation_scale`: `ModelSize`'s)."""
    count = sum(p.numel() for p in unet.parameters())
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    frozen = sum(p.numel() for m in others for p in m.parameters())
    fp32 = sum(p.numel() for m in full_precision for p in m.parameters())
    return ModelSize(unet=count, trainable=trainable, frozen_other=frozen, lora=lora,
                     frozen_fp32=fp32, activation_scale=activation_scale)
