"""Progress and the end-of-run summary, as people read them in a terminal or a log."""

import io

from editkit.console import Progress, duration, print_evaluation, print_summary


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_progress_prints_at_a_steady_interval_with_eta_and_fields():
    out, clock = io.StringIO(), Clock()
    task = Progress(None, plain=True, interval=30, stream=out, clock=clock).add("train", 100)
    for step in range(1, 101):
        clock.now = step * 1.0  # one step a second
        task.update(step, loss=0.123456)
    lines = out.getvalue().splitlines()
    assert lines[0] == "train: 0/100 (0%)"
    assert lines[1] == "train: 30/100 (30%), 30 s elapsed, about 1 min 10 s left, loss 0.1235"
    assert lines[-1] == "train: 100/100 (100%), done in 1 min 40 s, loss 0.1235"
    assert len(lines) == 5  # start, 30 s, 60 s, 90 s, done


def test_plain_progress_eta_counts_only_this_runs_work_after_a_resume():
    out, clock = io.StringIO(), Clock()
    task = Progress(None, plain=True, interval=10, stream=out, clock=clock).add("render", 200,
                                                                              completed=100)
    clock.now = 10.0
    task.advance(10)
    assert out.getvalue().splitlines()[-1] == \
        "render: 110/200 (55%), 10 s elapsed, about 1 min 30 s left"


def test_no_progress_object_prints_nothing():
    task = Progress(None).add("render", 10)
    task.advance(5, loss=1.0)  # accepted and ignored (other processes of a distributed run)


def test_durations_read_like_a_person_writes_them():
    assert [duration(s) for s in (0.04, 9.96, 12.4, 185, 7625)] == \
        ["0.0 s", "10.0 s", "12 s", "3 min 05 s", "2 h 07 min"]


def test_summary_is_one_table_with_rounded_numbers():
    out = io.StringIO()
    print_summary({
        "captions": {"kept": 40, "rejected": 5, "rejects": {"duplicate": 4, "too long": 1},
                     "seconds": 2.3456789},
        "render": {"pairs": 120, "rejected": 0, "rejects": {}, "seconds": 61.23456789},
        "filters": {"scored": 120, "kept": 97, "rejects": {"clip: min_image": 23},
                    "seconds": 4.1},
        "train": {"result": {"weights": "runs/x/train/final"}, "stats": {"steps": 300},
                  "seconds": 754.0}}, out)
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0].split() == ["stage", "made", "rejected", "time"]
    assert "120 pairs (240 images)" in lines[2] and lines[2].endswith("1 min 01 s")
    assert "duplicate 4, too long 1" in lines[1] and "97 of 120 pairs kept" in lines[3]
    assert "300 steps -> runs/x/train/final" in lines[4] and "12 min 34 s" in lines[4]
    assert "{" not in text and "2.3456" not in text


def test_evaluation_table_rounds_to_three_decimals():
    out = io.StringIO()
    print_evaluation({"rows": 2, "models": {"tiny-ip2p": {"CLIP_dir": 0.0123456789,
                                                          "DINO": 0.9},
                                            "runs/x": {"CLIP_dir": 0.2, "DINO": None}}}, out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["model", "CLIP_dir", "DINO"]
    assert lines[1].split() == ["tiny-ip2p", "0.012", "0.900"]
    assert lines[2].split() == ["runs/x", "0.200", "–"]
