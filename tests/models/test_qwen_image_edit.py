"""Qwen-Image-Edit through the flow-editor seam, on the tiny model: loading with the pipeline
its model_index.json names, edits at the input's size one image a call, and what a trainer
computes (latents, VL text embeddings, the transformer's prediction) equal to what the
pipeline computes inside a real call; a LoRA saved by the family loads into a fresh pipeline."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from editkit.models import model_family
from editkit.models.families import family_named
from editkit.models.qwen_image_edit import processor_class
from editkit.models.tiny.qwen_image_edit import build

FAMILY = family_named("qwen-image-edit")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(tmp_path_factory.mktemp("qwen") / "tiny-qwen-image-edit")


@pytest.fixture(scope="module")
def pipe(tiny):
    pipe = FAMILY.load_editor(tiny, torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def parts(tiny):
    return SimpleNamespace(**FAMILY.training_parts(tiny), dtype=torch.float32)


def picture(width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def pixels_of(image):
    """[-1, 1] pixels (1, 3, H, W) as the trainer makes them."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def edit_by_text_and_from_cache(pipe, parts, image, cached_pipe=None):
    """`image` edited by an instruction, then from its and the negative prompt's embeddings
    as the trainer caches them (its validation edits), by `cached_pipe` if given."""
    text = FAMILY.text_embeddings(parts, ["make it blue"], [image])
    negative = FAMILY.text_embeddings(parts, [" "], [image])
    by_text = FAMILY.edit(pipe, ["make it blue"], [image], 2,
                          generator=torch.Generator().manual_seed(0))[0]
    cached = FAMILY.edit(cached_pipe or pipe, None, [image], 2,
                         generator=torch.Generator().manual_seed(0),
                         **text, **{f"negative_{k}": v for k, v in negative.items()})[0]
    return by_text, cached


