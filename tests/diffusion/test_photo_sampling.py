"""The pair sampler started from an inverted photo: the shipped shapes-sd model samples the
inversion's reconstruction back on both branches, along an edit-friendly inversion the photo
itself, and another caption edits it (the shapes oracle reads the edit); tiny random models
for the default path, start_step and the argument checks."""

import random

import pytest
import torch
from sd_pipes import load_pipe

from editkit.builtins.shapes.oracle import read_scene, same_scene
from editkit.builtins.shapes.world import COLOURS, draw, random_scene
from editkit.diffusion import inversion as inv
from editkit.diffusion.control import AttentionController
from editkit.diffusion.prompt_to_prompt import PromptToPrompt
from editkit.diffusion.sampling import (
    PairBatch,
    decode,
    encode_prompts,
    initial_noise,
    sample_pairs,
    to_pil,
)
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
    named = sample_pairs(tiny, batch, step_noise=None, start_step=0, **args)
    assert torch.equal(default[0], named[0]) and torch.equal(default[1], named[1])


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


@pytest.mark.parametrize("fixture, pixels, skip", [("shapes", 64, 0), ("shapes", 64, 3),
                                                   ("tiny", 32, 2)])
def test_sampling_along_an_edit_friendly_inversion_gives_the_photo_itself(fixture, pixels,
                                                                         skip, request):
    pipe = request.getfixturevalue(fixture)
    captions, images = photos(2, seed=3)
    size = dict(height=pixels, width=pixels)
    result = inv.invert(pipe, images, captions, steps=8, guidance=[1.0, 3.0], seed=[4, 5],
                        method="edit-friendly", skip=skip, **size)
    latents = inv.encode_image(pipe, images, **size)
    args = dict(scheduler="ddim", steps=result.schedule_steps, **result.sampling(), **size)
    before, after = sample_pairs(pipe, same_caption(captions, result.guidance), **args)
    assert (before - latents).abs().max() < TOLERANCE
    assert (after - latents).abs().max() < TOLERANCE
    edited = [c.replace(" on a ", " and a small red square at the top left on a ", 1)
              for c in captions]
    batch = PairBatch(before=captions, after=edited, seeds=[0, 0], guidance=result.guidance)
    for controller in (None, PromptToPrompt(self_steps=[2, 2])):
        before, after = sample_pairs(pipe, batch, controller=controller, **args)
        assert (before - latents).abs().max() < TOLERANCE
        assert ((after - latents).abs().mean(dim=(1, 2, 3)) > 100 * TOLERANCE).all()


def test_another_caption_along_an_edit_friendly_inversion_edits_the_photo(shapes):
    rng = random.Random(5)
    scenes = [random_scene(rng, max_shapes=1) for _ in range(6)]
    edits = [s.with_shape(0, colour=next(c for c in COLOURS if c != s.shapes[0].colour))
             for s in scenes]
    images = [draw(s) for s in scenes]
    result = inv.invert(shapes, images, [s.caption() for s in scenes], steps=10, guidance=3.0,
                        seed=list(range(6)), method="edit-friendly", skip=2)
    batch = PairBatch(before=result.prompts, after=[s.caption() for s in edits],
                      seeds=[0] * 6, guidance=result.guidance)
    before, after = sample_pairs(shapes, batch, scheduler="ddim", steps=result.schedule_steps,
                                 **result.sampling(), **SIZE)
    assert (before - result.latents[0]).abs().max() < TOLERANCE
    read = [read_scene(to_pil(image)) for image in decode(shapes, after)]
    made = [same_scene(seen, edit) for seen, edit in zip(read, edits)]
    assert sum(made) >= 5, read


class StepCounter(AttentionController):
    def __init__(self):
        self.seen = []

    def begin_step(self, step, steps):
        super().begin_step(step, steps)
        self.seen.append((step, steps))


def test_start_step_resumes_a_ddim_run_from_its_latent(tiny):
    batch = PairBatch(before=[CAPTION] * 2, after=[CAPTION] * 2, seeds=[3, 11],
                      guidance=[7.5, 3.0], negative="blurry")
    args = dict(steps=5, height=32, width=32, scheduler="ddim")
    kept = {}

    def keep(step, before, after):
        kept[step] = before.clone()
        return after

    before, after = sample_pairs(tiny, batch, latent_hook=keep, **args)
    counter = StepCounter()
    resumed = sample_pairs(tiny, batch, noise=kept[1], start_step=2, controller=counter,
                           **args)
    assert torch.equal(resumed[0], before) and torch.equal(resumed[1], after)
    assert counter.seen == [(0, 3), (1, 3), (2, 3)]


def test_step_noise_and_start_step_are_checked(tiny):
    batch = PairBatch(before=[CAPTION] * 2, after=[CAPTION] * 2, seeds=[1, 2],
                      guidance=[5.0, 5.0])
    args = dict(steps=3, height=32, width=32)
    noise = initial_noise(tiny, [1, 2], (16, 16))
    maps = [torch.zeros_like(noise)] * 3
    with pytest.raises(ValueError, match="step_noise needs scheduler='ddim'"):
        sample_pairs(tiny, batch, scheduler="euler", step_noise=maps, **args)
    with pytest.raises(ValueError, match="step_noise has 2 maps for 3 sampling steps"):
        sample_pairs(tiny, batch, scheduler="ddim", step_noise=maps[:2], **args)
    with pytest.raises(ValueError, match="step_noise has 3 maps for 2 sampling steps"):
        sample_pairs(tiny, batch, scheduler="ddim", step_noise=maps, noise=noise, start_step=1,
                     **args)
    with pytest.raises(ValueError, match=r"step_noise\[1\] must be a tensor of shape "
                                         r"\(2, 4, 16, 16\), got \(1, 4, 16, 16\)"):
        sample_pairs(tiny, batch, scheduler="ddim", step_noise=[maps[0], noise[:1], maps[2]],
                     **args)
    with pytest.raises(ValueError, match=r"start_step needs the noise to start from"):
        sample_pairs(tiny, batch, start_step=1, **args)
    for start in (3, -1):
        with pytest.raises(ValueError, match=rf"start_step {start} is outside 0\.\.2"):
            sample_pairs(tiny, batch, noise=noise, start_step=start, **args)
    uncond = [encode_prompts(tiny, ["", ""])] * 3
    with pytest.raises(ValueError, match="uncond has 3 embeddings for 2 sampling steps"):
        sample_pairs(tiny, batch, noise=noise, start_step=1, uncond=uncond, **args)
