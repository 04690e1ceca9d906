"""`editkit edit --best-of N`: N candidates over seeds and a guidance sweep, a judge scores
each, the best is written with every candidate's settings and scores in its PNG and in
`<stem>.best-of.json`; with --variations N every candidate is saved, the best framed in the
grid. Bad combinations are refused in one line before any model loads."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_refusals import refused

from editkit.editing import EditSettings, run_edits
from editkit.errors import InputError
from editkit.evaluation.best_of import FRAME, BestOf, candidates, choose
from editkit.testing.llmserver import LLMServer


def photo(path, size=(48, 40)):
    pixels = np.random.default_rng(0).integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
    pixels[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = (230, 40, 40)
    Image.fromarray(pixels).save(path)
    return path


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), np.int16)


def settings(**changes):
    return EditSettings(**{"instruction": "make the red block blue", "steps": 2, "size": 32,
                           **changes})


def quiet(_line):
    pass


def ip2p_without_weights(path: Path) -> Path:
    """An InstructPix2Pix folder as far as anything reads it without loading: loading it
    fails, so a refusal that names the problem came before the editor loaded."""
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionInstructPix2PixPipeline",
         "_diffusers_version": "0.30.0", "unet": ["diffusers", "UNet2DConditionModel"]}))
    (path / "unet").mkdir()
    (path / "unet" / "config.json").write_text(json.dumps(
        {"_class_name": "UNet2DConditionModel", "in_channels": 8, "out_channels": 4,
         "cross_attention_dim": 768}))
    return path


def test_candidates_sweep_seeds_and_guidance_around_the_chosen_values():
    plan = candidates(9, 5, 7.5, 1.5)
    assert [c.seed for c in plan] == list(range(5, 14))
    assert (plan[0].guidance, plan[0].image_guidance) == (7.5, 1.5)  # the plain edit
    assert len({(c.guidance, c.image_guidance) for c in plan}) == 5
    assert (plan[8].guidance, plan[8].image_guidance) == (7.5, 1.5)  # the grid repeats
    flow = candidates(4, 0, 4.0, None)
    assert all(c.image_guidance is None for c in flow)
    assert [c.guidance for c in flow] == [4.0, 5.0, 4.0, 3.2]
    assert {(c.guidance, c.image_guidance) for c in candidates(3, 0, 2.0, 1.2, sweep=False)} \
        == {(2.0, 1.2)}


def test_the_first_of_equal_scores_wins_and_unscored_candidates_rank_last():
    assert choose([{"score": 1.0}, {"score": 2.0}, {"score": 2.0}]) == 1
    assert choose([{"score": None, "reason": "down"}, {"score": -3.0}]) == 1
    with pytest.raises(Exception, match="scored none of the 2 candidates \\(down\\)"):
        choose([{"score": None, "reason": "down"}, {"score": None}])


def test_the_written_image_is_the_best_scored_candidate_and_every_candidate_is_recorded(
        tmp_path):
    source = photo(tmp_path / "a.png")
    said = []
    written = run_edits([str(source)], settings(variations=3), "tiny-ip2p",
                        str(tmp_path / "out"), say=said.append,
                        best_of=BestOf(3, clip_model="tiny-clip"))
    names = [p.name for p in written]
    assert names == ["a.png", "a.best-of.json", "a-1.png", "a-2.png", "a-3.png", "a-grid.png"]
    sidecar = json.loads((tmp_path / "out/a.best-of.json").read_text())
    rows = sidecar["candidates"]
    assert [r["candidate"] for r in rows] == [1, 2, 3] and sidecar["count"] == 3
    assert [r["seed"] for r in rows] == [0, 1, 2]
    assert [(r["guidance"], r["image_guidance"]) for r in rows] == \
        [(7.5, 1.5), (9.375, 1.5), (7.5, 1.5)]
    for row in rows:
        assert row["score"] == pytest.approx(row["clip_gain"] + row["clip_image"], abs=2e-6)
    best = max(rows, key=lambda r: r["score"])
    assert sidecar["chosen"] == best["candidate"] and [r["best"] for r in rows].count(True) == 1
    assert sidecar["judge"]["name"] == "clip" and sidecar["instruction"] == \
        "make the red block blue"
    # the written image is that candidate, pixel for pixel, and its PNG says so
    assert np.array_equal(pixels(tmp_path / "out/a.png"), pixels(best["path"]))
    saved = json.loads(Image.open(tmp_path / "out/a.png").text["editkit"])
    assert saved["best_of"]["candidates"] == rows and saved["best_of"]["chosen"] == \
        best["candidate"]
    assert (saved["seed"], saved["guidance"], saved["image_guidance"]) == \
        (best["seed"], best["guidance"], best["image_guidance"])
    shown = json.loads(Image.open(best["path"]).text["editkit"])["best_of"]
    assert shown["best"] and shown["score"] == best["score"]
    assert f"candidate {best['candidate']} of 3 is the best" in said[-1]
    # the grid: the input, then the candidates, the best framed
    sheet = np.asarray(Image.open(tmp_path / "out/a-grid.png").convert("RGB"))
    assert sheet.shape == (40, 48 * 4, 3)
    for tile in (1, 2, 3):
        corner = tuple(sheet[0, tile * 48])
        assert (corner == FRAME) == (tile == best["candidate"])
    # the settings recorded reproduce the best as a plain edit
    again = run_edits([str(source)], settings(seed=best["seed"], guidance=best["guidance"],
                                              image_guidance=best["image_guidance"]),
                      "tiny-ip2p", str(tmp_path / "again.png"), say=quiet)[0]
    assert np.array_equal(pixels(again), pixels(tmp_path / "out/a.png"))


def test_best_of_alone_writes_the_best_and_its_sidecar_only(tmp_path):
    written = run_edits([str(photo(tmp_path / "a.png"))], settings(localize=True),
                        "tiny-ip2p", str(tmp_path / "best.png"), say=quiet,
                        best_of=BestOf(2, clip_model="tiny-clip"))
    assert [p.name for p in written] == ["best.png", "best-mask.png", "best.best-of.json"]
    saved = json.loads(Image.open(tmp_path / "best.png").text["editkit"])
    assert saved["localize"]["mask"] == str(tmp_path / "best-mask.png")
    assert len(saved["best_of"]["candidates"]) == 2
    assert "path" not in saved["best_of"]["candidates"][0]  # candidates are not kept


def test_a_localized_mask_is_used_as_its_saved_file_would_be(tmp_path):
    import torch

    from editkit.editing import load_mask, save_mask, saved_soft_mask

    mask = torch.rand(1, 30, 40)
    save_mask(mask, tmp_path / "m.png")
    assert torch.equal(saved_soft_mask(mask, 3.0), load_mask(str(tmp_path / "m.png"),
                                                             (40, 30), 3.0))


def test_the_vlm_judge_scores_every_candidate_and_the_best_sum_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with LLMServer() as server:
        run_edits([str(photo(tmp_path / "a.png"))], settings(), "tiny-ip2p",
                  str(tmp_path / "best.png"), say=quiet,
                  best_of=BestOf(3, judge="vlm", judge_url=server.url + "/v1"))
        asked = [entry for entry in server.log if entry["path"].endswith("completions")]
    assert len(asked) == 3
    sidecar = json.loads((tmp_path / "best.best-of.json").read_text())
    assert sidecar["judge"]["name"] == "vlm" and sidecar["judge"]["backend"] == "openai"
    rows = sidecar["candidates"]
    for row in rows:
        assert row["score"] == row["vlm_instruction"] + row["vlm_preserved"] + \
            row["vlm_quality"]
    assert sidecar["chosen"] == max(rows, key=lambda r: (r["score"], -r["candidate"]))[
        "candidate"]


def test_a_flow_editor_sweeps_its_own_guidance(tmp_path):
    run_edits([str(photo(tmp_path / "a.png"))], EditSettings("make it snowy", steps=2, size=32),
              "tiny-flux-kontext", str(tmp_path / "best.png"), device="cpu", say=quiet,
              best_of=BestOf(2, clip_model="tiny-clip"))
    rows = json.loads((tmp_path / "best.best-of.json").read_text())["candidates"]
    assert [(r["guidance"], r["image_guidance"]) for r in rows] == [(2.5, None), (3.125, None)]


def test_the_oracle_judge_picks_a_correct_edit_where_one_exists(tmp_path):
    from editkit.builtins.shapes.judge import ShapesJudge

    # the world's first held-out case, "make the circle small": shapes-edit's plain edit
    # (candidate 1) gets it wrong, candidates 2 and 3 of four right (20 steps, 1.5 / 1.5)
    judge = ShapesJudge()
    case = judge.held_out(1, 0)[0]
    assert case.instruction == "make the circle small"
    case.image.save(tmp_path / "scene.png")
    run_edits([str(tmp_path / "scene.png")], EditSettings(case.instruction, steps=20),
              "shapes-edit", str(tmp_path / "best.png"), device="cpu", say=quiet,
              best_of=BestOf(4, judge="shapes"))
    sidecar = json.loads((tmp_path / "best.best-of.json").read_text())
    rows = sidecar["candidates"]
    assert not rows[0]["good"] and rows[0]["reasons"] and rows[0]["score"] < 0
    assert any(r["good"] for r in rows) and sidecar["score"] == 0
    assert judge.edit(case.truth, Image.open(tmp_path / "best.png").convert("RGB")).good


@pytest.mark.parametrize("options, words", [
    (["--judge", "vlm"], ["need --best-of"]),
    (["--clip-model", "tiny-clip"], ["need --best-of"]),
    (["--best-of", "1"], ["--best-of", "1 is not in the range 2<=x<=64"]),
    (["--best-of", "4", "--variations", "3"], ["--variations 3 with --best-of 4",
                                               "give --variations 4"]),
    (["--best-of", "2", "--judge", "vlm", "--clip-model", "tiny-clip"],
     ["--clip-model is for --judge clip, not vlm"]),
    (["--best-of", "2", "--judge-model", "gpt-4o"], ["--judge-model configure --judge vlm"]),
    (["--best-of", "2", "--judge", "nosuch"], ["unknown judge 'nosuch'", "shapes"]),
    (["--best-of", "2", "--judge", "shapes"], ["the shapes judge cannot read the instruction",
                                               "make the circle blue"]),
    (["--best-of", "2", "--clip-model", "./missing-clip"], ["--clip-model", "does not exist"]),
])
def test_bad_combinations_are_refused_before_any_model_loads(cli, tmp_path, options, words):
    photo(tmp_path / "a.png")
    editor = ip2p_without_weights(tmp_path / "editor")
    result = cli("edit", "a.png", "make the red block blue", "--model", editor, "--out",
                 "out", *options)
    refused(result, *words)
    assert not (tmp_path / "out").exists()


def test_the_oracle_refuses_an_edit_the_image_does_not_allow(cli, tmp_path):
    from editkit.builtins.shapes.world import Scene, Shape, draw

    draw(Scene((Shape("circle", "red", "large", "middle", "center"),), "white")).save(
        tmp_path / "scene.png")
    editor = ip2p_without_weights(tmp_path / "editor")
    for instruction, words in (("remove the square", "before-image has no square"),
                               ("make the circle red", "the image already shows it")):
        refused(cli("edit", "scene.png", instruction, "--model", editor, "--best-of", "2",
                    "--judge", "shapes"), "the shapes judge cannot judge", words)


def test_the_vlm_judge_without_a_key_is_refused_before_the_editor_loads(cli, tmp_path):
    photo(tmp_path / "a.png")
    editor = ip2p_without_weights(tmp_path / "editor")
    result = cli("edit", "a.png", "make it blue", "--model", editor, "--best-of", "2",
                 "--judge", "vlm", OPENAI_API_KEY="")
    refused(result, "OPENAI_API_KEY is not set")


def test_a_library_call_with_a_bad_combination_is_refused(tmp_path):
    with pytest.raises(InputError, match="--judge-url configure --judge vlm"):
        BestOf(2, judge="clip", judge_url="http://localhost:1")
    with pytest.raises(InputError, match="best-of 1 is below 2"):
        BestOf(1)


def test_the_editor_of_the_refusals_fails_only_when_it_loads(cli, tmp_path):
    photo(tmp_path / "a.png")
    editor = ip2p_without_weights(tmp_path / "editor")
    result = cli("edit", "a.png", "make the red block blue", "--model", editor, "--out", "out",
                 "--best-of", "2", "--clip-model", "tiny-clip")
    assert result.returncode != 0 and "could not load edit model" in result.stderr
