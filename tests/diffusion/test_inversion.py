"""Real-image inversion: tiny random Stable Diffusion models for the mechanics, the shipped
shapes-sd model and the shapes world's oracle for whether a photo comes back."""

import dataclasses
import random

import pytest
import torch
from sd_pipes import load_pipe

from editkit.builtins.shapes.oracle import read_scene, same_scene
from editkit.builtins.shapes.world import draw, random_scene
from editkit.diffusion import inversion as inv
from editkit.diffusion.sampling import decode, initial_noise, to_pil

CAPTION = "a photo of a red car"


@pytest.fixture(scope="module")
def tiny():
    """SD 2.x layout, v-prediction: a random v-model's DDIM steps contract, so inversion is
    near-exact even untrained."""
    return load_pipe("tiny-sd2")


@pytest.fixture(scope="module")
def tiny_eps():
    """SD 1.x, epsilon prediction: untrained, its DDIM steps blow inversion errors up."""
    return load_pipe("tiny-sd")


@pytest.fixture(scope="module")
def shapes():
    return load_pipe("shapes-sd")


def photos(count, seed=0):
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    return scenes, [draw(s) for s in scenes]


def test_encode_image_is_deterministic_and_takes_pil_or_tensors(tiny):
    image = to_pil(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)))
    latents = inv.encode_image(tiny, image)
    assert latents.shape == (1, 4, 16, 16)
    assert latents.device == tiny.unet.device and latents.dtype == tiny.unet.dtype
    assert torch.equal(latents, inv.encode_image(tiny, image))
    pixels = inv._as_tensor(image)
    assert torch.allclose(inv.encode_image(tiny, pixels), latents, atol=1e-5)
    assert inv.encode_image(tiny, [image, image]).shape == (2, 4, 16, 16)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd2"])
