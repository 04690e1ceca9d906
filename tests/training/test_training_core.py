"""The shared training core's pieces: data, buckets, optimizers, memory advice."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from editkit.errors import InputError, RunError
from editkit.testing.pairs import make_pair_dataset as make_pairs
from editkit.training.data import (
    BatchPlan,
    make_buckets,
    nearest_bucket,
    paired_crop,
    read_pair_rows,
)
from editkit.training.memory import GIB, ModelSize, estimate, fitting_changes
from editkit.training.optim import bitsandbytes_problem, make_optimizer


def test_held_out_rows_are_not_trained_on(tmp_path):
    train, held, problems = read_pair_rows(make_pairs(tmp_path / "d", count=4, held_out=1))
    assert [r.id for r in train] == ["000000-0", "000001-0", "000002-0"]
    assert [r.id for r in held] == ["000003-0"] and problems == []


def test_broken_rows_are_skipped_with_a_reason(tmp_path):
    folder = make_pairs(tmp_path / "d", count=2)
    (folder / "train" / "images" / "001-after.png").write_bytes(b"not a png")
    with open(folder / "train" / "metadata.jsonl", "a") as handle:
        handle.write(json.dumps({"id": "x", "edit_prompt": "hi"}) + "\n")
    train, _, problems = read_pair_rows(folder)
    assert [r.id for r in train] == ["000000-0"]
    assert any("unreadable image" in p for p in problems)
    assert any("missing input_image, edited_image" in p for p in problems)


def test_an_empty_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="no metadata.jsonl"):
        read_pair_rows(tmp_path)


def test_before_and_after_get_the_same_crop_and_flip():
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 64, 3), np.uint8))
    a, b = paired_crop([base, base.copy()], (32, 32), random.Random(3), flip=True)
    assert a.size == (32, 32) and np.array_equal(np.asarray(a), np.asarray(b))


def test_wide_images_go_to_a_wide_bucket_not_a_squashed_square():
    buckets = make_buckets(256, 64)
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    wide = nearest_bucket((1024, 512), buckets)
    assert wide[0] > wide[1] and abs(wide[0] / wide[1] - 2) < 0.5
    assert nearest_bucket((512, 512), buckets) == (256, 256)


def test_batch_plan_is_deterministic_and_one_bucket_per_batch(tmp_path):
    rows, _, _ = read_pair_rows(make_pairs(tmp_path / "d", count=4))
    rows[0].size = (64, 32)
    buckets = make_buckets(16, 8)
    plan = BatchPlan(rows, buckets, global_batch=2, seed=5)
    again = BatchPlan(rows, buckets, global_batch=2, seed=5)
    for m in range(6):
        batch = plan.micro_batch(m)
        assert batch == again.micro_batch(m) and len(batch) == 2
        assert len({plan.bucket(i, (16, 16)) for i in batch}) == 1
    # two processes split one global batch
    assert plan.micro_batch(3, 0, 2) + plan.micro_batch(3, 1, 2) == sorted(
        plan.micro_batch(3), key=plan.micro_batch(3).index)


def test_bitsandbytes_runs_8bit_adam_on_the_cpu():
    assert bitsandbytes_problem("cpu") is None  # bitsandbytes 0.45+ has CPU kernels


def test_bitsandbytes_that_cannot_run_is_an_error_or_an_explicit_fallback(monkeypatch):
    import sys

    import torch

    from editkit.builtins.lora import LoraOptions

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as when its install is broken
    assert "bitsandbytes" in bitsandbytes_problem("cpu")
    params = [torch.nn.Parameter(torch.zeros(4))]
    with pytest.raises(RunError, match="optimizer_fallback: adamw"):
        make_optimizer(params, LoraOptions(optimizer="adamw8bit"), "cpu", print)
    lines: list[str] = []
    optimizer, name = make_optimizer(
        params, LoraOptions(optimizer="adamw8bit", optimizer_fallback="adamw"), "cpu",
        lines.append)
    assert name == "adamw" and isinstance(optimizer, torch.optim.AdamW)
    assert "using adamw as optimizer_fallback says" in lines[0]


def test_out_of_memory_advice_names_changes_that_fit():
    from editkit.builtins.instruct_pix2pix import FinetuneOptions

    sd = ModelSize(unet=860_000_000, trainable=860_000_000, frozen_other=200_000_000,
                   lora=False)
    options = FinetuneOptions(resolution=512, batch_size=4, mixed_precision="fp16")
    full = estimate(sd, options)["total"]
    advice = fitting_changes(sd, options, available=0.6 * full)
    assert advice and all("about" in line for line in advice[:-1])
    assert any("batch_size=1" in line for line in advice)
    assert advice[-1].startswith("use: lora")
    nothing = fitting_changes(sd, options, available=1 * GIB)
    assert nothing == ["use: lora with optimizer=adamw8bit (trains a fraction of the weights)"]
    lora = ModelSize(unet=860_000_000, trainable=3_000_000, frozen_other=200_000_000, lora=True)
    small = estimate(lora, options.model_copy(update={"optimizer": "adamw8bit"}))
    assert small["optimizer"] == 3_000_000 * 2  # 8-bit Adam: two one-byte moments
    big = estimate(sd, options)
    state = ("weights", "gradients", "optimizer")
    assert sum(small[k] for k in state) < 0.25 * sum(big[k] for k in state)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weighting_matches_its_formula(prediction):
    import torch
    from diffusers import DDPMScheduler

    from editkit.training.unet import diffusion_loss

    scheduler = DDPMScheduler(prediction_type=prediction)
    pred, goal = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    t = torch.tensor([5, 500, 990])
    plain = diffusion_loss(scheduler, pred, goal, t, None)
    assert torch.isclose(plain, ((pred - goal) ** 2).mean())
    a = scheduler.alphas_cumprod[t]
    snr = a / (1 - a)
    weight = torch.clamp(snr, max=5.0) / (snr + 1 if prediction == "v_prediction" else snr)
    per = ((pred - goal) ** 2).mean(dim=(1, 2, 3))
    assert torch.isclose(diffusion_loss(scheduler, pred, goal, t, 5.0), (weight * per).mean())
    assert weight[0] < 1 and weight[2] <= 1  # the easy low-noise step counts for less


@pytest.mark.parametrize("native", [True, False])
def test_out_of_memory_advice_offers_bf16_on_the_cpu_only_where_it_runs(native, cpu_bf16):
    """A bf16 run on a CPU without native bf16 trains in fp32: advising it would be a lie."""
    from editkit.builtins.instruct_pix2pix import FinetuneOptions

    cpu_bf16(native)
    sd = ModelSize(unet=860_000_000, trainable=860_000_000, frozen_other=200_000_000,
                   lora=False)
    options = FinetuneOptions(resolution=512, batch_size=4, mixed_precision="no")
    advice = fitting_changes(sd, options, available=1e15, cpu=True)
    assert any(line.startswith("mixed_precision=bf16") for line in advice) == native
    assert any(line.startswith("gradient_checkpointing=true") for line in advice)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_decay_steps_hold_the_rate_then_decay_over_the_last_steps(kind):
    import torch

    from editkit.builtins.instruct_pix2pix import FinetuneOptions
    from editkit.training.optim import make_scheduler

    def rates(**extra):
        options = FinetuneOptions(steps=10, learning_rate=1.0, lr_scheduler=kind, **extra)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = make_scheduler(optimizer, options)
        out = []
        for _ in range(10):
            out.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return out

    held = rates(decay_steps=4, warmup_steps=2)
    assert held[:2] == [0.5, 1.0] and held[2:7] == [1.0] * 5  # warm-up, then constant
    assert held[6] > held[7] > held[8] > held[9] > 0  # decays over the last 4
    whole = rates()
    assert whole[0] == 1.0 and all(a > b for a, b in zip(whole, whole[1:]))
    assert rates(decay_steps=10) == whole  # the whole run: the plain schedule
