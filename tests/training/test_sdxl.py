"""InstructPix2Pix on SDXL through the model-family seam: from a plain SDXL base (conv_in
widened) and from an SDXL InstructPix2Pix base, LoRA and full fine-tune, 8-bit Adam, resume,
LoRA files diffusers' SDXL editor loads, and the memory estimate at SDXL's size."""

from __future__ import annotations

import json
import random

import pytest
from test_resume import (
    CONVS,
    assert_identical,
    killed_until_done,
    last_step,
    prepared,
    stopped_and_resumed,
    tensors,
    train,
)

from editkit.testing import tiny_model
from editkit.testing.pairs import make_pair_dataset

SDXL = dict(resolution=32, batch_size=2, learning_rate=5e-3, validation_images=0,
            validation_inference_steps=2)
RUNS = {  # (trainer, options): each base, LoRA and full
    "lora-widened": ("lora", dict(base="tiny-sdxl", rank=4, target_modules=CONVS)),
    "lora-ip2p": ("lora", dict(base="tiny-sdxl-ip2p", rank=4, target_modules=CONVS)),
    "full-widened": ("instruct-pix2pix", dict(base="tiny-sdxl")),
    "full-ip2p": ("instruct-pix2pix", dict(base="tiny-sdxl-ip2p")),
}
# what keeps state of its own: 8-bit Adam, both text encoders' LoRA, cached latents, EMA
RESUMED = {
    "lora": ("lora", dict(base="tiny-sdxl", rank=4, optimizer="adamw8bit", min_8bit_size=256,
                          train_text_encoder=True, cache_latents=True, lora_dropout=0.2)),
    "full": ("instruct-pix2pix", dict(base="tiny-sdxl-ip2p", ema=True, ema_decay=0.9,
                                      optimizer="adamw8bit", min_8bit_size=1024)),
}


@pytest.fixture
def photos(tmp_path):
    """Pairs wider than high: the crop's offset and the original size vary."""
    return make_pair_dataset(tmp_path / "photos", size=(48, 40))


def sdxl_train(kind, data, out, **options):
    return train(kind, data, out, **{**SDXL, **options})


@pytest.mark.parametrize("name", list(RUNS))
def test_sdxl_editors_train_and_export(name, photos, tmp_path):
    """Every base and trainer: the probe loss (fixed batches, fixed noise) falls, the export is
    what the family's editor pipeline reads."""
    from safetensors import safe_open

    kind, options = RUNS[name]
    result = sdxl_train(kind, photos, tmp_path / "train", steps=6, checkpoint_every=6,
                        learning_rate=1e-2, validation_images=1, **options)
    assert result["probe_loss_end"] < 0.95 * result["probe_loss_start"]
    assert len(set(json.loads((tmp_path / "train" / "checkpoints" / "step-00000006" /
                               "state.json").read_text())["losses"])) > 1
    assert 0 <= result["validation"]["l1"] <= 1  # the SDXL editor pipeline edited
    final = tmp_path / "train" / "final"
    meta = json.loads((final / "editkit_weights.json").read_text())
    assert meta["base"] == options["base"]
    widened = options["base"] == "tiny-sdxl"
    if kind == "lora":
        assert meta["type"] == "lora"
        assert meta["conv_in"] == ("conv_in.safetensors" if widened else None)
        with safe_open(str(final / "pytorch_lora_weights.safetensors"), "pt") as f:
            assert {k.split(".")[0] for k in f.keys()} == {"unet"}
    else:
        index = json.loads((final / "model_index.json").read_text())
        assert index["_class_name"] == "StableDiffusionXLInstructPix2PixPipeline"
        assert json.loads((final / "unet" / "config.json").read_text())["in_channels"] == 8
    if widened:
        log = (tmp_path / "train" / "log.txt").read_text()
        assert "tiny-sdxl is a text-to-image model: conv_in widened to 8 channels" in log


def test_adamw8bit_trains_sdxl_on_the_cpu(photos, tmp_path):
    import torch
    from test_lora import tensor_dtypes

    result = sdxl_train("lora", photos, tmp_path / "train", base="tiny-sdxl", rank=4, steps=3,
                        checkpoint_every=3, optimizer="adamw8bit", min_8bit_size=1)
    assert result["optimizer"] == "adamw8bit"
    state = torch.load(tmp_path / "train" / "checkpoints" / "step-00000003" / "optimizer.pt",
                       weights_only=False)["state"]
    assert torch.uint8 in set(tensor_dtypes(state))  # the Adam moments are 8-bit


@pytest.mark.parametrize("name", list(RESUMED))
def test_a_stopped_and_resumed_sdxl_run_ends_bit_identical(name, photos, tmp_path):
    """As `test_resume`: stopped after 3 and 5 of 6 steps and resumed, the same bits as the run
    never stopped and the one that never wrote a checkpoint."""
    kind, options = RESUMED[name]
    data, options = prepared(kind, options, tmp_path, photos)
    never = stopped_and_resumed(kind, data, tmp_path, {**SDXL, **options})
    if kind == "lora":  # both text encoders' LoRA weights are checkpointed and restored
        assert any(k.startswith("trainable.safetensors:text_encoder_2.") for k in never)


