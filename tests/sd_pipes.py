"""Loading Stable Diffusion pipelines (tiny ones, or the shipped shapes-sd) for tests."""

from __future__ import annotations

from typing import Any


def load_pipe(name: str) -> Any:
    import torch
    from diffusers import StableDiffusionPipeline

    from editkit.models import load

    torch.set_num_threads(1)
    pipe = load(StableDiffusionPipeline, name, safety_checker=None,
                requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