def test_the_tiny_model_loads_as_the_pipeline_its_index_names(tiny, pipe):
    from diffusers import QwenImageEditPlusPipeline

    index = json.loads((tiny / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPlusPipeline"
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]
    assert model_family(tiny) == "qwen-image-edit"
    # transformers builds a Qwen2VLProcessor only with torchvision: the processor comes apart
    processor = processor_class().from_pretrained(tiny, subfolder="processor")
    loaded = QwenImageEditPlusPipeline.from_pretrained(tiny, processor=processor)
    assert loaded.transformer.config.zero_cond_t  # 2511's zero timestep for the condition
    assert type(pipe) is QwenImageEditPlusPipeline
    assert FAMILY.latent_multiple(pipe) == 16 and pipe.vae_scale_factor == 8
    assert FAMILY.recommended(pipe) == (4.0, 40)


def test_the_tokenizer_splits_the_template_as_qwens_does(pipe):
    """The pipeline drops the first 64 hidden states: exactly its system prompt's tokens."""
    tokenizer, config = pipe.processor.tokenizer, pipe.text_encoder.config
    system = pipe.prompt_template_encode.split("{}")[0]
    assert len(tokenizer(system).input_ids) == pipe.prompt_template_encode_start_idx == 64
    assert tokenizer.decode(tokenizer("make the car red").input_ids) == "make the car red"
    for name, token in (("image_token_id", "<|image_pad|>"),
                        ("vision_start_token_id", "<|vision_start|>"),
                        ("vision_end_token_id", "<|vision_end|>")):
        assert getattr(config, name) == tokenizer.convert_tokens_to_ids(token)
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == "<|im_end|>"


def test_a_build_is_deterministic(tiny, tmp_path):
    from safetensors.torch import load_file

    again = build(tmp_path / "again")
    for part in ("transformer/diffusion_pytorch_model", "vae/diffusion_pytorch_model",
                 "text_encoder/model"):
        first, second = (load_file(f / f"{part}.safetensors") for f in (tiny, again))
        assert all(torch.equal(first[k], second[k]) for k in first)
    assert (tiny / "tokenizer" / "tokenizer.json").read_text() == \
        (again / "tokenizer" / "tokenizer.json").read_text()


def test_edits_are_at_the_input_size_one_image_a_call(pipe):
    """Two images in one `edit` are two edits (the Plus pipeline would read a list as two
    references for one): each equals its edit alone with the same seed."""
    wide = [picture(48, 32, 1), picture(48, 32, 2)]
    out = FAMILY.edit(pipe, ["make it blue", "add a tree"], wide, 2,
                      generator=[torch.Generator().manual_seed(k) for k in (0, 1)])
    assert [o.size for o in out] == [(48, 32), (48, 32)]
    alone = FAMILY.edit(pipe, ["add a tree"], wide[1:], 2,
                        generator=[torch.Generator().manual_seed(1)])[0]
    assert np.array_equal(np.asarray(alone), np.asarray(out[1]))


def test_cached_text_embeddings_edit_as_the_instruction_does(pipe, parts):
    """The trainer's validation edits from its text cache, by the pipeline around its parts
    once the text encoder has left: the instruction's and the negative prompt's embeddings
    give the image the instruction gives (a square one, at its size)."""
    image = picture(32, 32, 3)
    textless = SimpleNamespace(**{**vars(parts), **dict.fromkeys(FAMILY.text_parts)})
    trainers = FAMILY.editor_pipeline(textless)
    trainers.set_progress_bar_config(disable=True)
    by_text, cached = edit_by_text_and_from_cache(pipe, parts, image, trainers)
    assert by_text.size == (32, 32)
    assert np.array_equal(np.asarray(by_text), np.asarray(cached))


def test_predict_is_what_the_pipeline_computes(pipe, parts):
    """For a fixed noise, target, sigma and instruction, `predict` from `image_latents` and
    `text_embeddings` equals the transformer's output inside a pipeline call (captured by a
    forward hook), the image to edit encoded at the pipeline's megapixel size."""
    from diffusers import QwenImageEditPlusPipeline as Pipe

    before, after = picture(48, 32, 4), picture(48, 32, 5)
    calls = []

    def capture(_module, _args, kwargs, output):
        calls.append((kwargs, output[0]))

    with torch.no_grad():
        target = FAMILY.image_latents(parts, pixels_of(after))
        condition = FAMILY.image_latents(parts, pixels_of(FAMILY.condition_image(parts, before)))
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(7))
    hook = pipe.transformer.register_forward_hook(capture, with_kwargs=True)

    def first_call(latents):  # two steps: a lone sigma is stretched to the terminal one
        calls.clear()
        packed = Pipe._pack_latents(latents, 1, *latents.shape[1:])
        pipe(image=before, prompt="make it blue", num_inference_steps=2, sigmas=[0.7, 0.5],
             height=32, width=48, true_cfg_scale=1.0, latents=packed)
        return calls[0]

    try:
        first_call(noise)  # the schedule's first sigma, then the target's noisy latents at it
        sigma, timesteps = pipe.scheduler.sigmas[0], pipe.scheduler.timesteps[:1]
        noisy = (1 - sigma) * target + sigma * noise
        seen, out = first_call(noisy)
    finally:
        hook.remove()
    assert 0.3 < float(sigma) < 0.95
    assert seen["img_shapes"] == [[(1, 2, 3), (1, 52, 78)]]  # 48x32 out, 1248x832 condition
    assert torch.allclose(seen["hidden_states"][:, 6:], Pipe._pack_latents(
        condition, 1, *condition.shape[1:]), atol=1e-5)
    text = FAMILY.text_embeddings(parts, ["make it blue"], [before])
    assert seen["encoder_hidden_states_mask"] is None and bool(text["prompt_embeds_mask"].all())
    assert torch.allclose(seen["encoder_hidden_states"], text["prompt_embeds"], atol=1e-6)
    with torch.no_grad():
        predicted = FAMILY.predict(parts, parts.transformer, noisy, condition, text,
                                   timesteps, None)
    assert predicted.shape == target.shape
    assert torch.allclose(Pipe._pack_latents(predicted, 1, *predicted.shape[1:]), out[:, :6],
                          atol=1e-5)


