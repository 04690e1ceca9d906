"""Attention control and the batched pair sampler, on tiny Stable Diffusion models."""

import numpy as np
import pytest
import torch
from pair_checks import cross_edit_runs, injection_distances

from editkit.diffusion.control import AttentionController, Layer, attention_control, unet_layers
from editkit.diffusion.prompt_to_prompt import PromptToPrompt
from editkit.diffusion.sampling import PairBatch, initial_noise, sample_pairs
from editkit.diffusion.word_maps import WordMaps, map_factor, pick_level
from editkit.models import load
from editkit.testing import sharpen_attention

BEFORE, AFTER = "a photo of a red car", "a photo of a blue car"


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    pipe = load(StableDiffusionPipeline, "tiny-sd", safety_checker=None,
                requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    sharpen_attention(pipe.unet)
    return pipe


def batch(n=2, before=BEFORE, after=AFTER, guidance=7.5):
    return PairBatch(before=[before] * n, after=[after] * n, seeds=list(range(1, n + 1)),
                     guidance=[guidance] * n)


def plain_image(pipe):
    return np.asarray(pipe(BEFORE, num_inference_steps=3, height=32, width=32,
                           generator=torch.Generator().manual_seed(3)).images[0])


def test_processors_are_restored_after_a_run_and_after_an_error(pipe):
    reference = plain_image(pipe)
    original = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    sample_pairs(pipe, batch(), steps=3, height=32, width=32,
                 controller=PromptToPrompt(self_steps=[3, 3]))
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == original
    with pytest.raises(RuntimeError, match="boom"):
        with attention_control(pipe.unet, AttentionController()):
            assert all(type(v).__name__ == "ControlledAttnProcessor"
                       for v in pipe.unet.attn_processors.values())
            raise RuntimeError("boom")
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == original
    assert np.array_equal(plain_image(pipe), reference)


def test_the_loop_reproduces_diffusers_pipeline_and_the_fused_path_is_exact(pipe):
    ours = sample_pairs(pipe, batch(1), steps=4, height=32, width=32)
    controlled = sample_pairs(pipe, batch(1), steps=4, height=32, width=32,
                              controller=AttentionController())
    assert torch.equal(ours[0], controlled[0]) and torch.equal(ours[1], controlled[1])
    noise = initial_noise(pipe, [1], (16, 16))
    theirs = pipe([BEFORE, AFTER], num_inference_steps=4, height=32, width=32,
                  guidance_scale=7.5, latents=noise.repeat(2, 1, 1, 1), output_type="latent").images
    assert torch.allclose(theirs[0], ours[0][0], atol=1e-4)
    assert torch.allclose(theirs[1], ours[1][0], atol=1e-4)


def test_one_batched_unet_call_per_step(pipe):
    calls = []
    handle = pipe.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        sample_pairs(pipe, batch(3), steps=5, height=32, width=32,
                     controller=PromptToPrompt(self_steps=[5, 2, 0]))
    finally:
        handle.remove()
    assert calls == [12] * 5


def test_probabilities_are_materialised_only_where_control_applies(pipe):
    control = PromptToPrompt(self_steps=[2, 1])
    sample_pairs(pipe, batch(), steps=6, height=32, width=32, controller=control)
    assert {step for step, _ in control.controlled} == {0, 1}
    assert all(name.endswith("attn1.processor") for _, name in control.controlled)
    assert control.materialised == {}  # injection runs in the fused kernel
    n = pipe.tokenizer.model_max_length
    control = PromptToPrompt(self_steps=[0, 0], cross="refine", cross_steps=2,
                             refine=(torch.arange(n).repeat(2, 1), torch.ones(2, n)))
    sample_pairs(pipe, batch(), steps=6, height=32, width=32, controller=control)
    assert {step for step, _ in control.controlled} == {0, 1}
    assert all(name.endswith("attn2.processor") for _, name in control.controlled)
    assert control.materialised == {}  # cross edits move onto the values: fused too
    maps = WordMaps(torch.ones(2, 2, pipe.tokenizer.model_max_length))
    sample_pairs(pipe, batch(), steps=3, height=32, width=32, controller=maps)
    layers = {name for _, name in maps.materialised}
    assert layers and all(name.endswith("attn2.processor") for name in layers)
    assert {unet_layers(pipe.unet)[n].factor for n in layers} == {maps.factor}


def test_map_sizes_follow_the_latents_at_any_aspect_ratio(pipe):
    assert Layer("x", True, 4).map_size((64, 64)) == (16, 16)
    assert Layer("x", True, 2).map_size((13, 20)) == (7, 10)
    maps = WordMaps(torch.ones(1, 2, pipe.tokenizer.model_max_length))
    sample_pairs(pipe, batch(1), steps=2, height=48, width=24, controller=maps)
    h, w = Layer("", True, maps.factor).map_size((24, 12))
    assert maps.maps().shape == (1, 2, h, w)


def test_word_maps_are_about_sixteen_cells_across_whatever_the_latent_size():
    # Stable Diffusion at 512 px: Prompt-to-Prompt's 16x16 level
    assert map_factor((64, 64)) == 4
    assert map_factor((32, 24)) == 1
    # 16x16 latents (the shapes world): the finest cross-attention level, 8x8, not 4x4
    layers = {f"l{f}": Layer(f"l{f}", True, f) for f in (2, 4)}
    assert pick_level(layers, map_factor((16, 16))) == 2
    assert pick_level(layers, map_factor((64, 64))) == 4


def test_same_prompt_with_full_injection_gives_the_same_image(pipe):
    before, after = sample_pairs(pipe, batch(2, after=BEFORE), steps=4, height=32, width=32,
                                 controller=PromptToPrompt(self_steps=[4, 4]))
    assert torch.equal(before, after)


def test_injection_brings_the_after_image_closer_over_many_seeds(pipe):
    free, held = injection_distances(pipe, 12, height=32, width=32)
    assert held.mean() < 0.7 * free.mean(), (free, held)
    assert (held < free).sum().item() >= 11, (free, held)


def test_v_prediction_and_the_sd2_layout_render(pipe):
    from diffusers import StableDiffusionPipeline

    for name in ("tiny-sd-v", "tiny-sd2"):
        other = load(StableDiffusionPipeline, name, safety_checker=None,
                     requires_safety_checker=False)
        assert other.scheduler.config.prediction_type == "v_prediction"
        before, after = sample_pairs(other, batch(1, after=BEFORE), steps=3, height=32,
                                     width=32, controller=PromptToPrompt(self_steps=[3]))
        assert torch.isfinite(before).all() and torch.equal(before, after)
    assert other.unet.config.use_linear_projection


@pytest.mark.parametrize("cross", ["replace", "refine", "none"])
def test_fused_cross_edits_equal_the_materialised_ones(pipe, cross):
    fused, mixed, both = cross_edit_runs(pipe, cross, height=32, width=32)
    assert both.materialised  # the collector's level ran the explicit probabilities
    assert torch.allclose(fused[1], mixed[1], rtol=1e-3, atol=1e-3)
    assert not torch.allclose(fused[1], fused[0], rtol=1e-2, atol=1e-2)
