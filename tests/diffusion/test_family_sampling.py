"""The pair sampler through the model-family seam: Stable Diffusion's pairs are the bytes of
the code path before the seam; SDXL's are diffusers' own `StableDiffusionXLPipeline`'s, and
attention control on SDXL does what it does on Stable Diffusion."""

import pytest
import torch
from pair_checks import cross_edit_runs, injection_distances, sharpened

from editkit.diffusion import alignment
from editkit.diffusion.control import AttentionController, Layer, unet_layers
from editkit.diffusion.prompt_to_prompt import PromptToPrompt
from editkit.diffusion.sampling import (
    PairBatch,
    decode,
    encode_prompts,
    initial_noise,
    latent_size,
    sample_pairs,
)
from editkit.diffusion.word_maps import WordMaps
from editkit.models.families import family_for

BEFORE, AFTER = "a photo of a red car", "a photo of a blue car"


def load(name):
    torch.set_num_threads(1)
    return family_for(name).load_text_to_image(name, "cpu", torch.float32)


@pytest.fixture(scope="module")
def sdxl():
    return load("tiny-sdxl")


@pytest.fixture(scope="module")
def sharp():
    return sharpened("tiny-sdxl")


def batch(n=2, before=BEFORE, after=AFTER, guidance=7.5, negative=""):
    return PairBatch(before=[before] * n, after=[after] * n, seeds=list(range(1, n + 1)),
                     guidance=[guidance] * n, negative=negative)


@torch.no_grad()
def unseamed_pairs(pipe, pairs, steps, height, width):
    """The Stable Diffusion loop as it was before the seam: one text encoding of the
    negative and the captions, the UNet called with `encoder_hidden_states` alone, a
    scheduler made from the model's config."""
    count = len(pairs)
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(steps, device=pipe.unet.device)
    cond = [text for pair in zip(pairs.before, pairs.after) for text in pair]
    embeds = encode_prompts(pipe, [pairs.negative] * (2 * count) + cond)
    latent_hw = latent_size(pipe, height, width)
    latents = initial_noise(pipe, pairs.seeds, latent_hw).repeat_interleave(2, dim=0)
    latents = latents * sched.init_noise_sigma
    guidance = torch.tensor(pairs.guidance).repeat_interleave(2).view(-1, 1, 1, 1)
    for t in sched.timesteps:
        model_in = sched.scale_model_input(torch.cat([latents, latents]), t)
        out = pipe.unet(model_in, t, encoder_hidden_states=embeds, return_dict=False)[0]
        uncond, text = out.chunk(2)
        latents = sched.step(uncond + guidance * (text - uncond), t, latents,
                             return_dict=False)[0]
    return latents[0::2], latents[1::2]


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd2"])
def test_stable_diffusion_pairs_are_the_bytes_of_the_loop_before_the_seam(name):
    pipe = load(name)
    pairs = PairBatch(before=[BEFORE, "a house"], after=[AFTER, "a green house"],
                      seeds=[4, 9], guidance=[7.5, 12.0], negative="a blurry photo")
    theirs = unseamed_pairs(pipe, pairs, steps=4, height=40, width=32)
    for controller in (None, AttentionController()):
        ours = sample_pairs(pipe, pairs, steps=4, height=40, width=32, controller=controller)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


@pytest.mark.parametrize("negative", ["", "a blurry photo"])
def test_sdxl_pairs_are_what_diffusers_sdxl_pipeline_draws_from_the_same_noise(sdxl,
                                                                                negative):
    """Two text encoders' penultimate states, the pooled embedding, the (h, w, 0, 0, h, w)
    time ids and the zero negative (or the encoded one) as diffusers makes them: a
    non-square size catches height and width swapped in the time ids."""
    height, width, steps = 64, 48, 4
    ours = sample_pairs(sdxl, batch(1, negative=negative), steps=steps, height=height,
                        width=width)
    noise = initial_noise(sdxl, [1], latent_size(sdxl, height, width))
    kwargs = dict(prompt=[BEFORE, AFTER], negative_prompt=[negative] * 2 if negative else None,
                  num_inference_steps=steps, height=height, width=width, guidance_scale=7.5,
                  latents=noise.repeat(2, 1, 1, 1))
    theirs = sdxl(**kwargs, output_type="latent").images
    assert torch.allclose(theirs[0], ours[0][0], atol=1e-5)
    assert torch.allclose(theirs[1], ours[1][0], atol=1e-5)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)
    images = sdxl(**kwargs, output_type="pt").images
    assert torch.allclose(images, decode(sdxl, torch.cat(ours)), atol=1e-5)
    controlled = sample_pairs(sdxl, batch(1, negative=negative), steps=steps, height=height,
                              width=width, controller=AttentionController())
    assert torch.equal(controlled[0], ours[0]) and torch.equal(controlled[1], ours[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_sdxl_decodes_as_its_pipeline_does(dtype):
    """fp16: the VAE (force_upcast) decodes in fp32 and is fp16 again after; a VAE whose
    config has latents_mean/latents_std gets its latents denormalised."""
    pipe = family_for("tiny-sdxl").load_text_to_image("tiny-sdxl", "cpu", dtype)
    if dtype == torch.float32:
        pipe.vae.register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.0],
                                    latents_std=[0.5, 1.5, 1.0, 2.0])
    before, after = sample_pairs(pipe, batch(1), steps=2, height=64, width=48)
    noise = initial_noise(pipe, [1], latent_size(pipe, 64, 48))
    theirs = pipe(prompt=[BEFORE, AFTER], num_inference_steps=2, height=64, width=48,
                  guidance_scale=7.5, latents=noise.repeat(2, 1, 1, 1), output_type="pt").images
    ours = decode(pipe, torch.cat([before, after]))
    assert torch.isfinite(ours).all()
    assert torch.allclose(theirs.float(), ours, atol=1e-3)
    assert pipe.vae.dtype == dtype


