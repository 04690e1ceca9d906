"""A recipe on the tiny SDXL models, end to end through the real `editkit` command: template
captions, Prompt-to-Prompt pairs rendered with `tiny-sdxl`, the clip and dino filters, a LoRA
InstructPix2Pix editor trained from the plain SDXL base (conv_in widened), evaluated on the
held-out split; `editkit edit` edits with the run's result, and diffusers' SDXL InstructPix2Pix
pipeline, given the same LoRA, makes the same image for the same seed."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from recipe_files import write_recipe

from editkit.testing import tiny_model

RECIPE = """\
name: sdxl-tiny
output: runs/sdxl
seed: 0
captions: {use: template, count: 6, options: {subjects: [car, house, tree], attributes: [red, blue]}}
render:
  use: prompt-to-prompt
  options: {model: tiny-sdxl, samples: 1, steps: 2, width: 64, height: 64, local_blend: true}
filters:
  - {use: clip, options: {model: tiny-clip, min_image: -1, min_direction: -1, min_text: -1}}
  - {use: dino, options: {model: tiny-dinov2, min_similarity: -1}}
train:
  use: lora
  options: {base: tiny-sdxl, rank: 4, steps: 4, resolution: 32, batch_size: 2,
            learning_rate: 1.0e-2, checkpoint_every: 4, validate_every: 4, validation_images: 1,
            validation_inference_steps: 2}
evaluate: {split: 0.34, steps: 2, resolution: 64, clip_model: tiny-clip,
           dino_model: tiny-dinov2, device: cpu}
"""
INSTRUCTION = "make the red car blue"


def photo(path, size=(64, 48)):
    pixels = np.random.default_rng(0).integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
    pixels[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = (230, 40, 40)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.slow
def test_a_tiny_sdxl_recipe_runs_end_to_end_and_diffusers_edits_as_editkit_does(cli, tmp_path):
    from diffusers import StableDiffusionXLInstructPix2PixPipeline
    from safetensors.torch import load_file

    from editkit.models.editors import widen_conv_in

    write_recipe(tmp_path, RECIPE)
    run = cli("run", "recipe.yaml", OMP_NUM_THREADS="1", timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    folder = tmp_path / "runs/sdxl"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"captions", "render", "filters", "train", "evaluate"}
    render = [json.loads(line) for shard in sorted((folder / "render").glob("shard-*.jsonl"))
              for line in shard.read_text().splitlines()]
    assert len(render) == 6 and all(r["status"] == "kept" for r in render)
    assert Image.open(folder / "render" / render[0]["before"]).size == (64, 64)
    filters = manifest["stages"]["filters"]
    assert filters["scored"] == 6 and set(filters["stats"]) == {"0-clip", "1-dino"}
    final = folder / "train" / "final"
    meta = json.loads((final / "editkit_weights.json").read_text())
    assert (meta["type"], meta["base"], meta["conv_in"]) == ("lora", "tiny-sdxl",
                                                             "conv_in.safetensors")
    assert "conv_in widened to 8 channels" in (folder / "train" / "log.txt").read_text()
    metrics = json.loads((folder / "evaluate/metrics.json").read_text())
    # the base, tiny-sdxl, is text-to-image: only the trained editor is measured
    assert [m["label"] for m in metrics["models"]] == ["runs/sdxl"]
    trained = metrics["models"][0]
    held_out = (folder / "dataset/__test__/metadata.jsonl").read_text().splitlines()
    assert trained["model"]["family"] == "sdxl" and trained["metrics"]["rows"] == len(held_out) > 0
    assert None not in trained["metrics"].values()

    source = photo(tmp_path / "street.png")
    edit = cli("edit", "street.png", INSTRUCTION, "--model", "runs/sdxl", "--steps", "3",
               "--seed", "7", "--out", "edited.png", OMP_NUM_THREADS="1")
    assert edit.returncode == 0, edit.stderr
    out = Image.open(tmp_path / "edited.png")
    assert out.size == (64, 48)
    saved = json.loads(out.text["editkit"])
    assert (saved["model"]["type"], saved["model"]["family"]) == ("lora", "sdxl")
    assert saved["working_size"] == [64, 48] and saved["seed"] == 7
    ours = np.asarray(out.convert("RGB"), np.int16)
    assert np.abs(ours - np.asarray(Image.open(source).convert("RGB"), np.int16)).mean() > 10

    # the same edit as a diffusers user makes it: the base with the saved conv_in and the LoRA
    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(tiny_model("tiny-sdxl"))
    widen_conv_in(pipe.unet, 8)
    pipe.unet.conv_in.load_state_dict(load_file(final / meta["conv_in"]))
    pipe.load_lora_weights(str(final), weight_name=meta["lora"])
    pipe.set_progress_bar_config(disable=True)

    def theirs():
        return np.asarray(pipe(
            INSTRUCTION, image=Image.open(source).convert("RGB"), num_inference_steps=3,
            guidance_scale=saved["guidance"], image_guidance_scale=saved["image_guidance"],
            height=48, width=64, generator=torch.Generator("cpu").manual_seed(7)).images[0],
            np.int16)

    assert np.abs(ours - theirs()).max() <= 1
    pipe.unload_lora_weights()  # the trained LoRA changes the edit: it was applied
    assert np.abs(ours - theirs()).mean() > 2
