import json
import shutil

import numpy as np
import pytest
from PIL import Image

from editkit.editing import EditSettings, output_paths, run_edits, working_size
from editkit.errors import InputError, ModelError
from editkit.testing import tiny_model


def photo(path, size=(64, 48), colour=(200, 20, 20)):
    array = np.zeros((size[1], size[0], 3), np.uint8) + np.array(colour, np.uint8)
    array[: size[1] // 2, : size[0] // 2] = (20, 200, 20)
    Image.fromarray(array).save(path)
    return path


def settings(**changes):
    return EditSettings(**{"instruction": "make it blue", "steps": 2, "size": 32, **changes})


def test_working_size_keeps_the_aspect_ratio():
    assert working_size(4032, 3024, 512, 64) == (512, 384)
    assert working_size(3024, 4032, 512, 8) == (384, 512)
    assert working_size(1000, 10, 512, 64) == (512, 64)


def test_four_by_three_photo_returns_four_by_three_at_input_size(cli, tmp_path):
    photo(tmp_path / "street.jpg", size=(80, 60))
    result = cli("edit", "street.jpg", "remove the cars", "--model", "tiny-ip2p", "--size", "32",
                 "--steps", "2", "--out", "out.png")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "out.png"
    assert "80x60 is edited at 32x24" in result.stderr and "returned at 80x60" in result.stderr
    out = Image.open(tmp_path / "out.png")
    assert out.size == (80, 60)
    assert "Traceback" not in result.stderr


def test_without_size_the_model_works_at_its_own_resolution(tmp_path):
    from editkit.editing import native_size
    from editkit.models.editors import load_edit_pipeline

    pipe, _ = load_edit_pipeline("tiny-ip2p", device="cpu")
    native = native_size(pipe)
    assert native == pipe.unet.config.sample_size * pipe.vae_scale_factor == 32
    said = []
    run_edits([str(photo(tmp_path / "a.png", size=(80, 60)))], settings(size=None),
              "tiny-ip2p", str(tmp_path / "out.png"), say=said.append)
    assert any(f"80x60 is edited at 32x24 (long side {native}" in line for line in said), said
    assert Image.open(tmp_path / "out.png").size == (80, 60)


def test_settings_in_png_reproduce_the_edit(tmp_path):
    source = photo(tmp_path / "a.png")
    first = run_edits([str(source)], settings(seed=7), "tiny-ip2p", str(tmp_path / "one.png"),
                      say=lambda _: None)[0]
    saved = json.loads(Image.open(first).text["editkit"])
    assert saved["instruction"] == "make it blue" and saved["seed"] == 7
    assert saved["model"]["pipeline"]["source"] == "builtin"
    again = run_edits([str(source)], settings(seed=saved["seed"], steps=saved["steps"]),
                      "tiny-ip2p", str(tmp_path / "two.png"), say=lambda _: None)[0]
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))


def test_variations_are_saved_each_and_as_a_grid(tmp_path):
    paths = run_edits([str(photo(tmp_path / "a.png"))], settings(variations=3), "tiny-ip2p",
                      str(tmp_path / "out"), say=lambda _: None)
    assert [p.name for p in paths] == ["a-1.png", "a-2.png", "a-3.png", "a-grid.png"]
    arrays = [np.asarray(Image.open(p)) for p in paths[:3]]
    assert not np.array_equal(arrays[0], arrays[1])  # different seeds
    assert Image.open(paths[3]).size == (64 * 4, 48)


