"""Two processes under `accelerate launch` on the CPU (gloo) train one model and save once.

accelerate's `--cpu` flag alone starts one process; `--multi_gpu --num_processes 2` starts two
through torchrun, and on a machine without CUDA the trainer runs them on the CPU with gloo."""

from __future__ import annotations

import json
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_accelerate_run_trains_and_saves_once(pairs, tmp_path, cli):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
name: two-processes
output: {tmp_path / 'run'}
seed: 0
train:
  use: lora
  options: {{base: tiny-ip2p, dataset: {pairs}, steps: 2, resolution: 16, batch_size: 1,
             rank: 4, checkpoint_every: 1, keep_checkpoints: 1, validation_images: 1,
             validation_inference_steps: 2}}
""")
    env = cli.env()
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), "-m", "editkit", "run", str(recipe)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    train = tmp_path / "run" / "train"
    result = json.loads((train / "result.json").read_text())
    assert result["processes"] == 2 and result["steps"] == 2
    assert [p.name for p in (train / "checkpoints").iterdir()] == ["step-00000002"]
    assert sorted(p.name for p in (train / "checkpoints" / "step-00000002").glob("rng-*")) == \
        ["rng-0.pt", "rng-1.pt"]
    assert (train / "final" / "pytorch_lora_weights.safetensors").exists()
    log = (train / "log.txt").read_text()
    assert log.count("done: 2 steps") == 1 and "2 processes" in log
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["train"]["result"]["processes"] == 2
