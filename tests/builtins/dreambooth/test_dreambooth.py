"""DreamBooth on the tiny Stable Diffusion: prior preservation, LoRA and full, samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from editkit.errors import InputError
from editkit.plugin.kinds import TrainJob


def instance_photos(folder, count=3):
    folder.mkdir(parents=True)
    for i in range(count):
        image = Image.new("RGB", (40, 32), (200, 180, 120))
        ImageDraw.Draw(image).ellipse((8 + i, 6, 30 + i, 26), fill=(90, 60, 30))
        image.save(folder / f"dog-{i}.png")
    return folder


def train(tmp_path, **options):
    from editkit.builtins.dreambooth import DreamBoothOptions, DreamBoothTrainer

    opts = DreamBoothOptions(**{**dict(base="tiny-sd", instance_images=str(
        tmp_path / "dog"), resolution=16, steps=3, checkpoint_every=3, class_images=2,
        class_inference_steps=2, validation_inference_steps=2, samples_per_prompt=1,
        rank=4, learning_rate=1e-3), **options})
    return DreamBoothTrainer(opts).train(TrainJob(dataset_dir=tmp_path / "unused",
                                                  output_dir=tmp_path / "train", seed=0))


def test_lora_dreambooth_with_prior_preservation_and_text_encoder(tmp_path):
    from diffusers import StableDiffusionPipeline

    from editkit.testing import tiny_model

    instance_photos(tmp_path / "dog")
    result = train(tmp_path, train_text_encoder=True)
    out = tmp_path / "train"
    assert sorted(p.name for p in (out / "class_images").iterdir()) == \
        ["class-00000.png", "class-00001.png"]
    meta = json.loads((out / "final" / "editkit_weights.json").read_text())
    assert meta["type"] == "lora" and meta["task"] == "text-to-image"
    samples = sorted((out / "samples" / "step-00000003").glob("*.png"))
    assert len(samples) == 3 and "on-a-beach" in samples[0].name
    assert result["steps"] == 3
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model("tiny-sd"))
    pipe.set_progress_bar_config(disable=True)

    def draw():
        import torch

        return np.asarray(pipe("a photo of sks dog", num_inference_steps=2, height=16,
                               width=16, generator=torch.Generator().manual_seed(0),
                               output_type="np").images[0])

    before = draw()
    pipe.load_lora_weights(out / "final")
    assert any("lora" in n for n, _ in pipe.text_encoder.named_parameters())
    assert np.abs(draw() - before).mean() > 1e-4


def test_full_dreambooth_writes_a_pipeline_and_reuses_cached_class_images(tmp_path):
    instance_photos(tmp_path / "dog")
    train(tmp_path, mode="full", steps=1, checkpoint_every=1, samples_per_prompt=0,
          snr_gamma=5.0)
    stamp = (tmp_path / "train" / "class_images" / "class-00000.png").stat().st_mtime_ns
    assert json.loads((tmp_path / "train" / "final" / "editkit_weights.json").read_text())[
        "type"] == "pipeline"
    assert (tmp_path / "train" / "final" / "unet" / "config.json").exists()
    train(tmp_path, mode="full", steps=2, checkpoint_every=1, samples_per_prompt=0)
    assert (tmp_path / "train" / "class_images" / "class-00000.png").stat().st_mtime_ns == stamp


def test_missing_instance_images_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="instance_images: no images"):
        train(tmp_path)


def test_prior_preservation_needs_a_class_prompt():
    from pydantic import ValidationError

    from editkit.builtins.dreambooth import DreamBoothOptions

    with pytest.raises(ValidationError, match="class_prompt"):
        DreamBoothOptions(instance_images="x", class_prompt=None)
