"""LoRA trainer on tiny models: export loads into diffusers, 8-bit Adam on the CPU, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from editkit.plugin.kinds import TrainJob
from editkit.testing import tiny_model

FAST = dict(resolution=16, batch_size=2, rank=4, learning_rate=5e-3, validation_images=1,
            validation_inference_steps=2)


def train_lora(dataset, out, **options):
    from editkit.builtins.lora import LoraOptions, LoraTrainer

    opts = LoraOptions(**{**FAST, **options})
    return LoraTrainer(opts).train(TrainJob(dataset_dir=dataset, output_dir=out, seed=0))


def edit(pipe, seed=0, prompt="make the square blue"):
    import torch
    from PIL import Image

    image = Image.new("RGB", (32, 32), (200, 30, 30))
    out = pipe(prompt, image=image, num_inference_steps=3,
               generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
    return np.asarray(out)


def tensor_dtypes(tree):
    import torch

    if torch.is_tensor(tree):
        yield tree.dtype
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from tensor_dtypes(value)


def test_lora_export_loads_into_instruct_pix2pix_pipeline_and_changes_output(pairs, tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    result = train_lora(pairs, tmp_path / "train", base="tiny-ip2p", steps=6,
                        checkpoint_every=6, validation_clip="tiny-clip", guidance_scale=2.5)
    final = tmp_path / "train" / "final"
    meta = json.loads((final / "editkit_weights.json").read_text())
    assert len(meta.pop("base_probe")) == 32
    assert meta == {"type": "lora", "base": "tiny-ip2p",
                    "lora": "pytorch_lora_weights.safetensors", "conv_in": None, "rank": 4,
                    "alpha": 4, "guidance": {"text": 2.5, "image": 1.5},
                    "prediction_type": "epsilon"}
    assert result["type"] == "lora" and result["steps"] == 6
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_model("tiny-ip2p"))
    pipe.set_progress_bar_config(disable=True)
    before = edit(pipe)
    pipe.load_lora_weights(final)
    after = edit(pipe)
    assert np.abs(after - before).mean() > 1e-3
    # the samples for the report were written
    assert list((tmp_path / "train" / "samples").glob("step-*/*.png"))
    metrics = json.loads((tmp_path / "train" / "samples" / "metrics.jsonl").read_text())
    assert metrics["step"] == 6 and 0 <= metrics["l1"] <= 1
    assert {"clip_im", "clip_dir", "clip_out"} <= set(metrics)  # editkit.models.encoders, as eval
    assert result["validation"]["clip_dir"] == metrics["clip_dir"]


def test_adamw8bit_runs_on_cpu_from_plain_sd_and_trains_conv_in(pairs, tmp_path):
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from safetensors.torch import load_file

    from editkit.models.editors import load_edit_pipeline

    result = train_lora(pairs, tmp_path / "train", base="tiny-sd", steps=4,
                        checkpoint_every=4, optimizer="adamw8bit", min_8bit_size=1)
    assert result["optimizer"] == "adamw8bit"
    ckpt = tmp_path / "train" / "checkpoints" / "step-00000004"
    state = torch.load(ckpt / "optimizer.pt", weights_only=False)["state"]
    assert torch.uint8 in set(tensor_dtypes(state))  # the Adam moments are 8-bit
    final = tmp_path / "train" / "final"
    meta = json.loads((final / "editkit_weights.json").read_text())
    assert meta["conv_in"] == "conv_in.safetensors" and meta["base"] == "tiny-sd"
    conv = load_file(final / "conv_in.safetensors")
    assert conv["weight"].shape[1] == 8
    assert conv["weight"][:, 4:].abs().max() > 0  # the zero-initialised image channels learnt
    # the plain base widened with untrained (zero) image channels, then the trained weights
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_model("tiny-sd"))
    pipe.set_progress_bar_config(disable=True)
    from editkit.models.editors import widen_conv_in

    widen_conv_in(pipe.unet, 8)
    before = edit(pipe)
    trained, spec = load_edit_pipeline(final, device="cpu")  # what `editkit edit` loads
    assert spec.type == "lora" and spec.conv_in is not None
    assert np.abs(edit(trained) - before).mean() > 1e-3


def test_resume_continues_exactly_and_keeps_learning(pairs, tmp_path):
    import torch
    from safetensors.torch import load_file

    n = 2
    straight = train_lora(pairs, tmp_path / "a", base="tiny-ip2p", steps=2 * n,
                          checkpoint_every=n, validation_images=0)
    train_lora(pairs, tmp_path / "b", base="tiny-ip2p", steps=n, checkpoint_every=n,
               validation_images=0)
    resumed = train_lora(pairs, tmp_path / "b", base="tiny-ip2p", steps=2 * n,
                         checkpoint_every=n, validation_images=0)
    assert "resumed from step-00000002" in (tmp_path / "b" / "log.txt").read_text()
    a = load_file(tmp_path / "a" / "checkpoints" / "step-00000004" / "trainable.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "step-00000004" / "trainable.safetensors")
    mid = load_file(tmp_path / "b" / "checkpoints" / "step-00000002" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the resumed steps moved the LoRA weights as much as the first ones did: still learning
    lora_keys = [k for k in a if "lora_B" in k]
    moved = sum(float((b[k] - mid[k]).abs().sum()) for k in lora_keys)
    first = sum(float(mid[k].abs().sum()) for k in lora_keys)  # lora_B starts at zero
    assert moved > 0.3 * first > 0
    assert resumed["last_loss"] == straight["last_loss"]


def test_bf16_cached_latents_no_change_and_cosine_schedule_train_together(pairs, tmp_path,
                                                                          cpu_bf16):
    import torch

    cpu_bf16(True)  # the bf16 path itself, on any CPU

    result = train_lora(pairs, tmp_path / "train", base="tiny-ip2p", steps=2,
                        checkpoint_every=2, mixed_precision="bf16", cache_latents=True,
                        no_change_fraction=0.5, lr_scheduler="cosine", warmup_steps=1,
                        snr_gamma=5.0, validation_images=0)
    assert result["steps"] == 2 and np.isfinite(result["last_loss"])
    log = (tmp_path / "train" / "log.txt").read_text()
    assert "cache_latents: crops are centred" in log
    assert "no-change augmentation on 50% of examples" in log
    sched = torch.load(tmp_path / "train" / "checkpoints" / "step-00000002" / "scheduler.pt",
                       weights_only=False)
    assert sched["last_epoch"] == 2 and sched["_last_lr"][0] == pytest.approx(0.0)


def test_no_change_instructions_name_something_absent_from_the_input(tmp_path):
    import random

    from editkit.training.data import Row
    from editkit.training.editor import EditOptions, EditTask

    task = EditTask(EditOptions(no_change_fraction=0.1), tmp_path, tmp_path, 0)
    img = tmp_path / "x.png"
    task.rows = [Row("a", "make the car red", img, img, caption="a photo of a car"),
                 Row("b", "remove the dog", img, img, caption="a photo of a dog"),
                 Row("c", "add a tree", img, img, caption="a photo of a car and a tree")]
    rng = random.Random(0)
    picks = {task._absent_instruction(task.rows[0], rng) for _ in range(20)}
    # the dog is absent from a photo of a car; adding a tree would be a real edit
    assert picks == {"remove the dog"}
    assert task._absent_instruction(Row("d", "x", img, img, caption=""), rng) is None


def test_zero_steps_exports_the_untrained_start_point(pairs, tmp_path):
    """`train.options.steps=0` (the broken-on-purpose baseline): the weights are the base's,
    with the widened image channels still zero, so the editor ignores its input image."""
    from safetensors.torch import load_file

    result = train_lora(pairs, tmp_path / "train", base="tiny-sd", steps=0,
                        validation_images=0)
    assert result["steps"] == 0 and result["last_loss"] is None
    conv = load_file(tmp_path / "train" / "final" / "conv_in.safetensors")
    assert conv["weight"].shape[1] == 8 and conv["weight"][:, 4:].abs().max() == 0


CONV_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj",
                "proj_in", "proj_out"]


def test_lora_on_convolutions_loads_every_layer_it_trained(pairs, tmp_path):
    """A LoRA on the ResNet convolutions too: every trained layer reaches the loaded editor
    (diffusers' own key conversion renamed only the attention half, which then was dropped)."""
    import torch
    from safetensors.torch import load_file

    from editkit.models.editors import load_edit_pipeline

    train_lora(pairs, tmp_path / "train", base="tiny-sd", steps=3, checkpoint_every=3,
               validation_images=0, target_modules=CONV_TARGETS)
    final = tmp_path / "train" / "final"
    saved = load_file(final / "pytorch_lora_weights.safetensors")
    kinds = {k.split(".lora_")[0].split(".")[-1] for k in saved}
    assert {"to_q", "conv1", "conv2", "time_emb_proj"} <= kinds
    pipe, _ = load_edit_pipeline(final, device="cpu")
    params = dict(pipe.unet.named_parameters())
    (adapter,) = pipe.unet.peft_config
    for key, value in saved.items():
        name = key.removeprefix("unet.")
        for part in ("lora_A", "lora_B"):
            name = name.replace(f".{part}.", f".{part}.{adapter}.")
        assert name in params, f"{key} did not load"
        assert torch.allclose(params[name].float(), value.float()), key
    # and merged into the base weights for speed: every LoRA layer runs as one matmul
    lora_layers = [m for m in pipe.unet.modules() if len(getattr(m, "lora_A", ()) or ()) > 0]
    assert lora_layers and all(m.merged for m in lora_layers)


def test_a_lora_that_loads_only_in_part_is_an_error(pairs, tmp_path):
    """The half-converted files older trainers wrote: refused with a one-line error."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from safetensors.torch import load_file, save_file

    from editkit.errors import ModelError
    from editkit.models.editors import load_edit_pipeline

    train_lora(pairs, tmp_path / "train", base="tiny-sd", steps=1, checkpoint_every=1,
               validation_images=0, target_modules=CONV_TARGETS)
    lora = tmp_path / "train" / "final" / "pytorch_lora_weights.safetensors"
    save_file(convert_state_dict_to_diffusers(load_file(lora)), lora)
    with pytest.raises(ModelError, match=r"only \d+ of its \d+ UNet layers loaded"):
        load_edit_pipeline(tmp_path / "train" / "final", device="cpu")


def test_a_lora_whose_base_changed_since_training_is_refused(pairs, tmp_path):
    """A LoRA records a sample of its base's weights: retrain or update the base in place and
    loading the editor says so in one line, instead of editing badly without a word."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel

    from editkit.errors import ModelError
    from editkit.models.editors import load_edit_pipeline, weights_probe

    base = tmp_path / "base"
    shutil.copytree(tiny_model("tiny-sd"), base)
    train_lora(pairs, tmp_path / "train", base=str(base), steps=1, checkpoint_every=1)
    final = tmp_path / "train" / "final"
    load_edit_pipeline(final, device="cpu")  # the same base: loads
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    half = weights_probe(unet.half())
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    assert all(abs(a - b) <= 1e-3 + 2e-2 * abs(b) for a, b in zip(half, weights_probe(unet)))
    with torch.no_grad():  # "retrained": every weight moves a little
        for param in unet.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    unet.save_pretrained(base / "unet")
    with pytest.raises(ModelError, match="base weights have changed"):
        load_edit_pipeline(final, device="cpu")
    load_edit_pipeline(final, device="cpu", base=str(base))  # asked for: taken as meant


def test_sample_prediction_is_trained_recorded_and_sampled_that_way(pairs, tmp_path):
    """`prediction_type: sample` trains the UNet on the clean latents (a v-prediction base
    here), the LoRA records it, and every loader samples with it; an unknown recorded type is
    a one-line error."""
    import torch
    from diffusers import DDPMScheduler

    from editkit.errors import ModelError
    from editkit.models.editors import load_edit_pipeline
    from editkit.training.unet import diffusion_goal, diffusion_loss

    scheduler = DDPMScheduler(prediction_type="sample")
    latents, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t = torch.tensor([10, 900])
    assert torch.equal(diffusion_goal(scheduler, latents, noise, t), latents)
    v = DDPMScheduler(prediction_type="v_prediction")
    assert torch.allclose(diffusion_goal(v, latents, noise, t), v.get_velocity(latents, noise, t))
    assert torch.equal(diffusion_goal(DDPMScheduler(), latents, noise, t), noise)
    # min-SNR for x0 targets is min(SNR, gamma) itself: the noisy step counts for much less
    errors = torch.stack([torch.ones(4, 4, 4), torch.ones(4, 4, 4)])
    low, high = (diffusion_loss(scheduler, errors[k:k + 1], 0 * errors[k:k + 1], t[k:k + 1], 5.0)
                 for k in range(2))
    assert float(low) == pytest.approx(5.0) and float(high) < 0.01

    train_lora(pairs, tmp_path / "train", base="tiny-sd-v", steps=4, checkpoint_every=4,
               prediction_type="sample")
    final = tmp_path / "train" / "final"
    meta = json.loads((final / "editkit_weights.json").read_text())
    assert meta["prediction_type"] == "sample"
    pipe, spec = load_edit_pipeline(final, device="cpu")
    assert pipe.scheduler.config.prediction_type == "sample"
    assert spec.describe()["prediction_type"] == "sample"
    pipe, _ = load_edit_pipeline(final / "pytorch_lora_weights.safetensors", device="cpu")
    assert pipe.scheduler.config.prediction_type == "sample"
    assert np.isfinite(edit(pipe)).all()
    meta["prediction_type"] = "x0"
    (final / "editkit_weights.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="unknown prediction_type 'x0'"):
        load_edit_pipeline(final, device="cpu")


def grounding_of(final, pair_folder):
    """The grounding loss of the instruction's content words on the dataset's first pair,
    one UNet call at t=500, for the editor in `final`."""
    import torch
    from PIL import Image

    from editkit.diffusion.alignment import word_weights
    from editkit.diffusion.control import attention_control
    from editkit.diffusion.grounding import AttentionRecorder, attention_inside_loss, change_masks
    from editkit.diffusion.localize import instruction_words
    from editkit.models.editors import load_edit_pipeline
    from editkit.run.folder import read_dataset

    pipe, _ = load_edit_pipeline(final, device="cpu")
    row = read_dataset(pair_folder).rows[0]
    pixels = [torch.from_numpy(np.asarray(Image.open(row[k]).convert("RGB"),
                                          dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
              for k in ("input_image", "edited_image")]
    with torch.no_grad():
        before, after = pipe.vae.encode(torch.stack(pixels)).latent_dist.mode()
        ids = pipe.tokenizer([row["edit_prompt"]], padding="max_length",
                             max_length=pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        text = pipe.text_encoder(ids)[0]
        recorder = AttentionRecorder()
        with attention_control(pipe.unet, recorder) as layers:
            recorder.begin(tuple(before.shape[-2:]), (1, 1, 1))
            noisy = pipe.scheduler.add_noise(after[None], torch.randn(1, *after.shape,
                                             generator=torch.Generator().manual_seed(0)),
                                             torch.tensor([500]))
            pipe.unet(torch.cat([noisy, before[None]], dim=1), torch.tensor([500]), text)
    sizes = sorted({layer.map_size(tuple(before.shape[-2:]))
                    for layer in layers.values() if layer.cross})
    masks = change_masks(before[None], after[None], sizes)
    member = word_weights(pipe.tokenizer, row["edit_prompt"],
                          instruction_words(row["edit_prompt"]),
                          pipe.tokenizer.model_max_length)[None, None]
    return attention_inside_loss(recorder.maps, member, masks).item()


def test_grounding_pulls_the_instruction_attention_into_the_changed_region(pairs, tmp_path):
    """`grounding` adds TokenCompose's token loss with the region where each pair's images
    differ (no oracle): trained with it, the content words of "make the square blue" attend
    inside the recoloured square far more than the same training without it."""
    common = dict(base="tiny-ip2p", resolution=32, steps=30, checkpoint_every=30,
                  validation_images=0,
                  target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    train_lora(pairs, tmp_path / "plain", **common)
    result = train_lora(pairs, tmp_path / "grounded", grounding=1.0, **common)
    assert result["steps"] == 30
    plain = grounding_of(tmp_path / "plain" / "final", pairs)
    grounded = grounding_of(tmp_path / "grounded" / "final", pairs)
    assert grounded < 0.5 * plain, (plain, grounded)


def test_a_text_encoder_lora_is_trained_saved_in_the_same_file_and_loaded(pairs, tmp_path):
    """`train_text_encoder`: the text encoder's attention gets a LoRA too, saved beside the
    UNet's in one file that diffusers' `load_lora_weights` (and so every editkit loader)
    applies: the loaded encoder reads an instruction differently from the base's."""
    import torch
    from safetensors import safe_open

    from editkit.models.editors import load_edit_pipeline

    train_lora(pairs, tmp_path / "train", base="tiny-ip2p", steps=6, checkpoint_every=6,
               learning_rate=5e-2, train_text_encoder=True, validation_images=0)
    final = tmp_path / "train" / "final"
    with safe_open(str(final / "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("text_encoder.") and "q_proj" in k for k in keys)
    assert any(k.startswith("unet.") for k in keys)
    with safe_open(str(tmp_path / "train" / "checkpoints" / "step-00000006" /
                       "trainable.safetensors"), "pt") as f:  # checkpointed, so resumable
        assert any(k.startswith("text_encoder.") and "lora_A" in k for k in f.keys())
    tuned, _ = load_edit_pipeline(final, device="cpu")
    plain, _ = load_edit_pipeline(tiny_model("tiny-ip2p"), device="cpu")

    def read(pipe):
        ids = pipe.tokenizer(["make the square blue"], padding="max_length",
                             max_length=pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        with torch.no_grad():
            return pipe.text_encoder(ids)[0]

    assert (read(tuned) - read(plain)).abs().mean() > 1e-4
    assert np.isfinite(edit(tuned)).all()


def test_a_lora_trained_with_alpha_loads_at_its_trained_strength(pairs, tmp_path):
    """Rank 4, alpha 16: the LoRA acts at alpha / rank = 4 times its factors' product. The
    file carries its alpha (diffusers' LoRA adapter metadata), so diffusers'
    `load_lora_weights` and editkit's loader (fused) compute what the trained model did, on
    the UNet and the text encoder; a loader that assumed alpha = rank would not."""
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    from editkit.builtins.lora import ATTENTION, TEXT_ATTENTION
    from editkit.models.editors import load_edit_pipeline

    base = tiny_model("tiny-ip2p")
    train_lora(pairs, tmp_path / "train", base="tiny-ip2p", steps=4, checkpoint_every=4,
               rank=4, alpha=16, train_text_encoder=True, validation_images=0)
    final = tmp_path / "train" / "final"
    assert json.loads((final / "editkit_weights.json").read_text())["alpha"] == 16
    with safe_open(str(final / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["unet.lora_alpha"] == 16 and meta["text_encoder.lora_alpha"] == 16
    assert meta["unet.r"] == 4

    # the trained model as training left it: the base with the checkpoint's adapter weights
    trained = load_file(tmp_path / "train" / "checkpoints" / "step-00000004" /
                        "trainable.safetensors")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=16, target_modules=ATTENTION))
    text = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    text.add_adapter(LoraConfig(r=4, lora_alpha=16, target_modules=TEXT_ATTENTION))
    prefix = "text_encoder."
    for model, weights in ((unet, {k: v for k, v in trained.items()
                                   if not k.startswith(prefix)}),
                           (text, {k[len(prefix):]: v for k, v in trained.items()
                                   if k.startswith(prefix)})):
        missing = set(weights) - set(dict(model.named_parameters()))
        assert not missing and weights
        model.load_state_dict(weights, strict=False)

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 8, 4, 4, generator=generator)
    ids = torch.randint(0, 100, (1, 77), generator=generator)

    def outputs(u, t):
        with torch.no_grad():
            embedding = t(ids)[0]
            return embedding, u(latents, 500, embedding).sample

    want_text, want = outputs(unet.eval(), text.eval())
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(base)
    pipe.load_lora_weights(final)
    diffusers_text, diffusers_out = outputs(pipe.unet, pipe.text_encoder)
    ours, _ = load_edit_pipeline(final, device="cpu", dtype="float32")
    ours_text, ours_out = outputs(ours.unet, ours.text_encoder)
    naive = StableDiffusionInstructPix2PixPipeline.from_pretrained(base)
    naive.load_lora_weights(load_file(final / "pytorch_lora_weights.safetensors"))
    naive_text, naive_out = outputs(naive.unet, naive.text_encoder)  # no metadata: alpha = 4

    plain_text, plain = outputs(pipe.unet.__class__.from_pretrained(base, subfolder="unet"),
                                CLIPTextModel.from_pretrained(base, subfolder="text_encoder"))
    effect = (want - plain).abs().max()
    assert effect > 1e-3 and (want_text - plain_text).abs().max() > 1e-3
    for text_out, out in ((diffusers_text, diffusers_out), (ours_text, ours_out)):
        assert torch.allclose(text_out, want_text, atol=1e-5)
        assert torch.allclose(out, want, atol=1e-5)
    assert (naive_out - want).abs().max() > 0.3 * effect
    assert (naive_text - want_text).abs().max() > 1e-3


def test_copy_init_reads_the_input_image_from_the_first_step():
    """`conv_in_init: copy` (Marigold): with the image equal to the noisy latents, the widened
    UNet computes exactly what the plain one does; `zeros` ignores the image altogether."""
    import torch
    from diffusers import UNet2DConditionModel

    from editkit.models.editors import widen_conv_in

    plain = UNet2DConditionModel.from_pretrained(tiny_model("tiny-sd"), subfolder="unet")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    image = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = plain.conv_in(latents)
        outputs = {}
        for init in ("zeros", "copy"):
            unet = UNet2DConditionModel.from_pretrained(tiny_model("tiny-sd"), subfolder="unet")
            widen_conv_in(unet, 8, init)
            outputs[init] = {name: unet.conv_in(torch.cat([latents, x], 1))
                             for name, x in (("same", latents), ("other", image))}
    torch.testing.assert_close(outputs["copy"]["same"], want)
    assert (outputs["copy"]["other"] - want).abs().mean() > 1e-2  # the image is read
    torch.testing.assert_close(outputs["zeros"]["other"], want)  # the image is ignored


def test_an_unknown_conv_in_init_is_an_option_error():
    from pydantic import ValidationError

    from editkit.builtins.lora import LoraOptions

    with pytest.raises(ValidationError, match="conv_in_init"):
        LoraOptions(conv_in_init="ones")


def test_delta_parametrization_exports_exactly_the_trained_difference(pairs, tmp_path):
    """`parametrization: delta` trains W0 + D on the targeted layers (UNet and text encoder)
    and exports D as ordinary LoRA factors: the loaded editor's fused weights are the base's
    plus exactly the difference the last checkpoint holds (full rank: SVD loses nothing)."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    from editkit.models.editors import load_edit_pipeline

    result = train_lora(pairs, tmp_path / "train", base="tiny-sd", steps=4,
                        checkpoint_every=4, validation_images=0, rank=64,
                        learning_rate=1e-2, target_modules=CONV_TARGETS,
                        train_text_encoder=True, parametrization="delta")
    assert result["type"] == "lora" and result["rank"] == 64
    log = (tmp_path / "train" / "log.txt").read_text()
    assert "exported as rank-64 LoRA factors (smallest share of a layer's energy kept: 1.0000)" \
        in log
    trained = load_file(tmp_path / "train" / "checkpoints" / "step-00000004" /
                        "trainable.safetensors")
    deltas = {k.split(".parametrizations.")[0]: v for k, v in trained.items()
              if k.endswith(".parametrizations.weight.0.delta")}
    assert deltas and all(v.abs().max() > 0 for v in deltas.values())  # every layer moved
    assert any(k.startswith("text_encoder.") for k in deltas)
    pipe, _ = load_edit_pipeline(tmp_path / "train" / "final", device="cpu")
    base_unet = UNet2DConditionModel.from_pretrained(tiny_model("tiny-sd"), subfolder="unet")
    base_text = CLIPTextModel.from_pretrained(tiny_model("tiny-sd"), subfolder="text_encoder")
    fused = {**{n: m.base_layer.weight if hasattr(m, "base_layer") else m.weight
                for n, m in pipe.unet.named_modules() if hasattr(m, "weight")},
             **{f"text_encoder.{n}": m.base_layer.weight if hasattr(m, "base_layer")
                else m.weight for n, m in pipe.text_encoder.named_modules()
                if hasattr(m, "weight")}}
    base = {**{n: m.weight for n, m in base_unet.named_modules() if hasattr(m, "weight")},
            **{f"text_encoder.{n}": m.weight for n, m in base_text.named_modules()
               if hasattr(m, "weight")}}
    for name, delta in deltas.items():
        got = fused[name].detach().float() - base[name].detach().float()
        if name == "conv_in":  # widened; not a delta layer
            continue
        torch.testing.assert_close(got, delta, atol=1e-5, rtol=1e-4, msg=name)


def test_plain_attention_trains_the_same_function_as_sdpa(pairs, tmp_path):
    """`attention: plain` swaps PyTorch's fused attention for matmul + softmax (faster on the
    CPU for short sequences): the same losses to rounding, step for step."""
    runs = {kind: train_lora(pairs, tmp_path / kind, base="tiny-sd", steps=3,
                             checkpoint_every=3, validation_images=0, attention=kind)
            for kind in ("sdpa", "plain")}
    sdpa, plain = runs["sdpa"], runs["plain"]
    assert plain["probe_loss_start"] == pytest.approx(sdpa["probe_loss_start"], rel=1e-4)
    assert plain["last_loss"] == pytest.approx(sdpa["last_loss"], rel=1e-3)
    assert plain["probe_loss_end"] != pytest.approx(plain["probe_loss_start"], rel=1e-6)


def test_bf16_on_the_cpu_keeps_weights_fp32_and_trains_shapes_sd(pairs, tmp_path, cpu_bf16):
    """shapes-sd's UNet layer-norms its text embedding: with the frozen weights cast to bf16
    the CPU's layer_norm refused fp32 inputs. On the CPU bf16 means autocast over fp32
    weights: it trains, the loss moves, and what is saved is fp32."""
    from safetensors.torch import load_file

    cpu_bf16(True)  # bf16 runs (emulated, slowly) on a CPU without it too
    result = train_lora(pairs, tmp_path / "train", base="shapes-sd", resolution=32, steps=3,
                        checkpoint_every=3, validation_images=0, rank=8,
                        mixed_precision="bf16", parametrization="delta",
                        train_text_encoder=True, attention="plain")
    assert result["steps"] == 3 and np.isfinite(result["last_loss"])
    assert result["probe_loss_end"] != pytest.approx(result["probe_loss_start"], rel=1e-4)
    log = (tmp_path / "train" / "log.txt").read_text()
    assert "mixed_precision bf16 on the CPU: weights kept in fp32, computed in bf16" in log
    trained = load_file(tmp_path / "train" / "checkpoints" / "step-00000003" /
                        "trainable.safetensors")
    assert {str(v.dtype) for v in trained.values()} == {"torch.float32"}


def test_bf16_on_a_cpu_without_native_bf16_trains_in_fp32_and_says_so(pairs, tmp_path,
                                                                       cpu_bf16):
    """Emulated bf16 ran the shapes UNet 13x slower than fp32 (an AVX2-only CPU), and on the
    CPU bf16 saves no memory (the weights stay fp32): such a run trains in fp32, says so in
    the log and the result, and matches a run asked for fp32 step for step."""
    cpu_bf16(False)
    asked = train_lora(pairs, tmp_path / "bf16", base="tiny-sd", steps=3, checkpoint_every=3,
                       validation_images=0, mixed_precision="bf16")
    plain = train_lora(pairs, tmp_path / "fp32", base="tiny-sd", steps=3, checkpoint_every=3,
                       validation_images=0, mixed_precision="no")
    log = (tmp_path / "bf16" / "log.txt").read_text()
    assert "this CPU has no native bf16" in log and "this run trains in fp32" in log
    assert asked["mixed_precision"] == plain["mixed_precision"] == "no"
    # (the first training in a process rounds its gradients a hair differently, 0.981805
    # against 0.981242 for every later one, asked for fp32 or not: hence approx)
    assert asked["last_loss"] == pytest.approx(plain["last_loss"], rel=1e-3)
    assert asked["probe_loss_end"] == pytest.approx(plain["probe_loss_end"], rel=1e-3)
    assert asked["probe_loss_end"] != pytest.approx(asked["probe_loss_start"], rel=1e-2)
