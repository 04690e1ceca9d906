"""Masks for blending: from attention maps, from an image file; feathered edges.

A mask is a float tensor in [0, 1], 1 where the edit may change the image.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from editkit.errors import InputError


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map (over its last two dims) to a maximum of 1."""
    peak = maps.flatten(-2).amax(-1)[..., None, None]
    return maps / peak.clamp_min(1e-12)


def attention_mask(maps: torch.Tensor, size: tuple[int, int], threshold: float,
                   dilate: int = 1) -> torch.Tensor:
    """(samples, branches, h, w) attention maps -> (samples, 1, *size) binary mask: each
    map normalised, max-pooled by `dilate` cells, resized, thresholded, branches united
    (Prompt-to-Prompt's local blend)."""
    return (attention_heat(maps, size, dilate) > threshold).any(dim=1, keepdim=True).float()


def attention_heat(maps: torch.Tensor, size: tuple[int, int], dilate: int = 1) -> torch.Tensor:
    """(..., h, w) attention maps -> (..., *size) in [0, 1]: each map normalised, max-pooled
    by `dilate` cells, resized and normalised again; what `attention_mask` thresholds."""
    maps = normalise(maps.float())
    if dilate > 0:
        maps = F.max_pool2d(maps, 2 * dilate + 1, stride=1, padding=dilate)
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return normalise(maps)


def otsu_threshold(values: torch.Tensor, bins: int = 64) -> float:
    """The threshold that best splits `values` in two classes (Otsu's method)."""
    v = values.flatten().float()
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        return hi
    hist = torch.histc(v, bins=bins, min=lo, max=hi)
    centers = torch.linspace(lo, hi, bins)
    weight = hist.cumsum(0)
    mean = (hist * centers).cumsum(0)
    total, total_mean = weight[-1], mean[-1]
    spread = (weight * (total - weight)).clamp_min(1e-12)
    between = (total_mean * weight - total * mean) ** 2 / spread
    return float(centers[int(between[:-1].argmax())])


def foreground_mask(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(samples, h, w) attention mass on the caption's content words -> (samples, 1, *size)
    foreground mask, split from the background by Otsu's threshold per sample."""
    maps = F.interpolate(normalise(maps.float())[:, None], size=size, mode="bilinear",
                         align_corners=False)
    return torch.stack([(m > otsu_threshold(m)).float() for m in maps])


def feather(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Soft edges: a Gaussian blur of `radius` (sigma, in cells of the mask), cut at 3
    sigma, so the far inside stays 1 and the far outside exactly 0."""
    if radius <= 0:
        return mask
    kernel = gaussian(radius).to(mask.device, mask.dtype)
    size = len(kernel)
    n, c, h, w = mask.shape
    flat = mask.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (size // 2,) * 4, mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w).clamp(0, 1)


@lru_cache(maxsize=16)
def gaussian(radius: float) -> torch.Tensor:
    """The normalised 1-D Gaussian of sigma `radius`, cut at 3 sigma (made once per radius:
    masks are feathered at every sampling step)."""
    size = int(2 * round(3 * radius) + 1)
    x = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-(x ** 2) / (2 * radius ** 2))
    return kernel / kernel.sum()


def load_mask(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """A mask image (white = may change) -> (1, 1, *size) in [0, 1]; a different size is
    resized, never an error, but the caller records it."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path).convert("L")
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read mask image '{path}': {exc}",
                         "give a PNG/JPEG where white marks the region to edit") from exc
    import numpy as np

    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)
    return F.interpolate(array[None, None], size=size, mode="bilinear", align_corners=False)


def resize(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(mask.float(), size=size, mode="bilinear", align_corners=False)


def blend(source: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`edited * m + (1 - m) * source`: the edit inside the mask, the source outside."""
    return edited * mask + (1 - mask) * source