@pytest.mark.slow
def test_an_sdxl_run_killed_at_random_moments_ends_bit_identical(photos, tmp_path):
    kind, options = RESUMED["lora"]
    data, options = prepared(kind, options, tmp_path, photos)
    options = {**SDXL, **options, "steps": 18, "checkpoint_every": 3}
    out = tmp_path / "killed"
    killed_until_done(kind, options, data, out, random.Random("sdxl"), kills=3)
    assert last_step(out) == 18
    assert (out / "log.txt").read_text().count("resumed from") >= 2
    train(kind, data, tmp_path / "never", **{**options, "checkpoint_every": 100})
    assert_identical(tensors(tmp_path / "never"), tensors(out))


def test_an_sdxl_lora_loads_into_diffusers_sdxl_editor_as_it_was_trained(photos, tmp_path):
    """A LoRA on the UNet and both text encoders (alpha 4x the rank) from a plain SDXL base:
    diffusers' `StableDiffusionXLInstructPix2PixPipeline.load_lora_weights`, on the base with
    the saved conv_in, computes what the trained model did, encoders and UNet alike."""
    import torch
    from diffusers import StableDiffusionXLInstructPix2PixPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from editkit.builtins.lora import ATTENTION, TEXT_ATTENTION
    from editkit.models.editors import widen_conv_in

    base = tiny_model("tiny-sdxl")
    sdxl_train("lora", photos, tmp_path / "train", base="tiny-sdxl", steps=4,
               checkpoint_every=4, rank=4, alpha=16, train_text_encoder=True,
               learning_rate=2e-2)
    final = tmp_path / "train" / "final"
    meta = json.loads((final / "editkit_weights.json").read_text())
    assert meta["type"] == "lora" and meta["conv_in"] == "conv_in.safetensors"

    # the trained model as training left it: the base with the checkpoint's weights
    trained = load_file(tmp_path / "train" / "checkpoints" / "step-00000004" /
                        "trainable.safetensors")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    widen_conv_in(unet, 8)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=16, target_modules=ATTENTION))
    encoders = {"text_encoder": CLIPTextModel.from_pretrained(base, subfolder="text_encoder"),
                "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
                    base, subfolder="text_encoder_2")}
    for encoder in encoders.values():
        encoder.add_adapter(LoraConfig(r=4, lora_alpha=16, target_modules=TEXT_ATTENTION))
    for model, prefix in ((unet, ""), *((e, f"{n}.") for n, e in encoders.items())):
        weights = {k[len(prefix):]: v for k, v in trained.items() if k.startswith(prefix)
                   and (prefix or not k.startswith("text_encoder"))}
        assert weights and not set(weights) - set(dict(model.named_parameters()))
        model.load_state_dict(weights, strict=False)

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 8, 4, 4, generator=generator)
    ids = torch.randint(0, 100, (1, 77), generator=generator)
    time_ids = torch.tensor([[40.0, 48.0, 0.0, 3.0, 32.0, 32.0]])

    def outputs(u, first, second):
        with torch.no_grad():
            one = first(ids, output_hidden_states=True)
            two = second(ids, output_hidden_states=True)
            hidden = torch.cat([one.hidden_states[-2], two.hidden_states[-2]], dim=-1)
            out = u(latents, 500, hidden, added_cond_kwargs={
                "text_embeds": two[0], "time_ids": time_ids}).sample
            return hidden, out

    want_text, want = outputs(unet.eval(), *(e.eval() for e in encoders.values()))
    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(base)
    widen_conv_in(pipe.unet, 8)
    pipe.unet.conv_in.load_state_dict(load_file(final / "conv_in.safetensors"))
    pipe.load_lora_weights(final)
    got_text, got = outputs(pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
    assert torch.allclose(got_text, want_text, atol=1e-5)
    assert torch.allclose(got, want, atol=1e-5)

    plain = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(base)
    widen_conv_in(plain.unet, 8)
    plain.unet.conv_in.load_state_dict(load_file(final / "conv_in.safetensors"))
    plain_text, plain_out = outputs(plain.unet, plain.text_encoder, plain.text_encoder_2)
    assert (want - plain_out).abs().max() > 1e-3  # the LoRA itself mattered
    assert (want_text - plain_text).abs().max() > 1e-3


def test_the_sdxl_unet_is_given_each_examples_size_and_crop(photos, tmp_path):
    """SDXL's time ids per example: the source image's size (40 x 48 here), where the crop
    starts (the 48 px side scaled to 38 leaves 6 px to crop from) and the trained size."""
    import torch
    from accelerate import Accelerator

    from editkit.builtins.lora import LoraOptions
    from editkit.training.editor import EditTask

    options = LoraOptions(**{**SDXL, "base": "tiny-sdxl", "rank": 4})
    task = EditTask(options, photos, tmp_path / "train", 0, lora=options)
    task.setup(Accelerator(cpu=True), torch.float32, lambda line: None)
    seen = []
    task.parts.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"]),
        with_kwargs=True)
    for micro in range(6):
        task.loss(task.parts.unet, task.plan.micro_batch(micro), micro, 0)
    ids = torch.cat(seen)
    assert ids.shape == (12, 6)
    assert (ids[:, [0, 1, 2, 4, 5]] == torch.tensor([40.0, 48.0, 0.0, 32.0, 32.0])).all()
    lefts = set(ids[:, 3].tolist())
    assert len(lefts) > 2 and lefts <= set(map(float, range(7)))


