"""What a training run shows while it runs: a progress bar (steps, loss, time left) and
TensorBoard scalars that a resume does not duplicate."""

from __future__ import annotations

import io
import json
import re
import shutil

from editkit.console import Progress
from editkit.plugin.kinds import TrainJob

FAST = dict(base="tiny-ip2p", resolution=16, batch_size=2, rank=4, learning_rate=5e-3,
            validation_images=0)


def train(dataset, out, progress=None, **options):
    from editkit.builtins.lora import LoraOptions, LoraTrainer

    job = TrainJob(dataset_dir=dataset, output_dir=out, seed=0, progress=progress)
    return LoraTrainer(LoraOptions(**{**FAST, **options})).train(job)


class Clock:
    """A second passes each time the time is read."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def test_the_plain_progress_line_counts_steps_shows_the_loss_and_times_this_run(pairs,
                                                                               tmp_path):
    """Not on a terminal: a line per update (interval 0 here) with the step, the loss and
    the time left; after a resume the count starts at the checkpoint and the time left is
    reckoned from this run's steps only."""
    out = tmp_path / "train"
    first = io.StringIO()
    train(pairs, out, Progress(plain=True, interval=0, stream=first, clock=Clock()),
          steps=3, checkpoint_every=3)
    lines = first.getvalue().splitlines()
    assert lines[0] == "train: 0/3 (0%)"
    assert re.fullmatch(r"train: 1/3 \(33%\), .* elapsed, about .* left, loss \d\.\d+", lines[1])
    assert re.fullmatch(r"train: 3/3 \(100%\), done in .*, loss \d\.\d+", lines[-1])

    second = io.StringIO()
    train(pairs, out, Progress(plain=True, interval=0, stream=second, clock=Clock()),
          steps=6, checkpoint_every=3)
    lines = second.getvalue().splitlines()
    assert lines[0] == "train: 3/6 (50%)"
    step = re.fullmatch(r"train: 4/6 \(67%\), (\d+)\.0 s elapsed, about (\d+)\.0 s left, "
                        r"loss \d\.\d+", lines[1])
    assert step, lines[1]
    elapsed, left = int(step[1]), int(step[2])
    assert left == 2 * elapsed  # one step made in `elapsed`: two to go; not 2 * elapsed / 4
    assert lines[-1].startswith("train: 6/6 (100%), done in")


def test_a_terminal_bar_gets_the_steps_and_the_loss(pairs, tmp_path):
    from rich.console import Console
    from rich.progress import Progress as RichProgress

    bars = RichProgress(console=Console(file=io.StringIO(), force_terminal=True),
                        auto_refresh=False)
    result = train(pairs, tmp_path / "train", Progress(bars), steps=3, checkpoint_every=3)
    (task,) = bars.tasks
    assert (task.description, task.total, task.completed) == ("train", 3, 3)
    assert round(task.fields["fields"]["loss"], 6) == result["last_loss"]


def test_the_train_stage_shows_its_progress_in_a_log(pairs, tmp_path, cli):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
name: progress
output: {tmp_path / "run"}
seed: 0
train:
  use: lora
  options: {{base: tiny-ip2p, dataset: {pairs}, steps: 3, resolution: 16, batch_size: 1,
             rank: 4, checkpoint_every: 3, validation_images: 0}}
""")
    done = cli("run", recipe, EDITKIT_PROGRESS_EVERY=0)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"^train: 2/3 \(67%\), .* left, loss \d\.\d+$", done.stderr, re.M)
    assert re.search(r"^train: 3/3 \(100%\), done in .*, loss \d\.\d+$", done.stderr, re.M)


def scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path):
    """Logged to step 30, resumed at 20 and 21..30 logged again: TensorBoard shows steps
    1..30 once each, 21..30 as the resumed run logged them; metrics.jsonl likewise."""
    from editkit.training.tracker import Tracker

    first = Tracker(tmp_path, print)
    for step in range(1, 31):
        first.scalar("train/loss", float(step), step)
    first.metrics({"l1": 0.5}, 15)
    first.metrics({"l1": 0.4}, 30)
    first.close()
    again = Tracker(tmp_path, print)
    again.resume_at(20)
    for step in range(21, 31):
        again.scalar("train/loss", 100.0 + step, step)
    again.metrics({"l1": 0.3}, 30)
    again.close()
    assert scalars(tmp_path / "tensorboard", "train/loss") == \
        [(s, float(s)) for s in range(1, 21)] + [(s, 100.0 + s) for s in range(21, 31)]
    rows = [json.loads(line) for line in
            (tmp_path / "samples" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 15, "l1": 0.5}, {"step": 30, "l1": 0.3}]


def test_a_resumed_training_logs_the_steps_it_redoes_once(pairs, tmp_path):
    """Killed after logging step 3 and before its checkpoint (the checkpoint removed here):
    the resumed run logs step 3 again, and TensorBoard keeps that one only."""
    out = tmp_path / "train"
    train(pairs, out, steps=3, checkpoint_every=2)
    first = dict(scalars(out / "tensorboard", "train/loss"))
    assert sorted(first) == [1, 3]
    shutil.rmtree(out / "checkpoints" / "step-00000003")
    train(pairs, out, steps=5, checkpoint_every=2)
    assert "resumed from step-00000002" in (out / "log.txt").read_text()
    logged = scalars(out / "tensorboard", "train/loss")
    assert [step for step, _ in logged] == [1, 3, 5]
    assert logged[1][1] == first[3]  # the same step 3: an exact resume