def test_sdxl_one_batched_unet_call_per_step_with_the_added_conditioning(sdxl):
    calls = []

    def record(module, args, kwargs, out):
        added = kwargs["added_cond_kwargs"]
        calls.append((args[0].shape[0], tuple(added["text_embeds"].shape),
                      added["time_ids"][0].tolist()))

    handle = sdxl.unet.register_forward_hook(record, with_kwargs=True)
    try:
        sample_pairs(sdxl, batch(3), steps=3, height=96, width=64,
                     controller=PromptToPrompt(self_steps=[3, 1, 0]))
    finally:
        handle.remove()
    assert calls == [(12, (12, 32), [96, 64, 0, 0, 96, 64])] * 3


@pytest.mark.parametrize("cross", ["none", "replace", "refine"])
def test_sdxl_same_prompt_with_full_injection_gives_the_same_image(sharp, cross):
    n = sharp.tokenizer.model_max_length
    control = PromptToPrompt(
        self_steps=[4, 4], cross=cross, cross_steps=4,
        mapper=alignment.replace_mapper(sharp.tokenizer, BEFORE, BEFORE, n).repeat(2, 1, 1),
        refine=tuple(t.repeat(2, 1) for t in
                     alignment.refine_alignment(sharp.tokenizer, BEFORE, BEFORE, n)))
    before, after = sample_pairs(sharp, batch(2, after=BEFORE), steps=4, height=64, width=48,
                                 controller=control)
    assert torch.equal(before, after)
    assert control.controlled and control.materialised == {}


def test_sdxl_injection_brings_the_after_image_closer_over_many_seeds(sharp):
    free, held = injection_distances(sharp, 12, height=64, width=48)
    assert held.mean() < 0.7 * free.mean(), (free, held)
    assert (held < free).sum().item() >= 11, (free, held)


def test_sdxl_probabilities_are_materialised_only_for_the_word_maps(sharp):
    layers = unet_layers(sharp.unet)
    assert {layer.factor for layer in layers.values() if layer.cross} == {2}
    control = PromptToPrompt(self_steps=[2, 1])
    sample_pairs(sharp, batch(), steps=4, height=64, width=64, controller=control)
    assert {step for step, _ in control.controlled} == {0, 1}
    assert all(name.endswith("attn1.processor") for _, name in control.controlled)
    assert control.materialised == {}
    n = sharp.tokenizer.model_max_length
    maps = WordMaps(torch.ones(2, 2, n))
    sample_pairs(sharp, batch(), steps=3, height=64, width=64, controller=maps)
    assert {name for _, name in maps.materialised} == \
        {name for name, layer in layers.items() if layer.cross}


@pytest.mark.parametrize("height, width", [(64, 48), (96, 64), (72, 120)])
def test_sdxl_word_maps_follow_the_latents_at_any_size(sharp, height, width):
    maps = WordMaps(torch.ones(1, 2, sharp.tokenizer.model_max_length), target=1)
    before, _ = sample_pairs(sharp, batch(1), steps=2, height=height, width=width,
                             controller=maps)
    latent_hw = (height // 8, width // 8)
    assert before.shape[-2:] == latent_hw
    assert maps.maps().shape == (1, 2, *Layer("", True, maps.factor).map_size(latent_hw))


@pytest.mark.parametrize("cross", ["replace", "refine", "none"])
def test_sdxl_fused_cross_edits_equal_the_materialised_ones(sharp, cross):
    fused, mixed, both = cross_edit_runs(sharp, cross, height=64, width=48)
    assert both.materialised
    # rounding apart (the latents reach about 13 here), far below what the edit changes
    rounding = (fused[1] - mixed[1]).abs().max()
    assert rounding < 0.01 * (fused[1] - fused[0]).abs().max(), rounding


def test_a_word_swap_of_as_many_tokens_skips_a_product_that_changes_nothing(sharp):
    n = sharp.tokenizer.model_max_length
    mapper = alignment.replace_mapper(sharp.tokenizer, BEFORE, AFTER, n).repeat(2, 1, 1)

    def run(skip):
        control = PromptToPrompt(self_steps=[0, 0], cross="replace", cross_steps=3,
                                 mapper=mapper)
        assert control._same_tokens
        control._same_tokens = skip
        return sample_pairs(sharp, batch(), steps=3, height=64, width=48, controller=control)

    skipped, multiplied = run(True), run(False)
    assert torch.equal(skipped[0], multiplied[0]) and torch.equal(skipped[1], multiplied[1])


def test_sdxl_refuses_per_step_unconditional_embeddings(sdxl):
    with pytest.raises(ValueError, match="Stable Diffusion 1.x/2.x"):
        sample_pairs(sdxl, batch(1), steps=2, height=64, width=64,
                     uncond=[torch.zeros(1, 77, 64)] * 2)
