"""`editkit eval` and the recipe's evaluate stage, with the tiny InstructPix2Pix model."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from recipe_files import write_recipe

from editkit.testing import tiny_model
from editkit.testing.browser import open_page
from editkit.testing.pairs import synthetic_pairs

FAST = ["--steps", "2", "--resolution", "32", "--clip-model", "tiny-clip",
        "--dino-model", "tiny-dinov2", "--device", "cpu"]


def make_dataset(folder, triplets=3, split=True):
    pairs = synthetic_pairs(folder / "images", triplets, samples=1, size=32)
    with open(folder / "metadata.jsonl", "w") as handle:
        for n, p in enumerate(pairs):
            row = {"id": p["id"], "input_image": f"images/{Path(p['before_path']).name}",
                   "edited_image": f"images/{Path(p['after_path']).name}",
                   "edit_prompt": p["edit"], "input": p["input"], "output": p["output"]}
            if split:
                row["split"] = "test" if n < 2 else "train"
            handle.write(json.dumps(row) + "\n")
    return pairs


def trained_run(folder):
    """A run folder whose trainer wrote a full pipeline to train/final/."""
    final = folder / "train" / "final"
    shutil.copytree(tiny_model("tiny-ip2p"), final)
    (final / "editkit_weights.json").write_text('{"type": "pipeline"}')
    return folder


def features(paths):
    import torch
    from transformers import AutoImageProcessor, CLIPModel, CLIPProcessor, Dinov2Model

    clip_dir, dino_dir = tiny_model("tiny-clip"), tiny_model("tiny-dinov2")
    clip, cp = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    dino, dp = Dinov2Model.from_pretrained(dino_dir), AutoImageProcessor.from_pretrained(dino_dir)
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad():
        c = clip.get_image_features(**cp(images=images, return_tensors="pt"))
        d = dino(**dp(images=images, return_tensors="pt")).pooler_output
    return getattr(c, "pooler_output", c).numpy(), d.numpy()


def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


SETTINGS = dict(steps=2, resolution=32, clip_model="tiny-clip", dino_model="tiny-dinov2",
                device="cpu")


def test_eval_numbers_recompute_by_hand_and_repeat_exactly(tmp_path):
    from editkit.evaluation.evaluate import evaluate_models, load_rows
    from editkit.evaluation.settings import EvalSettings

    make_dataset(tmp_path)
    rows, source = load_rows(tmp_path, "test")
    assert [r["id"] for r in rows] == ["000000-0", "000001-0"]
    data = evaluate_models(["tiny-ip2p"], rows, tmp_path / "ev", EvalSettings(**SETTINGS), source)
    again = evaluate_models(["tiny-ip2p"], rows, tmp_path / "ev2", EvalSettings(**SETTINGS))
    assert again["models"][0]["metrics"] == data["models"][0]["metrics"]
    row = data["models"][0]["rows"][0]
    source_png = tmp_path / "images" / f"{row['id']}-before.png"
    edited = tmp_path / "ev" / row["image"]
    (ci, ce), (di, de) = [(f[0], f[1]) for f in features([source_png, edited])]
    assert row["CLIP_im"] == pytest.approx(cos(ci, ce), abs=1e-5)
    assert row["DINO"] == pytest.approx(cos(di, de), abs=1e-5)
    a = np.asarray(Image.open(source_png).convert("RGB"), np.float64) / 255
    b = np.asarray(Image.open(edited).convert("RGB"), np.float64) / 255
    assert row["L1"] == pytest.approx(np.abs(a - b).mean(), abs=1e-9)
    target = np.asarray(Image.open(tmp_path / "images" / f"{row['id']}-after.png"),
                        np.float64) / 255
    assert row["L1_target"] == pytest.approx(np.abs(b - target).mean(), abs=1e-9)
    means = data["models"][0]["metrics"]
    assert means["DINO"] == pytest.approx(np.mean([r["DINO"] for r in data["models"][0]["rows"]]))
    s = data["settings"]
    assert (s["steps"], s["resolution"], s["seed"], s["guidance"], s["image_guidance"]) == \
        (2, 32, 0, 7.5, 1.5)
    assert s["clip"]["ref"] == "tiny-clip" and s["source"]["split"] == "test"
    assert "resized to 32x32" in s["preprocessing"]


def test_eval_command_puts_several_models_in_one_table(cli, tmp_path):
    make_dataset(tmp_path)
    run = trained_run(tmp_path / "run")
    result = cli("eval", ".", "--model", "tiny-ip2p", "--model", run, "--out", "ev", *FAST)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| model | rows | CLIP_im ↑ | CLIP_dir ↑ | CLIP_out ↑ | DINO ↑")
    assert lines[2].startswith("| tiny-ip2p | 2 |") and lines[3].startswith(f"| {run} | 2 |")
    data = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert data["models"][1]["model"]["type"] == "pipeline"
    assert (tmp_path / "ev/metrics.md").read_text().startswith("| model |")


def test_eval_bad_input_is_one_line(cli, tmp_path):
    make_dataset(tmp_path, split=False)
    missing = cli("eval", "images", "--model", "tiny-ip2p", *FAST)
    assert missing.returncode == 1 and "has no metadata.jsonl" in missing.stderr
    odd = cli("eval", ".", "--model", "tiny-ip2p", "--resolution", "30", *FAST[:2])
    assert odd.returncode == 1 and "--resolution: Value error, must be a multiple of 8" in odd.stderr
    none = cli("eval", ".", *FAST)
    assert none.returncode == 2 and "--model" in none.stderr
    assert "Traceback" not in missing.stderr + odd.stderr


RECIPE = """\
name: ev
output: runs/ev
seed: 1
captions: {use: template, count: 6, options: {subjects: [car, house, tree], attributes: [red, blue]}}
render: {use: flat, options: {samples: 1, size: 32}}
filters:
  - {use: dino, options: {model: tiny-dinov2, min_similarity: -1}}
