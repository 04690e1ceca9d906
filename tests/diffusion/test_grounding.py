"""Grounding losses: the token loss reads attention inside regions; change masks find where
a pair's latents differ."""

from __future__ import annotations

import pytest
import torch

from editkit.diffusion.grounding import attention_inside_loss, change_masks


def test_change_masks_cover_the_changed_cells_grown_and_pooled_to_each_map_size():
    before = torch.zeros(2, 4, 8, 8)
    after = before.clone()
    after[0, 2, 3:5, 3:5] = 1.0   # a 2x2 block changes a lot
    after[0, 1, 0, 7] = 0.1       # a speck below the threshold (0.3 of the largest)
    masks = change_masks(before, after, [(8, 8), (4, 4), (2, 2)], threshold=0.3, dilate=1)
    full = masks[64].view(2, 8, 8)
    assert full[0, 2:6, 2:6].all() and full[0].sum() == 16  # the block, one cell around it
    assert full[0, 0, 7] == 0
    assert masks[16].view(2, 4, 4)[0].sum() == 4            # 8x8 cells 2-5: 4x4 cells 1-2
    assert masks[16].view(2, 4, 4)[0, 1:3, 1:3].all()
    assert masks[4].view(2, 2, 2)[0].all()                  # the grown block touches all four
    assert masks[64][1].sum() == 0 and masks[4][1].sum() == 0  # nothing changed: empty
    tight = change_masks(before, after, [(8, 8)], threshold=0.3, dilate=0)
    assert tight[64].sum() == 4


def test_attention_inside_loss_is_zero_inside_one_outside_and_skips_other_tokens():
    queries, keys = 4, 3
    mask = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])              # (batch, regions, queries)
    member = torch.tensor([[[0.0, 1.0, 0.0]]])                 # token 1 belongs to it
    inside = torch.zeros(1, 2, queries, keys)
    inside[..., :2, 1] = 0.5                                   # token 1 only in queries 0-1
    inside[..., :, 0] = 1.0                                    # token 0 everywhere: ignored
    outside = inside.flip(2)
    assert attention_inside_loss([inside], member, {queries: mask}).item() == 0.0
    assert attention_inside_loss([outside], member, {queries: mask}).item() == 1.0
    half = inside.clone()
    half[..., 2, 1] = 0.5                                      # a third of its mass outside
    assert attention_inside_loss([half], member, {queries: mask}).item() == pytest.approx(1 / 9)
    none = attention_inside_loss([inside.requires_grad_()], 0 * member, {queries: mask})
    assert none.item() == 0.0 and none.requires_grad
