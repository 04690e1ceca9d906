"""FLUX.1 Kontext through the flow-editor seam, on a tiny random model built offline: it loads
as the real one does, edits at the input's size, its training prediction is what the pipeline's
transformer computes, and its LoRA file loads with the pipeline's `load_lora_weights`."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from editkit.models import model_family
from editkit.models.families import family_named, family_of
from editkit.models.flux_kontext import FluxKontext
from editkit.models.tiny.flux_kontext import build

FAMILY = FluxKontext()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(tmp_path_factory.mktemp("tiny-flux-kontext"))


@pytest.fixture(scope="module")
def pipe(tiny):
    pipe = FAMILY.load_editor(str(tiny), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def picture(width, height, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(images):
    """The images as the pipeline's preprocessing gives them to the VAE: (B, 3, H, W) in
    [-1, 1]."""
    arrays = np.stack([np.asarray(i, dtype=np.float32) for i in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1


def test_the_tiny_model_is_the_real_pipeline_at_a_tiny_size(tiny, pipe):
    from diffusers import FluxKontextPipeline

    loaded = FluxKontextPipeline.from_pretrained(tiny)
    assert type(loaded.tokenizer_2).__name__ in ("T5TokenizerFast", "T5Tokenizer")
    assert loaded.tokenizer_2.pad_token == "<pad>" and loaded.tokenizer_2.eos_token == "</s>"
    assert loaded.tokenizer_2("make it red").input_ids[-1] == loaded.tokenizer_2.eos_token_id
    assert loaded.transformer.config.guidance_embeds
    assert loaded.vae.config.latent_channels == 16 and loaded.vae.config.shift_factor
    assert loaded.scheduler.config.use_dynamic_shifting
    assert model_family(tiny) == "flux-kontext"
    assert family_named("flux-kontext") is family_of(pipe)
    assert FAMILY.latent_multiple(pipe) == 16


@pytest.mark.parametrize("size", [(32, 32), (48, 32)])
def test_an_edit_is_at_the_inputs_size(pipe, size):
    steps = []
    out = FAMILY.edit(pipe, ["make it red", "add snow"], [picture(*size, 0), picture(*size, 1)],
                      2, on_step=steps.append, generator=torch.Generator().manual_seed(0))
    assert [o.size for o in out] == [size, size]
    assert steps == [0, 1]


def training_parts(tiny):
    return SimpleNamespace(**FAMILY.training_parts(str(tiny)), dtype=torch.float32)


def test_the_training_prediction_is_what_the_pipeline_computes(tiny, pipe):
    parts = training_parts(tiny)
    seen = {}

    def hook(_module, _args, kwargs, output):
        seen.setdefault("call", (kwargs, output[0]))

    prompts = ["make it red", "turn the sky into night"]
    images = [picture(48, 32, 0), picture(48, 32, 1)]
    condition = FAMILY.image_latents(parts, pixels(images))
    noise = torch.randn(condition.shape, generator=torch.Generator().manual_seed(3))
    sigma = 0.7
    noisy = (1 - sigma) * condition.flip(0) + sigma * noise  # another image as the target
    packed = pipe._pack_latents(noisy, *noisy.shape)
    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        FAMILY.edit(pipe, prompts, images, 2, latents=packed, guidance_scale=2.5)
    finally:
        handle.remove()
    kwargs, output = seen["call"]
    text = FAMILY.text_embeddings(parts, prompts)
    assert torch.equal(text["prompt_embeds"], kwargs["encoder_hidden_states"])
    assert torch.equal(text["pooled_prompt_embeds"], kwargs["pooled_projections"])
    timesteps = kwargs["timestep"] * 1000
    with torch.no_grad():
        predicted = FAMILY.predict(parts, parts.transformer, noisy, condition, text, timesteps,
                                   2.5)
    expected = pipe._unpack_latents(output[:, :packed.shape[1]], 32, 48, pipe.vae_scale_factor)
    assert predicted.shape == noisy.shape
    assert torch.allclose(predicted, expected, atol=1e-5)
    with torch.no_grad():  # the embedded guidance reaches the transformer
        other = FAMILY.predict(parts, parts.transformer, noisy, condition, text, timesteps, 4.0)
    assert not torch.allclose(other, expected, atol=1e-4)


def test_cached_text_embeddings_edit_as_the_instruction_does(tiny, pipe):
    text = FAMILY.text_embeddings(training_parts(tiny), ["add snow"])
    image = [picture(32, 32, 4)]

    def edit(prompts, **text):
        return FAMILY.edit(pipe, prompts, image, 2, output_type="np",
                           generator=torch.Generator().manual_seed(1), **text)[0]

    assert np.allclose(edit(None, **text), edit(["add snow"]), atol=1e-6)
    assert not np.allclose(edit(["make it red"]), edit(["add snow"]), atol=1e-4)


def test_a_lora_round_trips_through_the_pipelines_loader(tiny, tmp_path):
    from diffusers import FluxKontextPipeline
    from peft import LoraConfig

    parts = training_parts(tiny)
    trained = FAMILY.editor_pipeline(parts)
    trained.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    trained.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                               target_modules=list(FAMILY.lora_targets)))
    image = [picture(32, 48, 2)]

    def edit(pipe):
        return FAMILY.edit(pipe, ["make it blue"], image, 2, output_type="np",
                           generator=torch.Generator().manual_seed(5))[0]

    with_lora = edit(trained)
    assert len(parts.scheduler.timesteps) == 1000  # the trainer's schedule is left whole
    FAMILY.save_lora(tmp_path, trained.transformer)
    fresh = FluxKontextPipeline.from_pretrained(tiny)
    fresh.set_progress_bar_config(disable=True)
    without = edit(fresh)
    fresh.load_lora_weights(tmp_path)
    assert with_lora.shape == (48, 32, 3)
    assert np.allclose(edit(fresh), with_lora, atol=1e-5)
    assert not np.allclose(without, with_lora, atol=1e-3)
