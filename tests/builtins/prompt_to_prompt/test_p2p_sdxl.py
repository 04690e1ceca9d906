"""prompt-to-prompt on SDXL (tiny-sdxl): what the renderer guarantees on Stable Diffusion, at
square and non-square sizes and at SDXL's 1024 px."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pair_checks import pixels, png, render, renderer, sharpened

from editkit.builtins.prompt_to_prompt import PromptToPrompt
from editkit.diffusion.renderer import Sample
from editkit.plugin.kinds import Reject

SWAP = {"id": "000001", "input": "a photo of a red car", "output": "a photo of a blue car",
        "words": ["blue"]}
LONGER = {"id": "000002", "input": "a photo of a red car",
          "output": "a photo of a red car and a dog", "words": ["dog"]}
SAME = {"id": "000003", "input": "a photo of a red car", "output": "a photo of a red car"}


def make(pipe=None, **options):
    return renderer(PromptToPrompt, dict(model="tiny-sdxl", samples=2, steps=3, width=64,
                                         height=48), pipe, **options)


@pytest.fixture(scope="module")
def sharp():
    return sharpened("tiny-sdxl")


@pytest.mark.parametrize("cross", ["none", "replace", "refine"])
def test_same_prompt_with_full_injection_gives_identical_images(sharp, cross):
    out = render(make(sharp, self_fraction=(1.0, 1.0), cross=cross), SAME)
    assert len(out) == 2
    assert all(png(o["before"]) == png(o["after"]) for o in out)
    assert all(o["settings"]["cross"] == cross and o["settings"]["model"] == "tiny-sdxl"
               for o in out)


def test_injection_keeps_the_after_image_closer_to_the_before_image_than_control_off(sharp):
    off = render(make(sharp, samples=8, control=False), SWAP)
    on = render(make(sharp, samples=8, self_fraction=(1.0, 1.0)), SWAP)
    # the before image is the same either way: injection changes the after branch only
    assert [png(o["before"]) for o in on] == [png(o["before"]) for o in off]
    distance = [np.array([np.abs(pixels(o["before"]) - pixels(o["after"])).mean() for o in out])
                for out in (off, on)]
    assert distance[1].mean() < 0.7 * distance[0].mean(), distance
    assert (distance[1] < distance[0]).sum() >= 7, distance


def test_replace_refine_and_reweight_render_and_record_their_settings(sharp):
    out = render(make(sharp, cross="replace", on_mismatch="refine", triplets_per_batch=2),
                 SWAP, LONGER)
    modes = {o["triplet_id"]: o["settings"]["cross"] for o in out}
    assert modes == {"000001": "replace", "000002": "refine"}
    assert "same number of words" in [o for o in out if o["triplet_id"] == "000002"][0][
        "settings"]["fallback"]
    rejected = render(make(sharp, cross="replace"), LONGER)
    assert all(isinstance(r, Reject) and r.reason == "word swap needs prompts of equal length"
               for r in rejected)
    plain = render(make(sharp), SWAP)
    heavy = render(make(sharp, edited_scale=4.0), SWAP)
    before = np.abs(pixels(plain[0]["before"]) - pixels(heavy[0]["before"])).max()
    after = np.abs(pixels(plain[0]["after"]) - pixels(heavy[0]["after"])).max()
    assert before <= 2 and after > before
    s = heavy[0]["settings"]
    assert s["reweight"] == {"blue": 4.0} and s["cross_fraction"] == 0.8 and s["cross"] == "none"
    assert (s["width"], s["height"], s["model"]) == (64, 48, "tiny-sdxl")


def test_local_blend_keeps_the_before_latents_outside_its_mask(sharp):
    renderer = make(sharp, cross="replace", local_blend=True, blend_start=0.0,
                    blend_threshold=0.9, width=128, height=96)
    plan = renderer.plan(SWAP)
    samples = [Sample(SWAP, i, 5 + i, 7.5, plan, {**plan["settings"], "self_fraction": 0.5})
               for i in range(2)]
    before, after, mask = renderer.sample(sharp, samples)
    assert mask.shape == (2, 1, 96, 128)
    cells = F.max_pool2d(mask, 8)[:, 0] > 0  # latent cells the mask touches
    assert 0.05 < cells.float().mean() < 0.95
    for b, a, inside in zip(before, after, cells):
        assert torch.equal(b[:, ~inside], a[:, ~inside])
        assert not torch.equal(b[:, inside], a[:, inside])


@pytest.mark.parametrize("width, height", [(64, 48), (64, 96), (120, 72)])
def test_non_square_sizes_render_with_a_mask_of_the_image_size(sharp, width, height):
    out = render(make(sharp, cross="replace", local_blend=True, width=width, height=height),
                 SWAP)
    assert len(out) == 2 and not any(isinstance(o, Reject) for o in out)
    for o in out:
        assert o["before"].size == o["after"].size == o["mask"].size == (width, height)
        assert (o["settings"]["width"], o["settings"]["height"]) == (width, height)


@pytest.mark.slow
def test_sdxl_size_1024_px_with_local_blend(sharp):
    out = render(make(sharp, samples=1, steps=2, width=1024, height=1024, cross="replace",
                      local_blend=True, blend_start=0.0), SWAP)
    (pair,) = out
    assert not isinstance(pair, Reject)
    assert pair["before"].size == pair["after"].size == pair["mask"].size == (1024, 1024)
    assert png(pair["before"]) != png(pair["after"])