def test_several_images_and_a_folder_in_one_call(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photo(folder / "x.png")
    photo(folder / "y.png", size=(48, 64))
    extra = photo(tmp_path / "z.png", size=(40, 40))
    paths = run_edits([str(folder), str(extra)], settings(), "tiny-ip2p", str(tmp_path / "o"),
                      say=lambda _: None)
    assert sorted(p.name for p in paths) == ["x.png", "y.png", "z.png"]
    assert Image.open(tmp_path / "o/y.png").size == (48, 64)


def test_mask_confines_the_edit(tmp_path):
    source = photo(tmp_path / "a.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = run_edits([str(source)], settings(feather=0), "tiny-ip2p", str(tmp_path / "m.png"),
                    mask=str(tmp_path / "mask.png"), say=lambda _: None)[0]
    before, after = np.asarray(Image.open(source)), np.asarray(Image.open(out))
    assert np.array_equal(before[:, :32], after[:, :32])
    assert not np.array_equal(before[:, 32:], after[:, 32:])


def test_run_folder_uses_its_trained_weights(tmp_path):
    run = tmp_path / "runs" / "r"
    shutil.copytree(tiny_model("tiny-ip2p"), run / "train" / "final")
    (run / "train" / "final" / "editkit_weights.json").write_text('{"type": "pipeline"}')
    (run / "manifest.json").write_text("{}")
    out = run_edits([str(photo(tmp_path / "a.png"))], settings(), str(run),
                    str(tmp_path / "r.png"), say=lambda _: None)[0]
    saved = json.loads(Image.open(out).text["editkit"])
    assert saved["model"]["type"] == "pipeline"
    assert saved["model"]["pipeline"]["path"] == str((run / "train/final").resolve())
    assert (saved["guidance"], saved["image_guidance"]) == (7.5, 1.5)  # nothing recommended


def test_the_trained_editors_recommended_guidance_applies_unless_given(tmp_path):
    final = tmp_path / "run" / "train" / "final"
    shutil.copytree(tiny_model("tiny-ip2p"), final)
    (final / "editkit_weights.json").write_text(
        '{"type": "pipeline", "guidance": {"text": 1.5, "image": 1.2}}')
    said = []
    out = run_edits([str(photo(tmp_path / "a.png"))], settings(), str(tmp_path / "run"),
                    str(tmp_path / "r.png"), say=said.append)[0]
    saved = json.loads(Image.open(out).text["editkit"])
    assert (saved["guidance"], saved["image_guidance"]) == (1.5, 1.2)
    assert any("the model's recommendation" in line for line in said)
    out = run_edits([str(photo(tmp_path / "a.png"))], settings(guidance=4.0),
                    str(tmp_path / "run"), str(tmp_path / "g.png"), say=said.append)[0]
    saved = json.loads(Image.open(out).text["editkit"])
    assert (saved["guidance"], saved["image_guidance"]) == (4.0, 1.2)
    (final / "editkit_weights.json").write_text('{"type": "pipeline", "guidance": 3}')
    with pytest.raises(ModelError, match="malformed guidance entry"):
        run_edits([str(photo(tmp_path / "a.png"))], settings(), str(tmp_path / "run"), None)


def test_run_folder_without_weights_says_what_to_do(tmp_path):
    (tmp_path / "run" / "train").mkdir(parents=True)
    with pytest.raises(ModelError, match="has no trained weights yet"):
        run_edits([str(photo(tmp_path / "a.png"))], settings(), str(tmp_path / "run"), None)


def test_bad_inputs_are_one_line_errors(cli, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    for args, message in [
        (["notes.png", "x"], "notes.png is not an image that can be read"),
        (["missing.png", "x"], "no such file: missing.png"),
        (["notes.png"], "give at least one image and an instruction"),
    ]:
        result = cli("edit", *args, "--model", "tiny-ip2p")
        assert result.returncode != 0
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def test_text_to_image_model_is_refused():
    with pytest.raises(ModelError, match="text-to-image model"):
        from editkit.models.editors import load_edit_pipeline

        load_edit_pipeline("tiny-sd")


def test_one_file_out_for_many_results_is_refused(tmp_path):
    with pytest.raises(InputError, match="pass a folder"):
        output_paths([tmp_path / "a.png", tmp_path / "b.png"], str(tmp_path / "x.png"), 1)
