import json
import random
import signal
import time

import pytest
from recipe_files import write_recipe

from editkit.run.folder import RecordStore, atomic_write_text

RECIPE = """\
name: kill
output: runs/kill
seed: 5
captions:
  use: template
  count: {count}
  options: {{batch: 7, max_objects: 3,
            subjects: [car, house, tree, bicycle, bench, dog, lamp, fence, boat, kiosk],
            attributes: [red, blue, green, yellow, white, black, wooden, tall, small]}}
render: {{use: flat, options: {{samples: 2}}}}
filters:
  - {{use: pixel-diff, options: {{min_change: 0.5}}}}
train: {{use: mean-colour}}
"""


def records(folder):
    out = []
    for stage in ("captions", "render", "filters/0-pixel-diff"):
        rows = RecordStore(folder / stage).read()
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)), f"doubled records in {stage}"
        out.append(sorted(json.dumps(r, sort_keys=True) for r in rows))
    return out


def test_record_store_appends_whole_shards_and_ignores_stale_temp(tmp_path):
    store = RecordStore(tmp_path / "s")
    store.append([{"id": "1"}, {"id": "2"}])
    (tmp_path / "s" / ".shard-000001.jsonl.abc.tmp").write_text('{"id": "half')
    (tmp_path / "s" / ".shard-r01-000000.jsonl.xyz.tmp").write_text("another writer's")
    store = RecordStore(tmp_path / "s")
    assert [r["id"] for r in store.read()] == ["1", "2"]
    store.append([{"id": "3"}])
    assert [r["id"] for r in store.read()] == ["1", "2", "3"]
    left = [p.name for p in (tmp_path / "s").glob(".*.tmp")]
    assert left == [".shard-r01-000000.jsonl.xyz.tmp"]  # never another writer's


