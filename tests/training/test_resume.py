"""A resumed run ends bit-identical to one never stopped and to one that never wrote a
checkpoint: every trainer, and the options that keep state of their own (8-bit Adam, EMA,
cached latents, delta parametrization, a text-encoder LoRA, dropout, accumulation)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from editkit.plugin.kinds import TrainJob
from editkit.testing import tiny_model

COMMON = dict(resolution=16, batch_size=2, learning_rate=5e-3, validation_images=0,
              validation_inference_steps=2)
CONVS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_shortcut",
         "time_emb_proj", "proj_in", "proj_out"]
# the quickstart's training options on a tiny plain-SD base (conv_in widened and trained);
# min_8bit_size 256 keeps the larger tensors' Adam state in 8 bits and the rest in 32
QUICKSTART = ("lora", dict(base="tiny-sd", rank=4, optimizer="adamw8bit", min_8bit_size=256,
                           cache_latents=True, target_modules=CONVS))
# the shapes recipe's: differences trained as such, EMA, a text-encoder LoRA, plain attention
SHAPES = ("lora", dict(base="tiny-sd", rank=32, parametrization="delta", attention="plain",
                       ema=True, ema_decay=0.9, train_text_encoder=True, cache_latents=True,
                       target_modules=CONVS))
OPTION_SETS = {
    "quickstart": QUICKSTART,
    "shapes": SHAPES,
    # global random state (LoRA dropout), several micro-batches a step, warm-up, min-SNR,
    # the no-change augmentation, paged 8-bit Adam (unpaged on the CPU)
    "dropout-accumulation": ("lora", dict(
        base="tiny-ip2p", rank=4, lora_dropout=0.3, gradient_accumulation=2, warmup_steps=3,
        snr_gamma=5.0, no_change_fraction=0.3, optimizer="paged-adamw8bit", min_8bit_size=1)),
    "full-fine-tune": ("instruct-pix2pix", dict(base="tiny-ip2p", ema=True, ema_decay=0.9,
                                                ema_on_cpu=True, optimizer="adamw8bit",
                                                min_8bit_size=1024)),
    "dreambooth": ("dreambooth", dict(base="tiny-sd", rank=4, train_text_encoder=True,
                                      class_images=2, class_inference_steps=2,
                                      samples_per_prompt=0)),
}


def trainer(kind: str, options: dict):
    if kind == "lora":
        from editkit.builtins.lora import LoraOptions as Options
        from editkit.builtins.lora import LoraTrainer as Trainer
    elif kind == "flow-lora":
        from editkit.builtins.flow_lora import FlowLoraTrainer as Trainer
        from editkit.builtins.flow_lora import FlowLoraTrainerOptions as Options
    elif kind == "instruct-pix2pix":
        from editkit.builtins.instruct_pix2pix import FinetuneOptions as Options
        from editkit.builtins.instruct_pix2pix import InstructPix2PixTrainer as Trainer
    else:
        from editkit.builtins.dreambooth import DreamBoothOptions as Options
        from editkit.builtins.dreambooth import DreamBoothTrainer as Trainer
    return Trainer(Options(**{**COMMON, **options}))


def train(kind: str, data: Path, out: Path, **options):
    return trainer(kind, options).train(TrainJob(dataset_dir=data, output_dir=out, seed=0))


def prepared(kind: str, options: dict, tmp_path: Path, pairs: Path) -> tuple[Path, dict]:
    """(the dataset, the options with the instance photos' folder for DreamBooth)."""
    from PIL import Image, ImageDraw

    tiny_model(options["base"])  # built before any run: building draws random numbers
    if kind != "dreambooth":
        return pairs, options
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        image = Image.new("RGB", (40, 32), (200, 180, 120))
        ImageDraw.Draw(image).ellipse((8 + i, 6, 30 + i, 26), fill=(90, 60, 30))
        image.save(folder / f"dog-{i}.png")
    return pairs, {**options, "instance_images": str(folder)}


def tensors(out: Path) -> dict[str, object]:
    """Every tensor a run leaves: the exported weights (every safetensors file of `final/`)
    and its last checkpoint's trained weights, EMA and optimizer state."""
    import torch
    from safetensors.torch import load_file

    from editkit.training.checkpoint import checkpoints

    found = {}
    for path in sorted((out / "final").rglob("*.safetensors")):
        for key, value in load_file(path).items():
            found[f"final/{path.relative_to(out / 'final')}:{key}"] = value
    last = checkpoints(out)[-1]
    for name in ("trainable.safetensors", "ema.safetensors"):
        if (last / name).exists():
            for key, value in load_file(last / name).items():
                found[f"{name}:{key}"] = value

    def walk(prefix: str, tree: object) -> None:
        if torch.is_tensor(tree):
            found[prefix] = tree
        elif isinstance(tree, dict):
            for key, value in tree.items():
                walk(f"{prefix}.{key}", value)

    walk("optimizer", torch.load(last / "optimizer.pt", weights_only=False)["state"])
    return found


def assert_identical(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_a_stopped_and_resumed_run_ends_bit_identical(name, pairs, tmp_path):
    """Stopped twice (after 3 and 5 of 6 steps: `steps` raised continues the run), resumed
    from its checkpoints: the same bits as the run never stopped and as the run that never
    wrote a checkpoint before its last step."""
    kind, options = OPTION_SETS[name]
    data, options = prepared(kind, options, tmp_path, pairs)
    stopped_and_resumed(kind, data, tmp_path, options)


def stopped_and_resumed(kind: str, data: Path, tmp_path: Path, options: dict) -> dict:
    """Train 6 steps three ways (never checkpointed; checkpointed every 2 steps; stopped
    after 3 and 5 steps and resumed), assert they end bit-identical, and return the tensors."""
    train(kind, data, tmp_path / "never", steps=6, checkpoint_every=100, **options)
    train(kind, data, tmp_path / "straight", steps=6, checkpoint_every=2, **options)
    for steps in (3, 5, 6):
        train(kind, data, tmp_path / "resumed", steps=steps, checkpoint_every=2, **options)
    log = (tmp_path / "resumed" / "log.txt").read_text()
    assert "resumed from step-00000003" in log and "resumed from step-00000005" in log
    never = tensors(tmp_path / "never")
    assert_identical(never, tensors(tmp_path / "straight"))
    assert_identical(never, tensors(tmp_path / "resumed"))
    return never


def test_cached_latents_do_not_depend_on_what_was_encoded_before(tmp_path):
    """The quickstart's options on its base: a resumed run fills its latent cache from
    another step than the first run did, and a convolution's result for one image changes in
    the last bits with the batch it runs in; each image's latents must not."""
    from editkit.testing.pairs import make_pair_dataset

    data = make_pair_dataset(tmp_path / "dataset", count=16, size=(64, 64))
    kind, options = QUICKSTART
    options = {**options, "base": "shapes-sd", "resolution": 64, "batch_size": 8,
               "min_8bit_size": 4096}
    train(kind, data, tmp_path / "never", steps=6, checkpoint_every=100, **options)
    train(kind, data, tmp_path / "resumed", steps=3, checkpoint_every=100, **options)
    train(kind, data, tmp_path / "resumed", steps=6, checkpoint_every=100, **options)
    assert_identical(tensors(tmp_path / "never"), tensors(tmp_path / "resumed"))


WORKER = """
import json, sys
from pathlib import Path
from editkit.plugin.kinds import TrainJob
sys.path.insert(0, sys.argv[1])
from test_resume import trainer
kind, options = json.loads(sys.argv[2])
trainer(kind, options).train(TrainJob(dataset_dir=Path(sys.argv[3]),
                                      output_dir=Path(sys.argv[4]), seed=0))
"""


def last_step(out: Path) -> int:
    from editkit.training.checkpoint import PREFIX, checkpoints

    saved = checkpoints(out)
    return int(saved[-1].name[len(PREFIX):]) if saved else 0


def killed_until_done(kind: str, options: dict, data: Path, out: Path, chance: random.Random,
                      kills: int = 4) -> None:
    """Train in a real process, killed with SIGKILL `kills` times at random moments (between
    checkpoints, while writing one), started again each time until it finishes."""
    command = [sys.executable, "-c", WORKER, str(Path(__file__).parent),
               json.dumps([kind, options]), str(data), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = 0
    while done < kills:
        start = last_step(out)
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while last_step(out) <= start and process.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.02)  # a checkpoint after the one it started from: it made progress
        time.sleep(chance.uniform(0, 0.4))
        if process.poll() is not None:
            break
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        done += 1
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart", "shapes"])
def test_a_run_killed_at_random_moments_ends_bit_identical(name, pairs, tmp_path):
    """A real process, killed with SIGKILL at random moments (between checkpoints, while
    writing one), started again each time until it finishes."""
    kind, options = OPTION_SETS[name]
    data, options = prepared(kind, options, tmp_path, pairs)
    options = {**options, "steps": 24, "checkpoint_every": 3}
    out = tmp_path / "killed"
    killed_until_done(kind, options, data, out, random.Random(name))
    resumes = (out / "log.txt").read_text().count("resumed from")
    assert resumes >= 3, f"only {resumes} resumes"
    train(kind, data, tmp_path / "never", **{**options, "checkpoint_every": 100})
    assert_identical(tensors(tmp_path / "never"), tensors(out))
