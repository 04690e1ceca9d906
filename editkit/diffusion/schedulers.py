"""Schedulers by name: a recipe says `scheduler: euler-ancestral`, not a class path."""

from __future__ import annotations

import copy
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
    from diffusers.configuration_utils import FrozenDict

    if name == "default":
        cls_name = config["_class_name"] if "_class_name" in config else "DDIMScheduler"
    else:
        cls_name = SCHEDULERS.get(name.lower(), name)
    key = (cls_name, id(config))
    made = _MADE.get(key)
    if made is not None and made[0] is config:
        return copy.deepcopy(made[1])
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not cls_name.endswith("Scheduler"):
        raise ModelError(f"unknown scheduler '{name}'",
                         f"use default or one of: {', '.join(SCHEDULERS)}")
    scheduler = cls.from_config(config)
    if isinstance(config, FrozenDict):  # a model's config, which nothing changes
        if len(_MADE) >= 16:
            _MADE.clear()
        _MADE[key] = (config, copy.deepcopy(scheduler))
    return scheduler


# (class name, id of a model's scheduler config) -> (that config, a scheduler never stepped):
# copying one costs less than building one from the config, and each sampling run needs its own
_MADE: dict[tuple[str, int], tuple[Any, Any]] = {}