def test_atomic_write_keeps_permissions_readable(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o044


def test_sigkill_at_any_moment_then_resume_equals_uninterrupted(cli, tmp_path):
    count = 400
    straight = tmp_path / "straight"
    straight.mkdir()
    write_recipe(straight, RECIPE.format(count=count))
    cli.cwd = straight
    done = cli("run", "recipe.yaml", "render.options.delay=0.006", plugins=["testkit"])
    assert done.returncode == 0, done.stderr
    expected = records(straight / "runs/kill")
    assert sum('"status": "kept"' in r for r in expected[0]) == count

    killed = tmp_path / "killed"
    killed.mkdir()
    write_recipe(killed, RECIPE.format(count=count))
    cli.cwd = killed
    rng = random.Random(0)
    kills = 0
    for _ in range(8):
        proc = cli.popen("run", "recipe.yaml", "render.options.delay=0.006",
                         plugins=["testkit"])
        time.sleep(rng.uniform(0.3, 1.2))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    final = cli("run", "recipe.yaml", "render.options.delay=0.006", plugins=["testkit"])
    assert final.returncode == 0, final.stderr
    assert kills >= 3
    assert records(killed / "runs/kill") == expected
    weights = json.loads((killed / "runs/kill/train/weights.json").read_text())
    assert weights == json.loads((straight / "runs/kill/train/weights.json").read_text())


def test_changed_recipe_is_refused_with_stage_and_fix(cli, tmp_path):
    write_recipe(tmp_path, RECIPE.format(count=10))
    assert cli("run", "recipe.yaml", plugins=["testkit"]).returncode == 0
    result = cli("run", "recipe.yaml", "render.options.samples=3", plugins=["testkit"])
    assert result.returncode == 1
    assert "changed stage 'render'" in result.stderr
    assert "render.options.samples: 2 -> 3" in result.stderr
    assert "--fresh to redo render, filters, train (keeps captions)" in result.stderr
    before = RecordStore(tmp_path / "runs/kill/captions").read()
    redo = cli("run", "recipe.yaml", "render.options.samples=3", "--fresh", plugins=["testkit"])
    assert redo.returncode == 0, redo.stderr
    assert RecordStore(tmp_path / "runs/kill/captions").read() == before
    pairs = RecordStore(tmp_path / "runs/kill/render").read()
    assert {r["sample"] for r in pairs} == {0, 1, 2}


def test_an_option_added_to_a_plugin_since_the_run_does_not_invalidate_it(cli, tmp_path):
    write_recipe(tmp_path, RECIPE.format(count=10))
    assert cli("run", "recipe.yaml", plugins=["testkit"]).returncode == 0
    state_file = tmp_path / "runs/kill/render/stage.json"
    state = json.loads(state_file.read_text())
    del state["config"]["render"]["options"]["reject_word"]  # as an older plugin recorded it
    del state["config"]["render"]["options"]["samples"]
    state_file.write_text(json.dumps(state))
    again = cli("run", "recipe.yaml", plugins=["testkit"])
    assert again.returncode == 0, again.stderr  # both at their defaults: nothing changed
    state["config"]["render"]["options"]["samples"] = 2
    state_file.write_text(json.dumps(state))
    changed = cli("run", "recipe.yaml", "render.options.reject_word=bad", plugins=["testkit"])
    assert changed.returncode == 1  # set away from its default: a real change
    assert "render.options.reject_word: '<unset>' -> 'bad'" in changed.stderr


def test_more_captions_extend_the_same_stream(cli, tmp_path):
    write_recipe(tmp_path, RECIPE.format(count=10))
    assert cli("run", "recipe.yaml", "--only", "captions", plugins=["testkit"]).returncode == 0
    first = RecordStore(tmp_path / "runs/kill/captions").read()
    assert cli("run", "recipe.yaml", "captions.count=20", "--only", "captions",
               plugins=["testkit"]).returncode == 0
    more = RecordStore(tmp_path / "runs/kill/captions").read()
    assert more[:len(first)] == first
    assert sum(r["status"] == "kept" for r in more) == 20


def test_only_a_later_stage_without_its_inputs_is_explained(cli, tmp_path):
    write_recipe(tmp_path, RECIPE.format(count=5))
    result = cli("run", "recipe.yaml", "--only", "render", plugins=["testkit"])
    assert result.returncode == 1
    assert "no kept captions to render" in result.stderr


def test_second_run_on_a_busy_folder_is_refused(cli, tmp_path):
    write_recipe(tmp_path, RECIPE.format(count=400))
    proc = cli.popen("run", "recipe.yaml", "render.options.delay=0.01", plugins=["testkit"])
    deadline = time.time() + 30
    while not (tmp_path / "runs/kill/render").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = cli("run", "recipe.yaml", "render.options.delay=0.01", plugins=["testkit"])
    proc.kill()
    proc.wait()
    assert second.returncode == 1
    assert "is in use by another editkit run" in second.stderr


@pytest.mark.parametrize("word", ["poison"])
def test_a_black_render_is_a_rejected_record_not_a_failed_run(cli, tmp_path, word):
    (tmp_path / "t.csv").write_text("input,edit,output\na red car,add poison,a red car and "
                                    f"{word}\na cat,make it a dog,a dog\n")
    write_recipe(tmp_path, "name: b\noutput: runs/b\n"
                 "captions: {use: csv, count: 2, options: {path: t.csv}}\n"
                 "render: {use: flat}\n")
    result = cli("run", "recipe.yaml", plugins=["testkit", "csv"])
    assert result.returncode == 0, result.stderr
    rows = RecordStore(tmp_path / "runs/b/render").read()
    rejected = [r for r in rows if r["status"] == "rejected"]
    assert [r["reason"] for r in rejected] == ["black image (safety checker or NaN)"]
    assert sum(r["status"] == "kept" for r in rows) == 2


def test_dataset_has_the_columns_instructpix2pix_training_reads(cli, tmp_path):
    write_recipe(tmp_path, RECIPE.format(count=6))
    assert cli("run", "recipe.yaml", plugins=["testkit"]).returncode == 0
    rows = [json.loads(line) for line in
            (tmp_path / "runs/kill/dataset/train/metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:
        assert {"input_image_file_name", "edit_prompt", "edited_image_file_name", "input",
                "output", "seed", "scores"} <= set(row)
        assert (tmp_path / "runs/kill/dataset/train" / row["input_image_file_name"]).exists()
        assert row["scores"]["change"] >= 0.5
    manifest = json.loads((tmp_path / "runs/kill/manifest.json").read_text())
    assert manifest["stages"]["filters"]["kept"] == 12
    assert manifest["plugins"]["render"]["distribution"] == "editkit-testkit"


def test_two_processes_under_accelerate_make_the_same_dataset(cli, tmp_path):
    import os
    import subprocess
    import sys

    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
        write_recipe(folder, RECIPE.format(count=12))
    cli.cwd = one
    assert cli("run", "recipe.yaml", plugins=["testkit"]).returncode == 0
    env = cli.env(["testkit"])
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(29500 + os.getpid() % 1000),
         "-m", "editkit", "run", "recipe.yaml"],
        cwd=two, env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, "\n".join(l for l in launched.stderr.splitlines() if "Error" in l)
    shards = sorted(p.name for p in (two / "runs/kill/render").glob("shard-*.jsonl"))
    assert any(name.startswith("shard-r00-") for name in shards)
    assert any(name.startswith("shard-r01-") for name in shards)

    def dataset(folder):
        rows = (folder / "runs/kill/dataset/train/metadata.jsonl").read_text().splitlines()
        return [json.loads(r) for r in rows]

    assert dataset(two) == dataset(one)
    for row in dataset(two):
        image = "runs/kill/dataset/train/" + row["edited_image_file_name"]
        assert (two / image).read_bytes() == (one / image).read_bytes()
    manifest = json.loads((two / "runs/kill/manifest.json").read_text())
    assert manifest["processes"] == 2
    assert manifest["stages"]["render"]["pairs"] == 24
    assert json.loads((two / "runs/kill/train/weights.json").read_text())["examples"] == 24


def test_stage_time_adds_up_over_the_runs_that_worked_on_it(tmp_path):
    from editkit.run.folder import RunFolder
    from editkit.run.runner import StageClock

    run = RunFolder(tmp_path / "run")
    run.write_stage_state("render", {"config": {"a": 1}, "complete": False, "seconds": 100.0})
    with StageClock(run, "render", {"a": 1}, every=0.05) as clock:
        time.sleep(0.3)
        flushed = run.stage_state("render")["seconds"]  # written while the stage runs
    assert 100.05 < flushed < 100.5
    assert 100.3 <= clock.total() < 101
    assert run.stage_state("render")["complete"] is False  # the runner marks it complete


def test_a_resumed_run_reports_each_stages_real_time(cli, tmp_path):
    write_recipe(tmp_path, RECIPE.format(count=30))
    cli.cwd = tmp_path
    done = cli("run", "recipe.yaml", plugins=["testkit"])
    assert done.returncode == 0, done.stderr
    manifest = tmp_path / "runs/kill/manifest.json"
    first = {s: v["seconds"] for s, v in json.loads(manifest.read_text())["stages"].items()}
    again = cli("run", "recipe.yaml", plugins=["testkit"])
    assert again.returncode == 0
    second = {s: v["seconds"] for s, v in json.loads(manifest.read_text())["stages"].items()}
    assert all(second[s] >= first[s] > 0 for s in first), (first, second)
    assert again.stdout.splitlines()[0].split() == ["stage", "made", "rejected", "time"]
