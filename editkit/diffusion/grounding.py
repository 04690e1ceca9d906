"""Grounding losses: ask chosen text tokens' cross-attention to fall inside image regions.

TokenCompose's token loss (Wang et al., CVPR 2024): for each region and each token that
belongs to it, the share of the token's attention (heads averaged, normalised over the map)
that lands inside the region should be 1; the loss is the mean of (1 - share inside)^2 over
the recorded layers, regions and tokens. Trainers record the maps with `AttentionRecorder`
through editkit's own `attention_control`, so no processor code of their own.

Two users: the shapes world's text-to-image trainer (each shape's phrase inside its box) and
the InstructPix2Pix trainer's `grounding` option, whose region is where an example's before
and after images differ (`change_masks`): no oracle needed, any domain.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from editkit.diffusion.control import AttentionController, Layer


class AttentionRecorder(AttentionController):
    """Keeps the probabilities of every cross-attention layer of one UNet call, with their
    gradients; `begin()` starts a new list."""

    def begin(self, latent_hw: tuple[int, int], layout: tuple[int, int, int]) -> None:
        super().begin(latent_hw, layout)
        self.maps: list[Any] = []

    def wants(self, layer: Layer) -> bool:
        return layer.cross

    def edit(self, layer: Layer, probs: Any) -> Any:
        self.maps.append(probs)
        return probs


def attention_inside_loss(maps: list[Any], member: Any, masks: dict[int, Any]) -> Any:
    """The token loss. `maps`: (batch, heads, queries, keys) probabilities; `member`:
    (batch, regions, keys), which tokens belong to each region; `masks`: for each map's
    query count, (batch, regions, queries) region masks (flattened row-major, as the maps
    are). Zero (with gradients) when no token belongs to any region."""
    member = member.to(maps[0].dtype)
    if not bool(member.any()):
        return maps[0].sum() * 0.0
    losses = []
    for probs in maps:
        mass = probs.mean(dim=1)  # (batch, queries, keys), heads averaged
        share = mass / mass.sum(dim=1, keepdim=True).clamp_min(1e-8)
        inside = torch.einsum("bqk,brq->brk", share, masks[mass.shape[1]].to(share))
        losses.append(((1 - inside) ** 2 * member).sum() / member.sum())
    return torch.stack(losses).mean()


def change_masks(before: Any, after: Any, sizes: list[tuple[int, int]],
                 threshold: float = 0.3, dilate: int = 1) -> dict[int, Any]:
    """Where each example's edit acts, from its (batch, channels, h, w) before and after
    latents: the cells whose largest channel change is at least `threshold` of the
    example's largest, grown by `dilate` cells, then max-pooled to each map size (a cell of
    a coarser map is in the region when any cell under it is). Returns {h * w: (batch, 1,
    h * w)}; an example that did not change has an empty mask."""
    change = (after.float() - before.float()).abs().amax(dim=1, keepdim=True)
    peak = change.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    region = ((change >= threshold * peak) & (peak > 0)).float()
    if dilate:
        region = F.max_pool2d(region, 2 * dilate + 1, stride=1, padding=dilate)
    return {h * w: F.adaptive_max_pool2d(region, (h, w)).flatten(2) for h, w in sizes}