def test_the_ddim_step_is_diffusers_ddim_step(name):
    from diffusers import DDIMScheduler

    pipe = load_pipe(name)
    sched = inv.ddim_scheduler(pipe, 7)
    reference = DDIMScheduler.from_config(pipe.scheduler.config)
    reference.set_timesteps(7)
    gen = torch.Generator().manual_seed(0)
    for t in sched.timesteps:
        sample, output = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(2))
        theirs = reference.step(output, t, sample, eta=0.0, return_dict=False)[0]
        assert torch.allclose(inv.ddim_step(sched, output, t, sample), theirs, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_eps"])
def test_the_inverse_step_undoes_the_step_for_the_same_model_reading(fixture, request):
    pipe = request.getfixturevalue(fixture)
    sched = inv.ddim_scheduler(pipe, 10)
    gen = torch.Generator().manual_seed(1)
    for t in sched.timesteps:
        sample, output = (torch.randn(1, 4, 8, 8, generator=gen) for _ in range(2))
        down = inv.ddim_step(sched, output, t, sample)
        up = inv.ddim_inverse_step(sched, output, t, down, model_input=sample)
        assert torch.allclose(up, sample, atol=1e-4)


def round_trip_error(pipe, latents, steps, fixed_point=0):
    prompts = [CAPTION, "a blue house"][:len(latents)]
    result = inv.invert(pipe, latents, prompts, steps=steps, fixed_point=fixed_point)
    return (inv.reconstruct_latents(pipe, result) - latents).abs()


def test_ddim_inversion_round_trips_latents_at_guidance_1(tiny):
    latents = initial_noise(tiny, [3, 4], (16, 16)) * 0.5
    trajectory = inv.ddim_invert(tiny, latents, [CAPTION, "a blue house"], steps=50)
    assert len(trajectory) == 51 and torch.equal(trajectory[0], latents)
    assert all(x.shape == latents.shape and x.device == latents.device
               and x.dtype == latents.dtype for x in trajectory)
    assert (trajectory[-1] - latents).abs().mean() > 0.3
    result = inv.invert(tiny, latents, [CAPTION, "a blue house"], steps=50)
    assert torch.equal(result.noise, trajectory[-1]) and result.steps == 50
    error = (inv.reconstruct_latents(tiny, result) - latents).abs()
    assert error.mean() < 0.03 and error.max() < 0.15
    refined = round_trip_error(tiny, latents, steps=20, fixed_point=5)
    assert refined.max() < 1e-3


def test_fixed_point_refinement_makes_inversion_undo_sampling(tiny_eps):
    latents = initial_noise(tiny_eps, [3], (16, 16)) * 0.5
    plain = round_trip_error(tiny_eps, latents, steps=20)
    refined = round_trip_error(tiny_eps, latents, steps=20, fixed_point=10)
    assert refined.mean() < 0.1 * plain.mean()


def test_negative_prompt_inversion_reconstructs_at_any_guidance_like_guidance_1(tiny):
    latents = initial_noise(tiny, [5], (16, 16)) * 0.5
    result = inv.invert(tiny, latents, CAPTION, steps=20, guidance=7.5,
                        method="negative-prompt", fixed_point=5)
    plain = inv.invert(tiny, latents, CAPTION, steps=20, fixed_point=5)
    assert torch.equal(result.noise, plain.noise)
    guided = inv.reconstruct_latents(tiny, result)
    assert torch.allclose(guided, inv.reconstruct_latents(tiny, plain), atol=1e-4)
    assert (guided - latents).abs().max() < 1e-3
    drifted = inv.reconstruct_latents(tiny, plain, guidance=7.5)
    assert (drifted - latents).abs().max() > 0.1


def test_null_text_follows_the_inverted_trajectory_under_guidance(tiny):
    latents = initial_noise(tiny, [6, 7], (16, 16)) * 0.5
    params = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    ddim = inv.invert(tiny, latents, CAPTION, steps=10)
    guided_ddim = inv.reconstruct_latents(tiny, ddim, guidance=7.5)
    null = inv.invert(tiny, latents, CAPTION, steps=10, guidance=7.5, method="null-text",
                      inner_steps=5, lr=0.1)
    assert len(null.uncond) == 10 and null.uncond[0].shape == (2, 77, 32)
    assert null.guidance == [7.5, 7.5]
    assert all(0 < n <= 5 for n in null.stats["inner_steps"])
    guided_null = inv.reconstruct_latents(tiny, null)
    assert (guided_null - latents).abs().mean() < 0.5 * (guided_ddim - latents).abs().mean()
    assert all(p.grad is None for p in tiny.unet.parameters())
    assert all(torch.equal(v, params[k]) for k, v in tiny.unet.state_dict().items())


def test_a_batch_inverts_each_image_as_alone_at_its_own_guidance(tiny):
    latents = initial_noise(tiny, [8, 9], (16, 16)) * 0.5
    prompts = [CAPTION, "a blue house"]
    both = inv.invert(tiny, latents, prompts, steps=4, guidance=[1.0, 5.0], method="null-text",
                      inner_steps=3, lr=0.1)
    assert both.guidance == [1.0, 5.0]
    for k in range(2):
        alone = inv.invert(tiny, latents[k:k + 1], prompts[k], steps=4, guidance=both.guidance[k],
                           method="null-text", inner_steps=3, lr=0.1)
        assert torch.allclose(both.uncond[-1][k], alone.uncond[-1][0], atol=1e-2)
        assert torch.allclose(inv.reconstruct_latents(tiny, both)[k],
                              inv.reconstruct_latents(tiny, alone)[0], atol=1e-4)
    assert torch.equal(both.uncond[-1][0], both.uncond[0][0])  # guidance 1: nothing fitted


def test_an_unknown_method_is_refused(tiny):
    with pytest.raises(ValueError, match="unknown inversion method 'edict'"):
        inv.invert(tiny, initial_noise(tiny, [1], (16, 16)), CAPTION, steps=2, method="edict")


def test_reconstruction_errors_are_per_image():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[1] += 0.1
    assert inv.psnr(a, b) == [float("inf"), pytest.approx(20.0)]
    assert inv.pixel_error(a, b) == [0.0, pytest.approx(25.5)]
    assert inv.psnr([to_pil(a[0])], b[1:]) == [pytest.approx(20.0, abs=0.2)]


@pytest.mark.parametrize("method, guidance", [("ddim", 1.0), ("negative-prompt", 4.0)])
def test_shapes_photos_come_back_as_the_same_scene(shapes, method, guidance):
    scenes, images = photos(12)
    result = inv.invert(shapes, images, [s.caption() for s in scenes], steps=10,
                        guidance=guidance, method=method)
    recon = inv.reconstruct(shapes, result)
    assert recon.shape == (12, 3, 64, 64)
    same = [same_scene(read_scene(to_pil(im)), s) for im, s in zip(recon, scenes)]
    assert sum(same) >= 11, same
    assert min(inv.psnr(images, recon)) > 28


def test_guided_sampling_from_noise_inverted_without_guidance_drifts_on_shapes(shapes):
    scenes, images = photos(6, seed=1)
    latents = inv.encode_image(shapes, images)
    result = inv.invert(shapes, latents, [s.caption() for s in scenes], steps=10)
    exact = inv.psnr(images, inv.reconstruct(shapes, result))
    drifted = inv.psnr(images, inv.reconstruct(shapes, result, guidance=6.0))
    assert sum(drifted) < sum(exact)
    assert sum(inv.psnr(images, decode(shapes, latents))) > sum(exact)


@pytest.mark.slow
@pytest.mark.parametrize("steps", [10, 50])
def test_null_text_brings_shapes_photos_back_under_guidance(shapes, steps):
    scenes, images = photos(16, seed=2)
    result = inv.invert(shapes, images, [s.caption() for s in scenes], steps=steps,
                        guidance=5.0, method="null-text")
    recon = inv.reconstruct(shapes, result)
    same = [same_scene(read_scene(to_pil(im)), s) for im, s in zip(recon, scenes)]
    assert sum(same) >= 15, same


def rounding(result):
    """What float32 rounding may leave of an exact reconstruction: errors are relative to the
    largest latent sampling went through."""
    return 1e-4 * max(float(x.abs().max()) for x in result.latents)


def small_photos(count, seed=0):
    scenes, images = photos(count, seed)
    return [s.caption() for s in scenes], images, dict(height=32, width=32)


@pytest.mark.parametrize("fixture", ["tiny_eps", "tiny"])
@pytest.mark.parametrize("guidance, skip", [(1.0, 0), ([3.0, 5.0], 0), ([1.0, 3.0], 3)])
def test_edit_friendly_inversion_gives_the_photo_back_at_any_guidance(fixture, guidance, skip,
                                                                     request):
    pipe = request.getfixturevalue(fixture)
    captions, images, size = small_photos(2)
    result = inv.invert(pipe, images, captions, steps=8, guidance=guidance, seed=[1, 2],
                        method="edit-friendly", skip=skip, **size)
    latents = inv.encode_image(pipe, images, **size)
    assert result.method == "edit-friendly" and result.start_step == skip
    assert result.steps == 8 - skip and result.schedule_steps == 8
    assert torch.equal(result.timesteps, inv.ddim_scheduler(pipe, 8).timesteps[skip:])
    assert len(result.step_noise) == len(result.uncond) == 8 - skip
    assert all(m.shape == latents.shape for m in result.step_noise)
    assert torch.equal(result.latents[0], latents)
    back = inv.reconstruct_latents(pipe, result)
    assert (back - latents).abs().max() < rounding(result)
    # the noise maps are what brings it back: plain DDIM from the same noise lands elsewhere
    ddim = inv.reconstruct_latents(pipe, dataclasses.replace(result, step_noise=None))
    assert (ddim - latents).abs().max() > 100 * rounding(result)


def test_an_edit_friendly_batch_inverts_each_image_as_alone_with_its_seed(tiny):
    captions, images, size = small_photos(2, seed=1)
    both = inv.invert(tiny, images, captions, steps=6, guidance=[1.0, 4.0], seed=[5, 6],
                      method="edit-friendly", skip=1, **size)
    assert both.guidance == [1.0, 4.0]
    for k, seed in enumerate([5, 6]):
        alone = inv.invert(tiny, images[k], captions[k], steps=6, guidance=both.guidance[k],
                           seed=seed, method="edit-friendly", skip=1, **size)
        assert torch.allclose(alone.noise[0], both.noise[k], atol=1e-5)
        for mine, theirs in zip(alone.step_noise, both.step_noise):
            assert (mine[0] - theirs[k]).abs().max() < 1e-3 * theirs[k].abs().max()
        assert torch.allclose(inv.reconstruct_latents(tiny, alone)[0],
                              inv.reconstruct_latents(tiny, both)[k], atol=rounding(both))


def test_edit_friendly_noise_comes_from_the_seed(tiny):
    captions, images, size = small_photos(1, seed=2)
    args = dict(steps=6, guidance=3.0, method="edit-friendly", **size)
    first = inv.invert(tiny, images, captions, seed=7, **args)
    again = inv.invert(tiny, images, captions, seed=7, **args)
    other = inv.invert(tiny, images, captions, seed=8, **args)
    assert all(torch.equal(a, b) for a, b in zip(first.step_noise, again.step_noise))
    assert all(torch.equal(a, b) for a, b in zip(first.latents, again.latents))
    assert all((a - b).abs().mean() > 0.5 for a, b in zip(first.step_noise, other.step_noise))
    assert (first.noise - other.noise).abs().mean() > 0.5
    latents = inv.encode_image(tiny, images, **size)
    for result in (first, other):
        assert (inv.reconstruct_latents(tiny, result) - latents).abs().max() < rounding(result)


def test_edit_friendly_arguments_are_checked(tiny):
    latents = initial_noise(tiny, [1, 2], (16, 16))
    args = dict(steps=4, method="edit-friendly")
    for skip in (4, -1):
        with pytest.raises(ValueError, match=rf"skip {skip} is outside 0\.\.3"):
            inv.invert(tiny, latents, CAPTION, skip=skip, **args)
    with pytest.raises(ValueError, match="3 seeds for 2 images"):
        inv.invert(tiny, latents, CAPTION, seed=[1, 2, 3], **args)
    with pytest.raises(ValueError, match="skip is for the edit-friendly inversion only"):
        inv.invert(tiny, latents, CAPTION, steps=4, method="negative-prompt", skip=1)
