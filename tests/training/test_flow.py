"""`use: flow-lora` on the tiny FLUX.1 Kontext, FLUX.2 klein and Qwen-Image-Edit editors: the
loss falls and sampled edits move toward their targets, a stopped run resumes bit-identical,
the LoRA file loads with the family's diffusers pipeline and edits as `editkit edit` does."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from test_resume import (
    assert_identical,
    killed_until_done,
    last_step,
    prepared,
    stopped_and_resumed,
    tensors,
    train,
)

from editkit.testing.pairs import make_pair_dataset

FAMILIES = ["tiny-flux-kontext", "tiny-flux2-klein", "tiny-qwen-image-edit"]
FLOW = dict(resolution=32, rank=4, learning_rate=1e-2, validation_images=0)
SIZE = {"tiny-flux2-klein": 64}  # klein's pipeline edits images of 64 px a side or more


def flow(base: str, **options) -> dict:
    return {**FLOW, "base": base, "resolution": SIZE.get(base, 32), **options}


@pytest.fixture
def pairs(tmp_path):
    return make_pair_dataset(tmp_path / "pairs", count=4, size=(64, 64))


def latent_gap(folder, data, steps: int = 8) -> float:
    """How far edits sampled with the editor in `folder` land from their targets: the mean
    squared distance of the sampled latents to the target's, over the target's power, with
    a plain Euler flow sampler on the family's own `predict` (the tiny models' VAEs are
    random: decoded pixels say little, latents say what the transformer learnt)."""
    import torch
    from PIL import Image

    from editkit.models.editors import load_edit_pipeline
    from editkit.models.families import family_named
    from editkit.training.data import read_pair_rows, to_tensor

    pipe, spec = load_edit_pipeline(str(folder), device="cpu")
    family = family_named(spec.family)
    parts = SimpleNamespace(**pipe.components, dtype=torch.float32)
    rows, _, _ = read_pair_rows(data)
    gaps = []
    with torch.no_grad():
        for k, row in enumerate(rows):
            before = Image.open(row.input_image).convert("RGB")
            after = Image.open(row.edited_image).convert("RGB")
            condition = family.image_latents(parts, to_tensor(before)[None])
            target = family.image_latents(parts, to_tensor(after)[None])
            text = family.text_embeddings(parts, [row.prompt], [before])
            x = torch.randn(target.shape, generator=torch.Generator().manual_seed(k))
            sigmas = torch.linspace(1, 0, steps + 1)
            for i in range(steps):
                v = family.predict(parts, pipe.transformer, x, condition, text,
                                   sigmas[i:i + 1] * 1000, None)
                x = x + (sigmas[i + 1] - sigmas[i]) * v
            gaps.append(float(((x - target) ** 2).mean() / (target ** 2).mean()))
    return sum(gaps) / len(gaps)


# Qwen-Image-Edit's pipelines encode the image to edit at about a megapixel whatever the
# output size (4,096 tokens for the tiny model too): fewer, larger steps, and slow
LEARNING = {"tiny-flux-kontext": 150, "tiny-flux2-klein": 150, "tiny-qwen-image-edit": 40}


@pytest.mark.parametrize("base", ["tiny-flux-kontext", "tiny-flux2-klein", pytest.param(
    "tiny-qwen-image-edit", marks=pytest.mark.slow)])
def test_a_flow_lora_learns_its_pairs(base, pairs, tmp_path):
    """On four fixed pairs: the probe loss (fixed batches and noise) falls, and edits sampled
    with the trained LoRA land nearer their targets than the untrained editor's."""
    prepared("flow-lora", {"base": base}, tmp_path, pairs)
    steps = LEARNING[base]
    options = flow(base, rank=8, batch_size=4, random_flip=False, checkpoint_every=1000,
                   learning_rate=1e-2 * 150 / steps)
    untrained = train("flow-lora", pairs, tmp_path / "untrained", steps=0, **options)
    trained = train("flow-lora", pairs, tmp_path / "trained", steps=steps, **options)
    assert untrained["steps"] == 0
    assert trained["probe_loss_end"] < 0.9 * trained["probe_loss_start"]
    before = latent_gap(tmp_path / "untrained" / "final", pairs)
    after = latent_gap(tmp_path / "trained" / "final", pairs)
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("base", ["tiny-flux-kontext", "tiny-flux2-klein", pytest.param(
    "tiny-qwen-image-edit", marks=pytest.mark.slow)])
