"""Editing held-out rows with one model at a time: what the metrics and the judges both
measure, so both edit the same way (batches, one seed per row, the editor's own guidance)."""

from __future__ import annotations

import re
from typing import Any

from editkit.evaluation.settings import EvalSettings


def edit_all(ref: str, rows: list[dict[str, Any]], inputs: list[Any], settings: EvalSettings,
             seed: int, bar: Any) -> tuple[list[Any], dict[str, Any]]:
    """One model's edits, `batch_size` rows per call; each row gets its own generator seeded
    with `seed`, so an edit does not depend on the batch it fell in."""
    import gc

    import torch

    from editkit.editing import pick_guidance
    from editkit.models.editors import load_edit_pipeline
    from editkit.models.families import family_named

    pipe, spec = load_edit_pipeline(ref, device=settings.device)
    family = family_named(spec.family)
    # the rule `editkit edit` follows, so both judge an editor at the guidance it is used at
    guidance = pick_guidance(settings.guidance, settings.image_guidance,
                             spec.guidance or family.edit_defaults(pipe)[0])
    denoiser = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer
    described = {**spec.describe(), "scheduler": type(pipe.scheduler).__name__,
                 "dtype": str(denoiser.dtype).replace("torch.", ""), "edited_with": guidance}
    edited: list[Any] = []
    try:
        for start in range(0, len(rows), settings.batch_size):
            chunk = rows[start:start + settings.batch_size]
            images = inputs[start:start + settings.batch_size]
            out = family.edit(pipe, [r["edit_prompt"] for r in chunk], images, settings.steps,
                              guidance_scale=guidance["text"],
                              image_guidance_scale=guidance["image"],
                              generator=[torch.Generator("cpu").manual_seed(seed)
                                         for _ in chunk], output_type="pil")
            edited += [im.convert("RGB") for im in out]
            if bar is not None:
                bar.advance(len(chunk))
    finally:
        del pipe
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return edited, described


def labels(models: list[str]) -> list[str]:
    """The table's row names: the reference as given, numbered if given twice."""
    return [ref if models.count(ref) == 1 else f"{ref} #{models[:i + 1].count(ref)}"
            for i, ref in enumerate(models)]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "model"


def lanczos() -> Any:
    from PIL import Image

    return Image.Resampling.LANCZOS