def test_a_mirrored_crop_starts_from_the_right_edge():
    from editkit.training.data import Crop, plan_crop

    # 48 x 40 scaled to cover 32 x 32: 38 x 32, a centred crop 3 px in from either side
    centred = plan_crop((48, 40), (32, 32), None, False)
    assert centred == Crop((38, 32), 3, 0, False)
    assert centred.time_ids((48, 40), (32, 32)) == (40, 48, 0, 3, 32, 32)
    mirrored = Crop((38, 32), 1, 0, True)  # 1 px from the left, 5 from the right
    assert mirrored.time_ids((48, 40), (32, 32)) == (40, 48, 0, 5, 32, 32)


def sdxl_on_meta(lora_rank: int | None):
    """(UNet widened to 8 channels, with a LoRA of `lora_rank` on its attention; VAE; the two
    text encoders), SDXL-sized, on the meta device."""
    from accelerate import init_empty_weights
    from peft import LoraConfig

    from editkit.builtins.lora import ATTENTION
    from editkit.models.editors import widen_conv_in
    from editkit.testing.shaped import shaped_parts

    with init_empty_weights():
        parts = shaped_parts("sdxl-shaped", in_channels=4)
        unet = parts["unet"]
        widen_conv_in(unet, 8)
        if lora_rank is not None:
            unet.requires_grad_(False)
            unet.add_adapter(LoraConfig(r=lora_rank, target_modules=ATTENTION))
            unet.conv_in.requires_grad_(True)
    return unet, parts["vae"], parts["text_encoder"], parts["text_encoder_2"]


def test_the_memory_estimate_covers_sdxl(capsys):
    """SDXL at 1024 px, a rank-16 LoRA with 8-bit Adam and gradient checkpointing, batch 1,
    bf16 on a GPU: SDXL's own parameter counts (UNet, two text encoders, the VAE held in fp32
    as its force_upcast asks), and a total that fits a 16 GiB card; the full fine-tune with
    AdamW does not, and the advice names changes that fit."""
    from editkit.builtins.lora import LoraOptions
    from editkit.models.families import family_named
    from editkit.training import memory

    unet, vae, text, text_2 = sdxl_on_meta(16)
    scale = family_named("sdxl").activation_scale(unet)
    size = memory.model_size(unet, [vae, text, text_2], lora=True, full_precision=[vae],
                             activation_scale=scale)
    assert abs(size.unet - size.trainable - 2_567_463_684) < 2e6  # the base UNet (+ conv_in)
    assert size.frozen_other == 83_653_863 + 123_060_480 + 694_659_840
    assert size.frozen_fp32 == 83_653_863
    lora = LoraOptions(base="tiny-sdxl", resolution=1024, rank=16, optimizer="adamw8bit",
                       gradient_checkpointing=True, batch_size=1, mixed_precision="bf16")
    parts = memory.estimate(size, lora)
    with capsys.disabled():
        print(f"\nSDXL LoRA rank 16 ({size.trainable:,} trained): {memory.describe(parts)}")
    assert 8 * memory.GIB < parts["total"] < 16 * memory.GIB

    unet, vae, text, text_2 = sdxl_on_meta(None)
    full = memory.model_size(unet, [vae, text, text_2], lora=False, full_precision=[vae],
                             activation_scale=scale)
    options = lora.model_copy(update={"optimizer": "adamw"})
    total = memory.estimate(full, options)["total"]
    with capsys.disabled():
        print(f"SDXL full fine-tune, AdamW: {memory.describe(memory.estimate(full, options))}")
    assert total > 40 * memory.GIB
    assert any("adamw8bit" in fix for fix in memory.fitting_changes(full, options,
                                                                    80 * memory.GIB))


def test_the_editing_trainers_take_sdxl_bases_and_editors():
    """Recipe validation: a plain SDXL base or an SDXL InstructPix2Pix editor is a trainer's
    base (`use: lora`, `use: instruct-pix2pix`); an SDXL editor still renders nothing."""
    from editkit.models import reference_problem

    for ref in ("tiny-sdxl", "tiny-sdxl-ip2p", "stabilityai/stable-diffusion-xl-base-1.0",
                "diffusers/sdxl-instructpix2pix-768"):
        if ref.startswith("tiny"):
            tiny_model(ref)  # built, so its folder's configs say what it is
        assert reference_problem(ref, "edit") is None, ref
    problem = reference_problem("diffusers/sdxl-instructpix2pix-768", "render")
    assert problem is not None and "SDXL InstructPix2Pix editor" in problem