def test_a_batch_of_instructions_of_different_lengths_predicts_as_each_alone(parts):
    """Padded text (the mask marks the real tokens) and a condition of another size than the
    noisy latents: each example of a batch is predicted as it is alone."""
    image = picture(32, 32, 8)
    prompts = ["blue", "make the old wooden house in the picture a modern red building"]
    text = FAMILY.text_embeddings(parts, prompts, [image, image])
    lengths = text["prompt_embeds_mask"].sum(dim=1).tolist()
    assert lengths[0] < lengths[1] == text["prompt_embeds"].shape[1]
    generator = torch.Generator().manual_seed(3)
    noisy = torch.randn(2, 16, 4, 6, generator=generator)
    condition = torch.randn(2, 16, 8, 10, generator=generator)
    timesteps = torch.tensor([800.0, 300.0])
    with torch.no_grad():
        both = FAMILY.predict(parts, parts.transformer, noisy, condition, text, timesteps, None)
        for i, prompt in enumerate(prompts):
            alone = FAMILY.text_embeddings(parts, [prompt], [image])
            assert torch.allclose(alone["prompt_embeds"][0],
                                  text["prompt_embeds"][i, :lengths[i]], atol=1e-6)
            one = FAMILY.predict(parts, parts.transformer, noisy[i:i + 1], condition[i:i + 1],
                                 alone, timesteps[i:i + 1], None)
            assert torch.allclose(one, both[i:i + 1], atol=1e-5)


def test_a_lora_saved_by_the_family_loads_into_a_fresh_pipeline(tiny, tmp_path):
    from diffusers import QwenImageEditPlusPipeline
    from peft import LoraConfig

    parts = SimpleNamespace(**FAMILY.training_parts(tiny), dtype=torch.float32)
    editor = FAMILY.editor_pipeline(parts)
    editor.set_progress_bar_config(disable=True)
    image = picture(32, 32, 6)

    def edit(pipe):
        return np.asarray(FAMILY.edit(pipe, ["make it blue"], [image], 2,
                                      generator=torch.Generator().manual_seed(0))[0])

    plain = edit(editor)
    editor.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                              target_modules=list(FAMILY.lora_targets)))
    tuned = edit(editor)
    FAMILY.save_lora(tmp_path, editor.transformer)
    fresh = QwenImageEditPlusPipeline.from_pretrained(tiny, processor=FAMILY.load_processor(tiny))
    fresh.set_progress_bar_config(disable=True)
    fresh.load_lora_weights(tmp_path)
    assert not np.array_equal(tuned, plain)
    assert np.array_equal(edit(fresh), tuned)


def test_the_first_qwen_image_edit_loads_and_edits_with_its_own_pipeline(tmp_path):
    """Qwen/Qwen-Image-Edit's model_index.json names QwenImageEditPipeline (its VL model sees
    the image at a megapixel, its template differs): loaded, edited and encoded with it."""
    from diffusers import QwenImageEditPipeline

    folder = build(tmp_path / "first", plus=False)
    pipe = FAMILY.load_editor(folder, torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe) is QwenImageEditPipeline and model_family(folder) == "qwen-image-edit"
    assert FAMILY.recommended(pipe) == (4.0, 50)
    parts = SimpleNamespace(**FAMILY.training_parts(folder), dtype=torch.float32)
    assert parts.editor == "QwenImageEditPipeline" and FAMILY.recommended(parts)[1] == 50
    image = picture(48, 32, 9)
    by_text, cached = edit_by_text_and_from_cache(pipe, parts, image)
    assert by_text.size == (48, 32)
    assert np.array_equal(np.asarray(by_text), np.asarray(cached))
