"""Rendering under `accelerate launch` with two CPU processes (gloo): each renders its share
into its own shards, and the result is the same dataset a single process makes."""

import json
import os
import socket
import subprocess
import sys

from recipe_files import write_recipe

RECIPE = """
name: mp
output: runs/{name}
seed: 3
captions:
  use: template
  count: 5
  options: {{subjects: [car, house, tree], attributes: [red, blue, green], edits: [change]}}
render:
  use: prompt-to-prompt
  options: {{model: tiny-sd, samples: 2, steps: 2, width: 32, height: 32}}
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def records(folder):
    rows = [json.loads(line) for shard in sorted(folder.glob("shard-*.jsonl"))
            for line in shard.read_text().splitlines()]
    return sorted(rows, key=lambda r: r["id"])


def test_two_processes_make_the_dataset_one_process_makes(cli, tmp_path):
    single = cli("run", write_recipe(tmp_path, RECIPE.format(name="one"), "one.yaml"),
                 OMP_NUM_THREADS="1")  # the same kernels as the launched processes use
    assert single.returncode == 0, single.stderr
    env = cli.env(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
         "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), "-m", "editkit", "run",
         str(write_recipe(tmp_path, RECIPE.format(name="two"), "two.yaml"))],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("10 pairs (20 images)") == 1  # the main process reports
    one, two = tmp_path / "runs/one/render", tmp_path / "runs/two/render"
    shards = sorted(p.name for p in two.glob("shard-*.jsonl"))
    assert {name.split("-")[1] for name in shards} == {"r00", "r01"}
    assert records(one) == records(two)
    for row in records(one):
        for role in ("before", "after"):
            assert (one / row[role]).read_bytes() == (two / row[role]).read_bytes()
    manifest = json.loads((tmp_path / "runs/two/manifest.json").read_text())
    assert manifest["processes"] == 2
    assert not os.path.exists(tmp_path / "runs/two/render/shard-000000.jsonl")