def test_a_stopped_and_resumed_flow_run_ends_bit_identical(base, pairs, tmp_path):
    """8-bit Adam, both dropouts, flips and the disk caches: stopped after 3 and 5 of 6
    steps and resumed, the same bits as the run never stopped."""
    data, options = prepared("flow-lora", {"base": base}, tmp_path, pairs)
    options = flow(base, optimizer="adamw8bit", min_8bit_size=1, text_dropout=0.3,
                   image_dropout=0.3, batch_size=2)
    found = stopped_and_resumed("flow-lora", data, tmp_path, options)
    assert any(k.startswith("final/pytorch_lora_weights.safetensors:transformer.")
               for k in found)


@pytest.mark.slow
def test_a_flow_run_killed_at_random_moments_ends_bit_identical(pairs, tmp_path):
    """A real process on a 4-bit base, killed with SIGKILL at random moments (while caching,
    between checkpoints, while writing one), started again until it finishes."""
    import random

    data, options = prepared("flow-lora", {"base": "tiny-flux-kontext"}, tmp_path, pairs)
    options = flow("tiny-flux-kontext", optimizer="adamw8bit", min_8bit_size=1,
                   quantize="nf4", text_dropout=0.2, batch_size=2, steps=18,
                   checkpoint_every=3)
    out = tmp_path / "killed"
    killed_until_done("flow-lora", options, data, out, random.Random("flow"), kills=3)
    assert last_step(out) == 18
    train("flow-lora", data, tmp_path / "never", **{**options, "checkpoint_every": 100})
    assert_identical(tensors(tmp_path / "never"), tensors(out))


def test_the_text_encoders_leave_memory_once_every_instruction_is_cached(pairs, tmp_path):
    result = train("flow-lora", pairs, tmp_path / "run", steps=2, checkpoint_every=2,
                   **flow("tiny-flux-kontext", validation_images=1))
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "text cached:" in log and "latents cached:" in log
    assert 0 <= result["validation"]["l1"] <= 1  # validated from the cached embeddings
    cached = list((tmp_path / "run" / "cache" / "text").glob("*.safetensors"))
    assert len(cached) == 4  # one per instruction
    again = train("flow-lora", pairs, tmp_path / "run", steps=3, checkpoint_every=3,
                  **flow("tiny-flux-kontext"))
    assert again["steps"] == 3
    assert len(list((tmp_path / "run" / "cache" / "text").glob("*.safetensors"))) == 4


@pytest.mark.parametrize("base", FAMILIES)
def test_editkit_edit_and_the_diffusers_pipeline_give_the_same_image(base, pairs, tmp_path):
    """The exported LoRA: `editkit edit` and the family's diffusers pipeline with
    `load_lora_weights`, same seed and settings, the same pixels; and not the base's."""
    import numpy as np
    import torch
    from PIL import Image

    from editkit.editing import EditSettings, run_edits
    from editkit.models.families import family_named
    from editkit.testing import tiny_model
    from editkit.training.data import read_pair_rows

    folder = tiny_model(base)
    train("flow-lora", pairs, tmp_path / "run", steps=4, checkpoint_every=4,
          **flow(base, learning_rate=5e-2))
    final = tmp_path / "run" / "final"
    meta = json.loads((final / "editkit_weights.json").read_text())
    family = family_named(meta["family"])
    image = Image.open(read_pair_rows(pairs)[0][0].input_image).convert("RGB")
    image.save(tmp_path / "in.png")
    (written,) = run_edits([str(tmp_path / "in.png")], EditSettings("make it blue", steps=3, size=64),
                           str(final), str(tmp_path / "out.png"), device="cpu",
                           say=lambda line: None)
    ours = np.asarray(Image.open(written).convert("RGB"), dtype=np.int16)
    pipe = diffusers_pipeline(family, folder)
    base_image = family.edit(pipe, ["make it blue"], [image], 3,
                             guidance_scale=meta["guidance"]["text"],
                             generator=[torch.Generator("cpu").manual_seed(0)])[0]
    pipe.load_lora_weights(str(final))
    theirs = family.edit(pipe, ["make it blue"], [image], 3,
                         guidance_scale=meta["guidance"]["text"],
                         generator=[torch.Generator("cpu").manual_seed(0)])[0]
    theirs = np.asarray(theirs, dtype=np.int16)
    assert np.abs(ours - theirs).max() <= 1
    assert np.abs(ours - np.asarray(base_image, dtype=np.int16)).max() > 1


def diffusers_pipeline(family, folder):
    """The family's diffusers pipeline, as `from_pretrained` loads it (Qwen-Image-Edit's
    processor loaded apart: transformers builds a Qwen2VLProcessor only with torchvision)."""
    extra = {"processor": family.load_processor(folder)} if hasattr(family, "load_processor") \
        else {}
    return family.pipeline_class().from_pretrained(folder, **extra)
