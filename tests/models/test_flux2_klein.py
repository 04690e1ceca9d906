"""FLUX.2 klein through the flow-editor seam, on a tiny random model built offline: it loads as
the real one does (Qwen3 text encoder, Qwen's tokenizer and chat template built in code), edits
each image at its size, its training prediction is what the pipeline's transformer computes,
its LoRA file loads with the pipeline's `load_lora_weights`, and a base (undistilled) model is
run with classifier-free guidance and its own recommended settings."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from editkit.errors import InputError
from editkit.models import model_family
from editkit.models.families import family_named, family_of
from editkit.models.flux2_klein import Flux2Klein
from editkit.models.tiny.flux2_klein import build

FAMILY = Flux2Klein()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(tmp_path_factory.mktemp("tiny-flux2-klein"))


@pytest.fixture(scope="module")
def pipe(tiny):
    pipe = FAMILY.load_editor(str(tiny), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def noise_image(width, height, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def parts_of(folder):
    return SimpleNamespace(**FAMILY.training_parts(str(folder)), dtype=torch.float32)


def test_the_tiny_model_is_the_real_pipeline_at_a_tiny_size(tiny, pipe):
    from diffusers import Flux2KleinPipeline

    loaded = Flux2KleinPipeline.from_pretrained(tiny)
    assert json.loads((tiny / "model_index.json").read_text())["_class_name"] == \
        "Flux2KleinPipeline"
    assert loaded.config.is_distilled and not loaded.transformer.config.guidance_embeds
    tokenizer = loaded.tokenizer
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "make it red"}],
                                         tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False)
    assert text == ("<|im_start|>user\nmake it red<|im_end|>\n<|im_start|>assistant\n"
                    "<think>\n\n</think>\n\n")
    tokens = tokenizer.tokenize(text)
    assert tokens[:6] == ["<|im_start|>", "user", "Ċ", "make", "Ġit", "Ġred"]
    assert "<think>" in tokens and "</think>" in tokens
    # the pipeline's own text layers exist: its defaults run the tiny model unchanged
    assert loaded.text_encoder.config.num_hidden_layers >= max(FAMILY.text_layers)
    embeds, _ = loaded.encode_prompt("make it red")
    assert embeds.shape == (1, 512, 3 * loaded.text_encoder.config.hidden_size)
    assert loaded.transformer.config.joint_attention_dim == embeds.shape[-1]
    assert loaded.scheduler.config.use_dynamic_shifting
    assert loaded.vae.bn.running_var.min() > 0 and loaded.vae.bn.running_mean.abs().max() > 0
    assert model_family(tiny) == "flux2-klein"
    assert family_named("flux2-klein") is family_of(pipe)
    assert FAMILY.latent_multiple(pipe) == 16
    assert FAMILY.recommended(pipe) == (1.0, 4)


def test_the_tiny_model_is_deterministic_for_a_seed(tiny, tmp_path):
    again = build(tmp_path / "again")
    for file in ("transformer/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "tokenizer/tokenizer.json"):
        assert (again / file).read_bytes() == (tiny / file).read_bytes(), file


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (72, 64)])
def test_each_image_is_edited_alone_at_its_size(pipe, size):
    steps = []
    images = [noise_image(*size, 0), noise_image(*size, 1)]
    out = FAMILY.edit(pipe, ["make it red", "add snow"], images, 2, on_step=steps.append,
                      generator=[torch.Generator().manual_seed(0),
                                 torch.Generator().manual_seed(0)])
    assert [o.size for o in out] == [size, size]
    assert steps == [0, 1, 0, 1]  # one pipeline call per image
    alone = FAMILY.edit(pipe, ["add snow"], images[1:], 2,
                        generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.asarray(alone[0]), np.asarray(out[1]))


def test_cached_embeddings_of_a_batch_are_shared_out_per_image(tiny, pipe):
    parts = parts_of(tiny)
    prompts, images = ["make it red", "add snow"], [noise_image(64, 64, 3), noise_image(64, 64, 4)]
    text = FAMILY.text_embeddings(parts, prompts)

    def edit(**call):
        return FAMILY.edit(pipe, None if call else prompts, images, 2, output_type="np",
                           generator=[torch.Generator().manual_seed(k) for k in (0, 1)], **call)

    assert np.allclose(np.stack(edit(**text)), np.stack(edit()), atol=1e-6)


def test_an_image_the_pipeline_refuses_is_one_clear_line(pipe):
    with pytest.raises(InputError, match="at least 64"):
        FAMILY.edit(pipe, ["make it red"], [noise_image(48, 32, 0)], 2)


def test_the_training_prediction_is_what_the_pipeline_computes(tiny):
    parts = parts_of(tiny)
    pipe = FAMILY.editor_pipeline(parts)
    pipe.set_progress_bar_config(disable=True)
    calls = []

    def hook(_module, _args, kwargs, output):
        calls.append((kwargs, output[0]))

    prompt, image = "turn the sky into night", noise_image(96, 64, 0)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    condition = FAMILY.image_latents(parts, pixels / 127.5 - 1)
    target = FAMILY.image_latents(parts, torch.rand(1, 3, 64, 96) * 2 - 1)
    noise = torch.randn(condition.shape, generator=torch.Generator().manual_seed(3))
    sigma = 0.7
    noisy = (1 - sigma) * target + sigma * noise
    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        FAMILY.edit(pipe, [prompt], [image], 2, latents=noisy)
    finally:
        handle.remove()
    text = FAMILY.text_embeddings(parts, [prompt])
    assert len(calls) == 2
    for step, (kwargs, output) in enumerate(calls):
        assert torch.equal(text["prompt_embeds"], kwargs["encoder_hidden_states"])
        tokens = kwargs["hidden_states"]
        assert torch.allclose(tokens[:, 24:], pipe._pack_latents(condition), atol=1e-5)
        if step:  # the pipeline's own latents after a step: (B, C, h, w) again
            noisy = tokens[:, :24].permute(0, 2, 1).reshape(condition.shape)
        with torch.no_grad():
            predicted = FAMILY.predict(parts, parts.transformer, noisy, condition, text,
                                       kwargs["timestep"] * 1000, None)
        expected = output[:, :24].permute(0, 2, 1).reshape(condition.shape)
        assert predicted.shape == condition.shape == (1, 16, 4, 6)
        assert torch.allclose(predicted, expected, atol=1e-5)
    assert calls[0][0]["timestep"] > calls[1][0]["timestep"]
    # a training batch: each example as if alone (its own text, the condition's ids shared)
    other = FAMILY.text_embeddings(parts, ["add snow"])
    both = {"prompt_embeds": torch.cat([text["prompt_embeds"], other["prompt_embeds"]])}
    timesteps = torch.tensor([900.0, 300.0])
    with torch.no_grad():
        batch = FAMILY.predict(parts, parts.transformer, torch.cat([noisy, noise]),
                               torch.cat([condition, target]), both, timesteps, None)
        second = FAMILY.predict(parts, parts.transformer, noise, target, other,
                                timesteps[1:], None)
    assert torch.allclose(batch[1:], second, atol=1e-5)


def test_a_lora_round_trips_through_the_pipelines_loader(tiny, tmp_path):
    from diffusers import Flux2KleinPipeline
    from peft import LoraConfig

    parts = parts_of(tiny)
    trained = FAMILY.editor_pipeline(parts)
    trained.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    trained.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                               target_modules=list(FAMILY.lora_targets)))
    adapted = {n for n, m in trained.transformer.named_modules() if hasattr(m, "lora_A")}
    assert {"transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_out.0",
            "single_transformer_blocks.1.attn.to_qkv_mlp_proj",
            "single_transformer_blocks.1.attn.to_out"} <= adapted
    image = [noise_image(64, 96, 2)]

    def edit(pipe):
        return FAMILY.edit(pipe, ["make it blue"], image, 2, output_type="np",
                           generator=torch.Generator().manual_seed(5))[0]

    with_lora = edit(trained)
    FAMILY.save_lora(tmp_path, trained.transformer)
    fresh = Flux2KleinPipeline.from_pretrained(tiny)
    fresh.set_progress_bar_config(disable=True)
    without = edit(fresh)
    fresh.load_lora_weights(tmp_path)
    assert with_lora.shape == (96, 64, 3)
    assert np.allclose(edit(fresh), with_lora, atol=1e-5)
    assert not np.allclose(without, with_lora, atol=1e-3)


def test_a_base_model_runs_with_guidance_and_its_own_recommendation(tiny, tmp_path):
    base = build(tmp_path / "base", distilled=False)
    parts = parts_of(base)
    assert parts.is_distilled is False and parts_of(tiny).is_distilled is True
    assert FAMILY.recommended(parts) == (4.0, 50)
    pipe = FAMILY.load_editor(str(base), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert FAMILY.recommended(pipe) == (4.0, 50)
    assert not FAMILY.editor_pipeline(parts).config.is_distilled
    calls = []
    handle = pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = FAMILY.edit(pipe, ["make it red"], [noise_image(64, 64, 0)], 2)
    finally:
        handle.remove()
    assert out[0].size == (64, 64)
    assert len(calls) == 4  # guided: the instruction and the empty prompt each step
