"""`use: photo`: pairs made from the user's own photos. The before-image is the photo itself
(fitted to the render size: centre-cropped to its aspect, then resized), never a regeneration.

`mode: prompt-to-prompt` (the default) inverts the photo under its input caption and samples
the output caption from that inversion under Prompt-to-Prompt control (self-attention
injection, cross-attention replace/refine/reweight, local blending: every option of
`use: prompt-to-prompt`), with the before branch following the photo's own trajectory so the
control copies the photo's attention. `inversion` picks how:

- `edit-friendly` (default): independent forward-process latents per step and the eta-1 DDIM
  noise maps between them (Huberman-Spiegelglas et al. 2024); the before branch comes back
  exactly at any guidance, so inversion and sampling share one guidance scale;
- `ddim`, `null-text`, `negative-prompt`: deterministic DDIM inversion (`fixed_point`
  refinement), with null-text optimised or the caption's own unconditional embeddings.

`mode: masked` is masked image-to-image: the photo is noised to `strength`, the output caption
denoises it inside a mask and the photo is kept outside it at every step (and pasted back
after decoding). The mask comes from a text-prompted segmenter (CLIPSeg, `segmenter`): the
words of the input caption the edit changes (what the photo shows there), or for a background
edit everything but the foreground.

Every pair records its settings and how well the inversion gives the photo back
(`inversion_psnr`, dB, between the decoded before branch and the photo).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from editkit import hookimpl
from editkit.builtins.prompt_to_prompt import PromptToPrompt, PromptToPromptOptions
from editkit.diffusion.renderer import Sample, TripletProblem


class PhotoOptions(PromptToPromptOptions):
    MODEL_OPTIONS: ClassVar[dict[str, str]] = {"model": "text-to-image"}
    NEEDS_PHOTOS: ClassVar[bool] = True  # the recipe's captions must come from photos

    mode: Literal["prompt-to-prompt", "masked"] = Field(
        "prompt-to-prompt", description="prompt-to-prompt: invert the photo and sample the "
        "output caption under attention control; masked: noise the photo to `strength` and "
        "denoise it with the output caption inside a segmenter's mask")
    inversion: Literal["edit-friendly", "ddim", "null-text", "negative-prompt"] = Field(
        "edit-friendly", description="how the photo is inverted (prompt-to-prompt mode): "
        "edit-friendly (exact at any guidance), ddim, null-text or negative-prompt")
    guidance: tuple[float, float] = Field(
        (2.0, 3.0), description="classifier-free guidance range; each sample draws one. "
        "Edits of inverted photos want less than text-to-image pairs: on the shapes world 2-3 "
        "is best and 6 loses most edits")
    fixed_point: int = Field(3, ge=0, le=20, description="fixed-point refinements of each DDIM "
                             "inversion step (ddim, null-text, negative-prompt)")
    null_text_lr: float = Field(0.1, gt=0, description="null-text: learning rate of the "
                                "unconditional embedding (0.01 suits full-size SD, 0.1 the "
                                "shapes world's small model)")
    skip: int = Field(0, ge=0, description="edit-friendly: schedule steps left out at the "
                      "start (sampling begins less noisy: closer to the photo)")
    strength: float = Field(0.7, gt=0, le=1, description="masked: how far the photo is noised "
                            "(1: pure noise inside the mask)")
    segmenter: str = Field("CIDAS/clipseg-rd64-refined", description="masked: text-prompted "
                           "segmenter (CLIPSeg hub id or local folder) that finds the mask")
    mask_threshold: float | Literal["otsu"] = Field(
        0.4, description="masked: cut of the segmenter's map, 0-1, or otsu per photo")
    feather: float = Field(1.0, ge=0, description="masked: soft mask edge when pasting the "
                           "photo back, blur sigma in pixels")
    scheduler: str = Field("ddim", description="ddim: inversion and the photo's noise only "
                           "hold for DDIM sampling")

    @model_validator(mode="after")
    def _photo_rules(self) -> "PhotoOptions":
        if self.scheduler not in ("ddim", "default", "DDIMScheduler"):
            raise ValueError(f"scheduler '{self.scheduler}': the photo renderer samples with "
                             "DDIM (its inversions only hold for it); leave scheduler out")
        if self.skip >= self.steps:
            raise ValueError(f"skip {self.skip} leaves no steps of {self.steps}")
        if self.skip and (self.mode != "prompt-to-prompt" or self.inversion != "edit-friendly"):
            raise ValueError("skip is for inversion: edit-friendly in prompt-to-prompt mode")
        if isinstance(self.mask_threshold, float) and not 0 < self.mask_threshold < 1:
            raise ValueError("mask_threshold must be between 0 and 1, or otsu")
        return self


def fit_photo(image: Any, width: int, height: int) -> Any:
    """`image` centre-cropped to the aspect of width x height, then resized to it (Lanczos);
    a photo already that size is returned as it is, pixel for pixel."""
    from PIL import Image

    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = round(width / scale), round(height / scale)
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    box = (left, top, left + crop_w, top + crop_h)
    return image.crop(box).resize((width, height), Image.Resampling.LANCZOS)


class PhotoRenderer(PromptToPrompt):
    name = "photo"
    Options = PhotoOptions
    options: PhotoOptions
    _segmenter: Any = None

    def draws(self, rng: Any) -> dict[str, Any]:
        if self.options.mode == "masked":
            return {"self_fraction": 0.0}
        return super().draws(rng)

    def plan(self, triplet: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        import torch

        from editkit.captions.photos import read_photo
        from editkit.errors import InputError

        opts = self.options
        path = triplet.get("photo")
        if not path:
            raise TripletProblem("no photo", "the photo renderer renders triplets made from "
                                 "photos: set captions.options.photos")
        try:
            photo = fit_photo(read_photo(path), opts.width, opts.height)
        except InputError as exc:
            raise TripletProblem("unreadable photo", exc.message) from None
        pixels = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255)
        pixels = pixels.permute(2, 0, 1).contiguous()
        if opts.mode == "masked":
            mask, found = self._mask(photo, triplet)
            return {"photo": pixels, "mask": mask, "settings": {
                "mode": "masked", "scheduler": "ddim", "strength": opts.strength,
                "segmenter": opts.segmenter,
                "mask_words": found["words"], "mask_region": found["region"],
                "mask_area": round(found["area"], 4), "mask_cut": round(found["threshold"], 4),
                "feather": opts.feather, "photo": str(path), "control": False}}
        plan = super().plan(triplet)
        plan["photo"] = pixels
        plan["settings"] = {**plan["settings"], "mode": "prompt-to-prompt", "scheduler": "ddim",
                            "inversion": opts.inversion, "photo": str(path),
                            **({"fixed_point": opts.fixed_point}
                               if opts.inversion != "edit-friendly" else {"skip": opts.skip}),
                            **({"null_text_lr": opts.null_text_lr}
                               if opts.inversion == "null-text" else {})}
        return plan

    def _mask(self, photo: Any, triplet: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The segmenter's binary mask (1, H, W) for the triplet: the words of its input caption
        that the edit changes, or the background for a background edit."""
        from editkit.diffusion import alignment
        from editkit.models.segmenter import Segmenter

        if self._segmenter is None:
            self._segmenter = Segmenter(self.options.segmenter, device=self.options.device)
        if triplet.get("region") == "background":
            words, region = None, "background"
        else:
            # the output's new words are not in the photo; an edit that only adds has none
            words = alignment.changed_words(triplet["input"], triplet["output"], "before") or \
                list(triplet.get("words") or [])
            region = None if words else "foreground"
        masks, stats = self._segmenter.region_mask(photo, words, region,
                                                   self.options.mask_threshold)
        if stats[0]["area"] == 0:
            raise TripletProblem("empty mask", f"the segmenter found nothing for "
                                 f"{', '.join(stats[0]['words'])} at threshold "
                                 f"{stats[0]['threshold']:.2f}; lower mask_threshold")
        return masks[0], stats[0]

    # --- prompt-to-prompt mode: sampling starts from the inverted photo ---------------

    def start(self, pipe: Any, samples: list[Sample]) -> dict[str, Any]:
        import torch

        from editkit.diffusion import inversion

        opts = self.options
        photos = torch.stack([s.plan["photo"] for s in samples])
        inverted = inversion.invert(
            pipe, photos, [s.triplet["input"] for s in samples], steps=opts.steps,
            guidance=[s.guidance for s in samples], method=opts.inversion,
            negative=opts.negative_prompt, fixed_point=opts.fixed_point, lr=opts.null_text_lr,
            seed=[s.seed for s in samples], skip=opts.skip)
        for s in samples:
            s.settings["inversion_seconds"] = round(inverted.stats["seconds"] / len(samples), 4)
        return {"scheduler": "ddim", **inverted.sampling()}

    def sample(self, pipe: Any, samples: list[Sample]) -> tuple[Any, Any, Any]:
        if self.options.mode == "masked":
            return self._sample_masked(pipe, samples)
        return super().sample(pipe, samples)

    # --- masked mode --------------------------------------------------------------------

    def _sample_masked(self, pipe: Any, samples: list[Sample]) -> tuple[Any, Any, Any]:
        import torch

        from editkit.diffusion import masks as maskops
        from editkit.diffusion.inversion import ddim_scheduler, encode_image
        from editkit.diffusion.sampling import (
            PairBatch,
            initial_noise,
            latent_size,
            sample_pairs,
        )

        opts = self.options
        latent_hw = latent_size(pipe, opts.height, opts.width)
        photos = encode_image(pipe, torch.stack([s.plan["photo"] for s in samples]))
        noise = initial_noise(pipe, [s.seed for s in samples], latent_hw).to(photos.dtype)
        sched = ddim_scheduler(pipe, opts.steps)
        first = min(opts.steps - 1, round(opts.steps * (1 - opts.strength)))
        timesteps = sched.timesteps

        def noised(index: int) -> Any:
            """The photo's latents at the noise level of `timesteps[index]` (the photo itself
            past the last step)."""
            if index >= len(timesteps):
                return photos
            return sched.add_noise(photos, noise, timesteps[index:index + 1])

        image_masks = torch.stack([s.plan["mask"] for s in samples])
        latent_masks = maskops.resize(image_masks, latent_hw).to(photos.device, photos.dtype)

        def keep_photo(step: int, before: Any, after: Any) -> Any:
            pinned = noised(first + step + 1)
            return pinned, maskops.blend(pinned, after, latent_masks)

        batch = PairBatch(before=[s.triplet["input"] for s in samples],
                          after=[s.triplet["output"] for s in samples],
                          seeds=[s.seed for s in samples],
                          guidance=[s.guidance for s in samples], negative=opts.negative_prompt)
        before, after = sample_pairs(pipe, batch, steps=opts.steps, height=opts.height,
                                     width=opts.width, scheduler="ddim", noise=noised(first),
                                     start_step=first, latent_hook=keep_photo)
        return before, after, image_masks

    def finish(self, pipe: Any, samples: list[Sample], before: Any, after: Any,
               masks: Any) -> tuple[Any, Any]:
        """The before-image is the photo; the inversion's PSNR is recorded per pair; in masked
        mode the photo is pasted back outside the (feathered) mask."""
        import torch

        from editkit.diffusion import masks as maskops
        from editkit.diffusion.inversion import psnr

        photos = torch.stack([s.plan["photo"] for s in samples])
        if self.options.mode == "prompt-to-prompt":
            for s, value in zip(samples, psnr(photos, before)):
                s.settings["inversion_psnr"] = round(value, 2)
            return photos, after
        soft = maskops.feather(masks.float(), self.options.feather) \
            if self.options.feather > 0 else masks.float()
        return photos, maskops.blend(photos, after, soft.to(after.dtype))


@hookimpl
def register_renderers(register):
    register(PhotoRenderer)

