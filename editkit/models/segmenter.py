"""Masks for real images from a text-prompted segmenter (CLIPSeg).

`Segmenter` loads `CLIPSegForImageSegmentation` and its `CLIPSegProcessor` through
`editkit.models.load` (a hub id, a local folder or a built-in, always `from_pretrained`), and
turns phrases into soft masks in [0, 1] at each image's own size: the sigmoid of CLIPSeg's
logits, resized bilinearly. Several phrases for one image are united by their maximum.

`Segmenter.region_mask` makes the binary mask an edit is confined to: the region the given
words name (their union), or the foreground (what the words name, or a generic "object")
or the background (one minus the foreground), cut at a fixed threshold or Otsu's.

A mask here is a float tensor shaped (1, height, width), 1 where the edit may change the
image, like the masks `editkit.editing` loads from files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from editkit.errors import InputError

DEFAULT_SEGMENTER = "CIDAS/clipseg-rd64-refined"
GENERIC_PROMPT = "object"
REGIONS = ("foreground", "background")


class Segmenter:
    """CLIPSeg on `pick_device(device)`, loaded once; `batch_size` (image, phrase) pairs go
    through the model per call."""

    def __init__(self, ref: str | Path = DEFAULT_SEGMENTER, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 8):
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        from editkit.models import load, pick_device, pick_dtype, resolve

        self.ref = resolve(ref)
        self.device = pick_device(device)
        self.torch_dtype = pick_dtype(self.device, dtype)
        self.batch_size = max(1, int(batch_size))
        self.processor = load(CLIPSegProcessor, self.ref, "CLIPSeg processor")
        self.model = load(CLIPSegForImageSegmentation, self.ref, "CLIPSeg segmenter")
        self.model.to(self.device, dtype=self.torch_dtype).eval()
        self.model_calls = 0

    def describe(self) -> dict[str, Any]:
        return {**self.ref.describe(), "device": self.device}

    def masks(self, images: Any, phrases: str | Sequence[str | Sequence[str]]) -> list[Any]:
        """One soft mask (1, h, w) in [0, 1] per image, at that image's size (h, w).

        `images`: a PIL image or a list of them. `phrases`: one phrase for every image; or a
        list with an entry per image, each a phrase or a list of phrases united by their
        maximum. For a single image, a list of phrases is that image's phrases."""
        import torch
        import torch.nn.functional as F

        images = _image_list(images)
        wanted = _phrases_per_image(phrases, len(images), single=not isinstance(images, list))
        images = list(images)
        pairs = [(i, phrase) for i, group in enumerate(wanted) for phrase in group]
        out: list[Any] = [None] * len(images)
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            found = self._heat([images[i] for i, _ in chunk], [p for _, p in chunk])
            for (i, _), one in zip(chunk, found):
                width, height = images[i].size
                sized = F.interpolate(one[None, None], size=(height, width), mode="bilinear",
                                      align_corners=False)[0].clamp(0, 1)
                out[i] = sized if out[i] is None else torch.maximum(out[i], sized)
        return out

    def _heat(self, images: list[Any], phrases: list[str]) -> list[Any]:
        """One model call: sigmoid(logits) at CLIPSeg's resolution, (h, w) float32 on the CPU
        for each (image, phrase) pair."""
        import torch

        inputs = self.processor(text=phrases, images=[im.convert("RGB") for im in images],
                                padding=True, truncation=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.torch_dtype)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        self.model_calls += 1
        logits = logits.reshape(len(phrases), *logits.shape[-2:])  # one pair comes squeezed
        return list(torch.sigmoid(logits.float()).cpu())

    def region_heat(self, images: Any, words: Sequence[str] | None = None,
                    region: str | None = None) -> list[Any]:
        """Soft masks (1, h, w) of a region: the union of `words` (region None), the
        foreground (the words' union, or GENERIC_PROMPT without words) or the background
        (one minus the foreground)."""
        if region is not None and region not in REGIONS:
            raise InputError(f"unknown region {region!r}", "use foreground or background")
        names = [w.strip() for w in (words or []) if w and w.strip()]
        if region is None and not names:
            raise InputError("no words to find the region of",
                             "give the words the edit changes, or a region "
                             "(foreground or background)")
        images = _image_list(images)
        prompts = names or [GENERIC_PROMPT]
        found = self.masks(list(images), [prompts] * len(images))
        if region == "background":
            return [1 - mask for mask in found]
        return found

    def region_mask(self, images: Any, words: Sequence[str] | None = None,
                    region: str | None = None, threshold: float | str = 0.5
                    ) -> tuple[list[Any], list[dict[str, Any]]]:
        """Binary masks (1, h, w) of `region_heat`, cut at `threshold` (0-1) or per image
        at Otsu's ("otsu"), and per image what was found: the area fraction, the threshold
        used, the words asked for and the region."""
        cut = _check_threshold(threshold)
        heat = self.region_heat(images, words, region)
        prompts = [w.strip() for w in (words or []) if w and w.strip()] or (
            [GENERIC_PROMPT] if region else [])
        masks, stats = [], []
        for soft in heat:
            value = otsu(soft) if cut is None else cut
            binary = (soft > value).float()
            masks.append(binary)
            stats.append({"area": float(binary.mean()), "threshold": float(value),
                          "words": prompts, "region": region or "words",
                          "method": "otsu" if cut is None else "fixed"})
        return masks, stats


