"""A recipe per flow editor on its tiny model, end to end through the real `editkit` command:
template captions, Prompt-to-Prompt pairs rendered with `tiny-sd`, a `flow-lora` LoRA on the
tiny FLUX.1 Kontext, FLUX.2 klein or Qwen-Image-Edit, evaluated against its base on the
held-out split; `editkit edit` edits with the run's result, and the family's diffusers
pipeline, given the same LoRA with `load_lora_weights`, makes the same image for the same
seed."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from recipe_files import write_recipe

from editkit.testing import tiny_model

RECIPE = """\
name: flow-tiny
output: runs/flow
seed: 0
captions: {{use: template, count: 6, options: {{subjects: [car, house, tree], attributes: [red, blue]}}}}
render:
  use: prompt-to-prompt
  options: {{model: tiny-sd, samples: 1, steps: 2, width: 64, height: 64}}
filters:
  - {{use: clip, options: {{model: tiny-clip, min_image: -1, min_direction: -1, min_text: -1}}}}
train:
  use: flow-lora
  options: {{base: {base}, rank: 4, steps: 4, resolution: 64, batch_size: 2,
            learning_rate: 5.0e-2, checkpoint_every: 4, validate_every: 4, validation_images: 1,
            validation_inference_steps: 2, optimizer: adamw8bit}}
evaluate: {{split: 0.34, steps: 2, resolution: 64, clip_model: tiny-clip,
           dino_model: tiny-dinov2, device: cpu, base: {base}}}
"""
INSTRUCTION = "make the red car blue"
FAMILIES = {"tiny-flux-kontext": "flux-kontext", "tiny-flux2-klein": "flux2-klein",
            "tiny-qwen-image-edit": "qwen-image-edit"}


def photo(path, size=(80, 64)):
    pixels = np.random.default_rng(0).integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
    pixels[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = (230, 40, 40)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("base", list(FAMILIES))
def test_a_tiny_flow_recipe_trains_edits_and_diffusers_edits_alike(base, cli, tmp_path):
    from editkit.models.families import family_named

    write_recipe(tmp_path, RECIPE.format(base=base))
    run = cli("run", "recipe.yaml", OMP_NUM_THREADS="1", timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    folder = tmp_path / "runs/flow"
    final = folder / "train" / "final"
    meta = json.loads((final / "editkit_weights.json").read_text())
    assert (meta["type"], meta["base"], meta["family"]) == ("lora", base, FAMILIES[base])
    assert "text cached" in (folder / "train" / "log.txt").read_text()
    metrics = json.loads((folder / "evaluate/metrics.json").read_text())
    assert [m["model"]["family"] for m in metrics["models"]] == [FAMILIES[base]] * 2
    assert all(None not in m["metrics"].values() for m in metrics["models"])

    source = photo(tmp_path / "street.png")
    edit = cli("edit", "street.png", INSTRUCTION, "--model", "runs/flow", "--steps", "3",
               "--seed", "7", "--size", "80", "--out", "edited.png", OMP_NUM_THREADS="1")
    assert edit.returncode == 0, edit.stderr
    out = Image.open(tmp_path / "edited.png")
    assert out.size == (80, 64)
    saved = json.loads(out.text["editkit"])
    assert (saved["model"]["type"], saved["model"]["family"]) == ("lora", FAMILIES[base])
    assert saved["guidance"] == meta["guidance"]["text"] and saved["image_guidance"] is None
    assert "Image guidance" not in out.text["parameters"]
    ours = np.asarray(out.convert("RGB"), np.int16)

    # the same edit as a diffusers user makes it: the base with the LoRA
    family = family_named(FAMILIES[base])
    pipe = diffusers_pipeline(family, tiny_model(base))
    pipe.load_lora_weights(str(final), weight_name=meta["lora"])
    pipe.set_progress_bar_config(disable=True)

    def theirs():
        image = family.edit(pipe, [INSTRUCTION], [Image.open(source).convert("RGB")], 3,
                            guidance_scale=saved["guidance"],
                            generator=[torch.Generator("cpu").manual_seed(7)])[0]
        return np.asarray(image, np.int16)

    assert np.abs(ours - theirs()).max() <= 1
    pipe.unload_lora_weights()  # the trained LoRA changes the edit: it was applied
    assert np.abs(ours - theirs()).mean() > 0.25


def diffusers_pipeline(family, folder):
    """The family's diffusers pipeline, as `from_pretrained` loads it (Qwen-Image-Edit's
    processor loaded apart: transformers builds a Qwen2VLProcessor only with torchvision)."""
    extra = {"processor": family.load_processor(folder)} if hasattr(family, "load_processor") \
        else {}
    return family.pipeline_class().from_pretrained(folder, **extra)
