"""`shapes-edit`, the editor recipes/shapes.yaml trains, shipped with the package: it edits
offline with nothing trained first, and the world's oracle checks that its edits are right."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from editkit.builtins.shapes.oracle import read_scene
from editkit.errors import EditkitError
from editkit.models.editors import resolve_edit_model
from tools.shapes.ship_editor import ship

ROOT = Path(__file__).resolve().parents[3]
PICTURE = ROOT / "recipes/data/quickstart/shapes.png"


def test_shapes_edit_resolves_to_a_lora_on_shapes_sd():
    spec = resolve_edit_model("shapes-edit")
    assert spec.type == "lora" and spec.pipeline.ref == "shapes-sd"
    assert spec.lora.is_file() and spec.conv_in.is_file()
    assert spec.guidance == {"text": 1.5, "image": 1.5}
    assert spec.base_probe  # a changed shapes-sd would be refused, not edited with


def test_quickstart_edit_works_out_of_the_box(cli, tmp_path):
    shutil.copy(PICTURE, tmp_path / "shapes.png")
    # no --size: the model's own 64 px; no hub access
    edit = cli("edit", "shapes.png", "make the circle blue", "--model", "shapes-edit",
               "--out", "blue.png", HF_HUB_OFFLINE="1")
    assert edit.returncode == 0, edit.stderr[-2000:]
    assert "is edited at" not in edit.stderr  # 64 px in, edited at 64, nothing resized
    before = read_scene(Image.open(PICTURE))
    after = read_scene(Image.open(tmp_path / "blue.png"))
    circle = [s for s in before.shapes if s.kind == "circle"]
    assert len(circle) == 1 and circle[0].colour == "red"
    place = lambda s: (s.row, s.column)  # noqa: E731
    edited = {place(s): s for s in after.shapes}
    assert len(after.shapes) == len(before.shapes) == 2, after
    assert edited[place(circle[0])].kind == "circle", after
    assert edited[place(circle[0])].colour == "blue", after
    assert after.background == before.background
    # the small yellow square keeps its colour, size and place; its kind is this editor's
    # known weak point (kept in 2 of 8 seeds, BENCHMARKS.md): seed 0 is one of the two
    (square,) = [s for s in before.shapes if s.kind == "square"]
    kept = edited[place(square)]
    assert (kept.colour, kept.size) == (square.colour, square.size), after


def test_shipped_editor_passes_the_oracle_on_held_out_edits(tmp_path):
    """32 edits of pictures the world draws (seed 1): the shipped editor gets 0.72 of these
    right (0.789 of 256; another CPU's rounding may flip an edit or two); a loader that lost
    the LoRA or conv_in gets about none."""
    from editkit.builtins.shapes.judge import ShapesJudge
    from editkit.evaluation.judging import held_out_cases, judge_editors
    from editkit.evaluation.settings import EvalSettings

    judge = ShapesJudge()
    cases, _ = held_out_cases(judge, 32, 1, set())
    settings = EvalSettings(steps=20, resolution=64, guidance=1.5, image_guidance=1.5, seed=1,
                            batch_size=16, device="cpu")
    (result,) = judge_editors(["shapes-edit"], ["shapes-edit"], cases, judge, tmp_path,
                              settings)
    assert result["cases"] == 32
    assert result["success"] >= 0.55, result["by_kind"]


def test_ship_editor_copies_a_run_in_fp16_and_refuses_an_unfinished_one(tmp_path):
    from safetensors.torch import load_file

    shipped = Path(resolve_edit_model("shapes-edit").lora).parent
    run = tmp_path / "run"
    shutil.copytree(shipped, run / "train/final")
    (run / "evaluate").mkdir()
    (run / "evaluate/judge.json").write_text(json.dumps(
        {"editors": [{"success": 0.75, "cases": 128}]}))
    stats = ship(run, tmp_path / "out")
    assert stats["editor_success"] == 0.75 and stats["held_out"] == 128
    weights = load_file(str(tmp_path / "out/pytorch_lora_weights.safetensors"))
    assert {str(v.dtype) for v in weights.values()} == {"torch.float16"}
    assert json.loads((tmp_path / "out/editkit_weights.json").read_text())["base"] == \
        "shapes-sd"
    assert not (tmp_path / "out.partial").exists()

    with pytest.raises(EditkitError, match="has no trained editor"):
        ship(tmp_path / "empty", tmp_path / "out")
    assert (tmp_path / "out/editkit_weights.json").is_file()  # what was shipped is kept


def test_the_world_models_fit_the_20_mb_budget():
    from editkit.builtins.shapes import MODEL_NAMES, MODELS

    files = [p for name in MODEL_NAMES for p in (MODELS / name).rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20_000_000