def otsu(values: Any) -> float:
    """Otsu's threshold of a soft mask (the one attention masks use)."""
    from editkit.diffusion.masks import otsu_threshold

    return otsu_threshold(values)


def _check_threshold(threshold: float | str) -> float | None:
    """A cut in [0, 1], or None for Otsu's."""
    if isinstance(threshold, str):
        text = threshold.strip().lower()
        if text == "otsu":
            return None
        try:
            threshold = float(text)
        except ValueError:
            raise InputError(f"threshold {threshold!r} is neither a number nor otsu",
                             "give a number from 0 to 1, or otsu") from None
    value = float(threshold)
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise InputError(f"threshold {threshold} is outside 0-1",
                         "give a number from 0 to 1, or otsu")
    return value


def _image_list(images: Any) -> Any:
    """A list of images stays a list; one image becomes a tuple of one (so `masks` knows
    that a list of phrases belongs to it)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("no images to segment", "give at least one image")
        return list(images)
    return (images,)


def _phrases_per_image(phrases: Any, count: int, single: bool) -> list[list[str]]:
    def group(entry: Any) -> list[str]:
        items = [entry] if isinstance(entry, str) else list(entry)
        items = [str(p).strip() for p in items if str(p).strip()]
        if not items:
            raise InputError("an image has no phrase to segment",
                             "give a phrase like 'the car' for every image")
        return items

    if isinstance(phrases, str):
        return [group(phrases)] * count
    phrases = list(phrases)
    if single:
        return [group(phrases)]
    if len(phrases) != count:
        raise InputError(f"{len(phrases)} phrase entries for {count} images",
                         "give one phrase for all images, or one entry per image")
    return [group(entry) for entry in phrases]


def build_tiny_clipseg(path: str | Path, image_size: int = 64, seed: int = 0) -> Path:
    """A tiny, randomly initialised CLIPSeg with its processor (CLIP tokenizer + PIL ViT
    image processor), saved like a hub checkpoint so `Segmenter(path)` loads it."""
    import torch
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        CLIPTokenizer,
    )
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from editkit.console import quiet_progress_bars
    from editkit.models.tiny import _text_config, build_tiny_tokenizer

    quiet_progress_bars()
    path = Path(path)
    torch.manual_seed(seed)
    build_tiny_tokenizer(path)
    tokenizer = CLIPTokenizer.from_pretrained(path)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, image_size=image_size, patch_size=8)
    config = CLIPSegConfig(text_config=_text_config(len(tokenizer)), vision_config=vision,
                           projection_dim=32, extract_layers=[0, 1], reduce_dim=16,
                           decoder_num_attention_heads=2, decoder_intermediate_size=32)
    CLIPSegForImageSegmentation(config).save_pretrained(path, safe_serialization=True)
    images = ViTImageProcessorPil(size={"height": image_size, "width": image_size},
                                  image_mean=[0.485, 0.456, 0.406],
                                  image_std=[0.229, 0.224, 0.225])
    CLIPSegProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    return path
