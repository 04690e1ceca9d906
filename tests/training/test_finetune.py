"""Full InstructPix2Pix fine-tune on tiny models."""

from __future__ import annotations

import json

import numpy as np

from editkit.plugin.kinds import TrainJob


def train_full(dataset, out, **options):
    from editkit.builtins.instruct_pix2pix import FinetuneOptions, InstructPix2PixTrainer

    opts = FinetuneOptions(**{**dict(base="tiny-ip2p", resolution=16, batch_size=4,
                                     learning_rate=2e-3, validation_images=1,
                                     validation_inference_steps=2), **options})
    return InstructPix2PixTrainer(opts).train(TrainJob(dataset_dir=dataset, output_dir=out,
                                                       seed=0))


def test_full_fine_tune_overfits_a_few_pairs_and_exports_a_pipeline(pairs, tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    result = train_full(pairs, tmp_path / "train", steps=12, checkpoint_every=12,
                        text_dropout=0, image_dropout=0, both_dropout=0)
    # the same batches with the same noise: the loss fell
    assert result["probe_loss_end"] < 0.8 * result["probe_loss_start"]
    final = tmp_path / "train" / "final"
    assert json.loads((final / "editkit_weights.json").read_text())["type"] == "pipeline"
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(final)
    assert pipe.unet.config.in_channels == 8


def test_ema_on_cpu_is_what_gets_exported(pairs, tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    train_full(pairs, tmp_path / "train", steps=2, checkpoint_every=2, ema=True,
               ema_decay=0.9, ema_on_cpu=True, gradient_checkpointing=True,
               gradient_accumulation=2, batch_size=1, validation_images=0)
    ckpt = tmp_path / "train" / "checkpoints" / "step-00000002"
    ema = load_file(ckpt / "ema.safetensors")
    raw = load_file(ckpt / "trainable.safetensors")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "train" / "final" / "unet")
    exported = dict(unet.named_parameters())
    name = "conv_in.weight"
    assert not np.allclose(ema[name].numpy(), raw[name].numpy())
    assert np.allclose(exported[name].detach().numpy(), ema[name].numpy(), atol=1e-6)
