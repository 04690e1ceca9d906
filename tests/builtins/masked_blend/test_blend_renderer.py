import numpy as np
import pytest
import torch
from pair_checks import mask_file, render, renderer, split_by_mask
from pair_checks import pixels as arr
from pydantic import ValidationError

from editkit.builtins.masked_blend import MaskedBlend
from editkit.plugin.kinds import Reject

SWAP = {"id": "000001", "input": "a photo of a red car and a house",
        "output": "a photo of a blue car and a house", "words": ["blue"],
        "region": "foreground"}


def make(**options):
    return renderer(MaskedBlend, dict(model="tiny-sd", samples=2, steps=3, width=32,
                                      height=32), **options)


@pytest.fixture
def left_half(tmp_path):
    return mask_file(tmp_path, 32, 32, 12)


@pytest.mark.parametrize("feather", [0.0, 2.0])
def test_outside_the_mask_the_after_image_equals_the_before_image(left_half, feather):
    out = render(make(mask="image", mask_image=str(left_half), feather=feather), SWAP)
    for pair in out:
        mask, before, after, outside = split_by_mask(pair)
        assert outside[:, 20:].all() and (mask[:, :5] == 255).all()
        assert np.array_equal(before[outside], after[outside])
        assert np.abs(before[~outside] - after[~outside]).max() > 0
        assert pair["settings"]["mask"] == "image" and pair["settings"]["feather"] == feather


def test_latents_outside_the_mask_follow_the_source_at_every_step(left_half):
    renderer = make(mask="image", mask_image=str(left_half), feather=0.0, paste=False)
    from editkit.diffusion.renderer import Sample

    pipe = renderer.pipeline()
    plan = renderer.plan(SWAP)
    samples = [Sample(SWAP, 0, 5, 7.5, plan), Sample(SWAP, 1, 6, 12.0, plan)]
    before, after, _ = renderer.sample(pipe, samples)
    assert torch.equal(before[..., 8:], after[..., 8:])  # latent columns 8+ are outside
    assert not torch.equal(before[..., :5], after[..., :5])


def test_word_masks_are_saved_and_foreground_background_are_complements():
    words = render(make(), SWAP)
    assert all(p["mask"].size == (32, 32) for p in words)
    assert words[0]["settings"]["words"] == ["blue"]
    fg = render(make(mask="foreground", feather=0.0), SWAP)
    bg = render(make(mask="background", feather=0.0), SWAP)
    region = render(make(mask="region", feather=0.0), SWAP)
    for f, b, r in zip(fg, bg, region):
        total = arr(f["mask"]) + arr(b["mask"])
        assert (total == 255).all()
        assert np.array_equal(arr(r["mask"]), arr(f["mask"]))
        assert 0 < (arr(f["mask"]) > 0).mean() < 1


def test_bad_masks_are_rejected_records_or_option_errors(tmp_path):
    out = render(make(mask="region"), {**SWAP, "region": None})
    assert all(isinstance(o, Reject) and o.reason == "triplet has no region" for o in out)
    out = render(make(mask="image", mask_image=str(tmp_path / "missing.png")), SWAP)
    assert all(isinstance(o, Reject) and o.reason == "mask image not found" for o in out)
    out = render(make(words=["zebra"]), SWAP)
    assert all(isinstance(o, Reject) and o.reason == "mask words not in the captions"
               for o in out)
    with pytest.raises(ValidationError, match="mask: image needs mask_image"):
        make(mask="image")