evaluate: {split: 0.5, steps: 1, resolution: 32, clip_model: tiny-clip, dino_model: tiny-dinov2,
           base: tiny-ip2p, device: cpu}
"""


def test_evaluate_stage_measures_base_and_trained_and_the_report_shows_it(cli, tmp_path):
    write_recipe(tmp_path, RECIPE)
    result = cli("run", "recipe.yaml", plugins=["testkit"])
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs/ev"
    tests = [json.loads(x) for x in (run / "dataset/__test__/metadata.jsonl").read_text()
             .splitlines()]
    assert tests and all(r["split"] == "test" for r in tests)
    data = json.loads((run / "evaluate/metrics.json").read_text())
    assert [m["label"] for m in data["models"]] == ["tiny-ip2p"]
    assert data["models"][0]["metrics"]["rows"] == len(tests) > 0
    assert {r["id"] for r in data["models"][0]["rows"]} == {r["id"] for r in tests}
    assert data["settings"]["seed"] == 1
    assert "<h2>Evaluation</h2>" in (run / "report/index.html").read_text()
    # trained weights appear: the next run measures both, in one table
    trained_run(run)
    again = cli("run", "recipe.yaml", plugins=["testkit"])
    assert again.returncode == 0, again.stderr
    table = (run / "evaluate/metrics.md").read_text().splitlines()
    assert table[2].startswith("| tiny-ip2p |") and table[3].startswith("| runs/ev |")
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["stages"]["evaluate"]["models"]) == {"tiny-ip2p", "runs/ev"}
    # the report shows the evaluation, its example edits and the trainer's samples
    (run / "train/samples").mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").save(run / "train/samples/step-0001.png")
    report = cli("report", "runs/ev")
    assert report.returncode == 0, report.stderr
    page = Path(report.stdout.strip())
    html = (tmp_path / page).read_text()
    assert "<h2>Evaluation</h2>" in html and "<h2>Training samples</h2>" in html
    assert "step-0001.png" in html and "input | tiny-ip2p | runs/ev" in html
    seen = open_page(tmp_path / page)
    assert seen["images"] == len(tests) + 1 + 6 and seen["broken"] == []
    assert seen["errors"] == [] and seen["console"] == []
