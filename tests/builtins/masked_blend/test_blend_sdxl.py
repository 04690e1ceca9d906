"""masked-blend on SDXL (tiny-sdxl): outside the mask the after-image is the before-image, at
non-square sizes and at SDXL's 1024 px."""

import numpy as np
import pytest
import torch
from pair_checks import mask_file, render, renderer, sharpened, split_by_mask
from pair_checks import pixels as arr

from editkit.builtins.masked_blend import MaskedBlend
from editkit.diffusion.renderer import Sample
from editkit.plugin.kinds import Reject

SWAP = {"id": "000001", "input": "a photo of a red car and a house",
        "output": "a photo of a blue car and a house", "words": ["blue"],
        "region": "foreground"}


def make(pipe=None, **options):
    return renderer(MaskedBlend, dict(model="tiny-sdxl", samples=2, steps=3, width=64,
                                      height=48), pipe, **options)


@pytest.fixture(scope="module")
def sharp():
    return sharpened("tiny-sdxl")


@pytest.mark.parametrize("feather", [0.0, 2.0])
def test_outside_the_mask_the_after_image_equals_the_before_image(sharp, tmp_path, feather):
    mask_image = mask_file(tmp_path, 64, 48, 24)
    out = render(make(sharp, mask="image", mask_image=str(mask_image), feather=feather), SWAP)
    for pair in out:
        mask, before, after, outside = split_by_mask(pair)
        assert outside[:, 32:].all() and (mask[:, :16] == 255).all()
        assert np.array_equal(before[outside], after[outside])
        assert np.abs(before[~outside] - after[~outside]).max() > 0
        assert pair["settings"]["mask"] == "image" and pair["settings"]["feather"] == feather
        assert pair["settings"]["model"] == "tiny-sdxl"


def test_latents_outside_the_mask_follow_the_source_at_every_step(sharp, tmp_path):
    mask_image = mask_file(tmp_path, 64, 48, 24)
    renderer = make(sharp, mask="image", mask_image=str(mask_image), feather=0.0, paste=False)
    plan = renderer.plan(SWAP)
    samples = [Sample(SWAP, 0, 5, 7.5, plan), Sample(SWAP, 1, 6, 12.0, plan)]
    before, after, _ = renderer.sample(sharp, samples)
    assert before.shape[-2:] == (6, 8)
    assert torch.equal(before[..., 3:], after[..., 3:])  # latent columns 3+ are outside
    assert not torch.equal(before[..., :2], after[..., :2])


@pytest.mark.parametrize("width, height", [(64, 48), (96, 64)])
def test_word_and_region_masks_at_non_square_sizes(sharp, width, height):
    words = render(make(sharp, width=width, height=height), SWAP)
    assert all(p["mask"].size == p["before"].size == (width, height) for p in words)
    assert words[0]["settings"]["words"] == ["blue"]
    fg = render(make(sharp, mask="foreground", feather=0.0, width=width, height=height), SWAP)
    bg = render(make(sharp, mask="background", feather=0.0, width=width, height=height), SWAP)
    for f, b in zip(fg, bg):
        assert (arr(f["mask"]) + arr(b["mask"]) == 255).all()
        assert 0 < (arr(f["mask"]) > 0).mean() < 1
        for pair in (f, b):
            outside = arr(pair["mask"])[..., 0] == 0
            assert np.array_equal(arr(pair["before"])[outside], arr(pair["after"])[outside])


@pytest.mark.slow
def test_sdxl_size_1024_px_keeps_the_source_outside_the_mask(sharp):
    (pair,) = render(make(sharp, samples=1, steps=2, width=1024, height=1024,
                          mask="foreground", feather=0.0), SWAP)
    assert not isinstance(pair, Reject)
    assert pair["before"].size == pair["mask"].size == (1024, 1024)
    outside = arr(pair["mask"])[..., 0] == 0
    assert 0.05 < outside.mean() < 0.95
    assert np.array_equal(arr(pair["before"])[outside], arr(pair["after"])[outside])
    assert np.abs(arr(pair["before"])[~outside] - arr(pair["after"])[~outside]).max() > 0
