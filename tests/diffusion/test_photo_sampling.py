"""The pair sampler started from an inverted photo: the shipped shapes-sd model samples the
inversion's reconstruction back on both branches; tiny random models for the default path
and the argument checks."""

import random

import pytest
import torch
from sd_pipes import load_pipe

from editkit.builtins.shapes.world import draw, random_scene
from editkit.diffusion import inversion as inv
from editkit.diffusion.prompt_to_prompt import PromptToPrompt
from editkit.diffusion.sampling import PairBatch, encode_prompts, initial_noise, sample_pairs
from editkit.diffusion.schedulers import make_scheduler

CAPTION = "a photo of a red car"
SIZE = dict(height=64, width=64)
TOLERANCE = 1e-4  # float32 rounding of batched UNet calls, on latents up to ~7


@pytest.fixture(scope="module")
def shapes():
    return load_pipe("shapes-sd")


@pytest.fixture(scope="module")
def tiny():
    return load_pipe("tiny-sd")


def photos(count, seed=0):
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    return [s.caption() for s in scenes], [draw(s) for s in scenes]


def same_caption(captions, guidance):
    return PairBatch(before=captions, after=captions, seeds=[0] * len(captions),
                     guidance=list(guidance))


@pytest.mark.parametrize("method, guidance", [("negative-prompt", [4.0, 4.0, 4.0]),
                                              ("null-text", [3.0, 5.0, 7.5])])
def test_sampling_from_an_inversion_gives_its_reconstruction_on_both_branches(
        shapes, method, guidance):
    captions, images = photos(3)
    result = inv.invert(shapes, images, captions, steps=10, guidance=guidance, method=method)
    expected = inv.reconstruct_latents(shapes, result)
    before, after = sample_pairs(shapes, same_caption(captions, result.guidance), steps=10,
                                 scheduler="ddim", noise=result.noise, uncond=result.uncond,
                                 **SIZE)
    assert before.shape == expected.shape == (3, 4, 16, 16)
    assert (before - expected).abs().max() < TOLERANCE
    assert (after - expected).abs().max() < TOLERANCE
    # the inverted embeddings matter: the negative prompt's instead lands elsewhere
    plain, _ = sample_pairs(shapes, same_caption(captions, result.guidance), steps=10,
                            scheduler="ddim", noise=result.noise, **SIZE)
    assert (plain - expected).abs().mean() > 0.02


def test_a_hook_pins_the_before_branch_to_the_inverted_trajectory(shapes):
    captions, images = photos(2, seed=1)
    result = inv.invert(shapes, images, captions, steps=10, guidance=4.0,
                        method="negative-prompt")
    expected = inv.reconstruct_latents(shapes, result)
    seen = []

    def pin(step, before, after):
        seen.append(step)
        return result.target(step), after

    args = dict(steps=10, scheduler="ddim", noise=result.noise, uncond=result.uncond, **SIZE)
    before, after = sample_pairs(shapes, same_caption(captions, result.guidance),
                                 latent_hook=pin, **args)
    assert seen == list(range(10))
    assert torch.equal(before, result.latents[0])
    assert (after - expected).abs().max() < TOLERANCE
    _, after_only = sample_pairs(shapes, same_caption(captions, result.guidance),
                                 latent_hook=lambda step, b, a: a, **args)
    assert torch.equal(after_only, after)
    edited = [c.replace(" on a ", " and a small red square at the top left on a ", 1)
              for c in captions]
    batch = PairBatch(before=captions, after=edited, seeds=[0, 0], guidance=result.guidance)
    before, after = sample_pairs(shapes, batch, latent_hook=pin,
                                 controller=PromptToPrompt(self_steps=[3, 3]), **args)
    assert torch.equal(before, result.latents[0])
    assert (after - before).abs().mean() > 0.05


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_the_default_start_is_the_seed_noise_and_the_negative_prompt(tiny, scheduler):
    batch = PairBatch(before=[CAPTION] * 2, after=["a photo of a blue car"] * 2,
                      seeds=[3, 11], guidance=[7.5, 3.0], negative="blurry")
    args = dict(steps=4, height=32, width=32, scheduler=scheduler,
                controller=PromptToPrompt(self_steps=[2, 1]))
    default = sample_pairs(tiny, batch, **args)
    again = sample_pairs(tiny, batch, **args)
    assert torch.equal(default[0], again[0]) and torch.equal(default[1], again[1])
    sched = make_scheduler(scheduler, tiny.scheduler.config)
    sched.set_timesteps(4)
    sigma = sched.init_noise_sigma
    assert (sigma > 1) == (scheduler == "euler")  # euler: `noise` is seen to be taken unscaled
    noise = initial_noise(tiny, batch.seeds, (16, 16)) * sigma
    negative = encode_prompts(tiny, [batch.negative] * 2)
    explicit = sample_pairs(tiny, batch, noise=noise, uncond=[negative] * 4, **args)
    assert torch.equal(default[0], explicit[0]) and torch.equal(default[1], explicit[1])
    unscaled = sample_pairs(tiny, batch, noise=noise / sigma, **args)
    assert torch.equal(unscaled[0], default[0]) == (scheduler == "ddim")


def test_shapes_that_do_not_match_the_batch_are_refused(tiny):
    batch = PairBatch(before=[CAPTION] * 2, after=[CAPTION] * 2, seeds=[1, 2],
                      guidance=[5.0, 5.0])
    args = dict(steps=3, height=32, width=32)
    noise = initial_noise(tiny, [1, 2], (16, 16))
    uncond = [encode_prompts(tiny, ["", ""])] * 3
    with pytest.raises(ValueError, match=r"noise must be a tensor of shape \(2, 4, 16, 16\), "
                                         r"got \(1, 4, 16, 16\)"):
        sample_pairs(tiny, batch, noise=noise[:1], **args)
    with pytest.raises(ValueError, match=r"got \(2, 4, 8, 8\)"):
        sample_pairs(tiny, batch, noise=noise[..., :8, :8], **args)
    with pytest.raises(ValueError, match="uncond has 2 embeddings for 3 sampling steps"):
        sample_pairs(tiny, batch, uncond=uncond[:2], **args)
    with pytest.raises(ValueError, match=r"uncond\[1\] must be a tensor of shape \(2, 77, 32\), "
                                         r"got \(1, 77, 32\)"):
        sample_pairs(tiny, batch, uncond=[uncond[0], uncond[1][:1], uncond[2]], **args)
    with pytest.raises(ValueError, match=r"latent_hook's before must be a tensor of shape"):
        sample_pairs(tiny, batch, latent_hook=lambda i, b, a: (b[:1], a), **args)
    with pytest.raises(ValueError, match="latent_hook returned 3 tensors"):
        sample_pairs(tiny, batch, latent_hook=lambda i, b, a: (b, a, a), **args)
    with pytest.raises(ValueError, match=r"latent_hook's after must be a tensor of shape"):
        sample_pairs(tiny, batch, latent_hook=lambda i, b, a: None, **args)
