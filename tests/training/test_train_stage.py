"""The train stage through the real `editkit run`: killed mid-run, it resumes; bad data is one
clear line."""

from __future__ import annotations

import json
import signal
import time

import pytest

RECIPE = """
name: lora-stage
output: {out}
seed: 0
train:
  use: lora
  options: {{base: tiny-ip2p, dataset: {data}, steps: {steps}, resolution: 16, batch_size: 1,
             rank: 4, checkpoint_every: 1, keep_checkpoints: 2, validation_images: 0}}
"""


@pytest.mark.slow
def test_a_killed_train_stage_resumes_from_its_last_checkpoint(pairs, tmp_path, cli):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "run", data=pairs, steps=40))
    proc = cli.popen("run", recipe)
    ckpts = tmp_path / "run" / "train" / "checkpoints"
    deadline = time.time() + 240
    while not list(ckpts.glob("step-*/state.json")) if ckpts.exists() else True:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "train" / "final").exists()
    assert len([p for p in ckpts.iterdir() if p.name.startswith("step-")]) <= 2
    recipe.write_text(RECIPE.format(out=tmp_path / "run", data=pairs, steps=40))
    done = cli("run", recipe)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "run" / "train" / "log.txt").read_text()
    assert "resumed from step-" in log
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["train"]["result"]["steps"] == 40
    assert (tmp_path / "run" / "train" / "final" / "editkit_weights.json").exists()


def test_a_missing_dataset_is_one_clear_line(tmp_path, cli):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "run", data=tmp_path / "nothing", steps=2))
    done = cli("run", recipe)
    assert done.returncode != 0
    assert "has no metadata.jsonl" in done.stderr and "Traceback" not in done.stderr


def test_a_trainer_given_its_own_dataset_needs_no_render(pairs, tmp_path, cli):
    """`--only train` with `train.options.dataset` trains on those pairs even in a recipe whose
    render stage has not run (probing an editor on pairs made elsewhere)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "run", data=pairs, steps=2) + """
captions:
  use: template
  count: 3
  options: {subjects: [car, tree], attributes: [red, blue], edits: [change]}
render:
  use: prompt-to-prompt
  options: {model: tiny-sd, samples: 1, steps: 2, width: 32, height: 32}
""")
    done = cli("run", recipe, "--only", "train")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "train" / "final" / "editkit_weights.json").exists()
    assert not (tmp_path / "run" / "render").exists()
    recipe.write_text(recipe.read_text().replace(f"dataset: {pairs}, ", ""))
    refused = cli("run", recipe, "--only", "train", "--fresh")
    assert refused.returncode != 0 and "has no dataset yet" in refused.stderr
