"""Schedulers by name: a recipe says `scheduler: euler-ancestral`, not a class path."""

from __future__ import annotations

from typing import Any

from editkit.errors import ModelError

SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpm++-sde": "DPMSolverSDEScheduler",
    "dpm-single": "DPMSolverSinglestepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def make_scheduler(name: str, config: Any) -> Any:
    """A fresh scheduler of kind `name` (a short name above, a diffusers class name, or
    `default` for the model's own) configured from the model's scheduler config."""
    import diffusers

    if name == "default":
        cls_name = config["_class_name"] if "_class_name" in config else "DDIMScheduler"
    else:
        cls_name = SCHEDULERS.get(name.lower(), name)
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not cls_name.endswith("Scheduler"):
        raise ModelError(f"unknown scheduler '{name}'",
                         f"use default or one of: {', '.join(SCHEDULERS)}")
    return cls.from_config(config)
