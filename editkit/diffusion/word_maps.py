"""Where in the image given words are: cross-attention maps collected while sampling.

Maps come from the cross-attention layers of one level of the UNet (by default the level
whose maps are closest to a quarter of the latent side, the 16x16 maps of SD at 512 px);
their size is derived from the latents of the run, so any resolution or aspect ratio works.
Only the conditional half of the batch is materialised; the unconditional half keeps the
fused kernel.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from editkit.diffusion.control import AttentionController, Layer, attention_probs, fused

MAP_SIDE = 16  # Prompt-to-Prompt's local blend reads 16x16 maps (64x64 latents at 512 px)


def map_factor(latent_hw: tuple[int, int], side: int = MAP_SIDE) -> int:
    """The downsampling factor whose attention maps are about `side` cells across: 4 for
    Stable Diffusion at 512 px, as Prompt-to-Prompt; 1 (so the finest cross-attention level)
    for small latents, where a fixed factor 4 would give maps of a few cells that dilation
    then fills."""
    return max(1, min(latent_hw) // side)


def pick_level(layers: dict[str, Layer], target: int = 4) -> int:
    """The cross-attention factor closest to `target` (ties go to the finer level)."""
    factors = sorted({layer.factor for layer in layers.values() if layer.cross})
    if not factors:
        raise ValueError("this UNet has no cross-attention layers")
    return min(factors, key=lambda f: (abs(math.log2(f) - math.log2(target)), f))


class WordMaps(AttentionController):
    """Collects, per sample and branch, the attention mass on weighted tokens.

    `weights` is (samples, branches, tokens): for each sample the token weights of each of
    its prompts, e.g. the before and the after prompt (1 on the words of interest, 0
    elsewhere).
    """

    def __init__(self, weights: torch.Tensor, target: int = 4):
        self.weights = weights
        self.target = target
        self.total: torch.Tensor | None = None
        self.calls = 0
        self._placed: tuple[Any, ...] | None = None

    def bind(self, layers: dict[str, Layer]) -> None:
        super().bind(layers)
        self.factor = pick_level(layers, self.target)

    def wants(self, layer: Layer) -> bool:
        return layer.cross and layer.factor == self.factor

    def attend(self, layer, attn, query, key, value):  # type: ignore[no-untyped-def]
        half = query.shape[0] // 2
        uncond = fused(query[:half], key[:half], value[:half])
        probs = attention_probs(attn, query[half:], key[half:])
        self.observe(layer, probs)
        self.count(layer)
        return torch.cat([uncond, probs @ value[half:]])

    def observe(self, layer: Layer, probs: torch.Tensor) -> None:
        """`probs`: the conditional half, (samples * 2, heads, queries, tokens)."""
        if not self.wants(layer):
            return
        placed, place = self._placed, (probs.device, probs.dtype)
        if placed is None or placed[0] is not self.weights or placed[1] != place:
            # the weights on the device: once per run, not in every layer
            placed = self._placed = (self.weights, place,
                                     self.weights.to(*place).flatten(0, 1)[:, None, None, :])
        mass = (probs * placed[2]).sum(-1).mean(1).float()
        self.total = mass if self.total is None else self.total + mass
        self.calls += 1

    def maps(self) -> torch.Tensor | None:
        """(samples, branches, h, w) mean attention mass so far, or None before the first step."""
        if self.total is None:
            return None
        h, w = Layer("", True, self.factor).map_size(self.latent_hw)
        return (self.total / self.calls).view(*self.weights.shape[:2], h, w)
