"""`editkit edit --mask-words / --region`: the edit confined to the mask a text-prompted
segmenter (a tiny random CLIPSeg here) finds in each input image."""

import json

import numpy as np
import pytest
from PIL import Image

from editkit.editing import EditSettings, SkippedImages, run_edits
from editkit.errors import InputError
from editkit.models.segmenter import GENERIC_PROMPT, Segmenter


@pytest.fixture(scope="module")
def segmenter(tiny_clipseg):
    return Segmenter(tiny_clipseg, device="cpu")


def picture(path, size=(64, 48), seed=0):
    """A red square on dark noise: the tiny CLIPSeg's map of it crosses 0.5."""
    pixels = np.random.default_rng(seed).integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
    pixels[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = (230, 40, 40)
    Image.fromarray(pixels).save(path)
    return path


def plain(path, colour, size=(40, 40)):
    """One colour: the tiny CLIPSeg's map of white stays below 0.79, of black above 0.3."""
    Image.new("RGB", size, colour).save(path)
    return path


def edit(inputs, out, clipseg, said=None, **changes):
    values = {"instruction": "make it blue", "steps": 2, "size": 32, "feather": 0.0, **changes}
    return run_edits([str(p) for p in inputs], EditSettings(**values), "tiny-ip2p", str(out),
                     segmenter=str(clipseg), say=(said.append if said is not None
                                                  else lambda _: None))


def expected(segmenter, path, words=None, region=None, threshold=0.5):
    """The segmenter's own mask of the image, as a boolean array."""
    masks, _ = segmenter.region_mask(Image.open(path).convert("RGB"), words, region, threshold)
    return masks[0][0].bool().numpy()


def read_mask(path):
    mask = np.asarray(Image.open(path))
    assert set(np.unique(mask)) <= {0, 255}
    return mask > 0


def assert_confined(source, result, mask):
    before, after = np.asarray(Image.open(source)), np.asarray(Image.open(result))
    assert before.shape == after.shape
    assert np.array_equal(before[~mask], after[~mask])
    assert not np.array_equal(before[mask], after[mask])


def test_mask_words_confine_the_edit_to_what_the_segmenter_finds(cli, tmp_path, tiny_clipseg,
                                                                 segmenter):
    source = picture(tmp_path / "a.png")
    result = cli("edit", "a.png", "make it blue", "--model", "tiny-ip2p", "--size", "32",
                 "--steps", "2", "--feather", "0", "--mask-words", "car, bus",
                 "--segmenter", tiny_clipseg, "--out", "out.png")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["out.png", "out-mask.png"]
    assert f"the mask is car, bus, as {tiny_clipseg} finds it" in result.stderr
    mask = read_mask(tmp_path / "out-mask.png")
    assert np.array_equal(mask, expected(segmenter, source, ["car", "bus"]))
    assert 0 < mask.mean() < 1
    assert_confined(source, tmp_path / "out.png", mask)
    saved = json.loads(Image.open(tmp_path / "out.png").text["editkit"])
    assert (saved["mask_words"], saved["region"], saved["mask_threshold"]) == (
        ["car", "bus"], None, 0.5)
    found = saved["segment"]
    assert found["area"] == pytest.approx(mask.mean(), abs=1e-6)
    assert found == {"words": ["car", "bus"], "region": "words", "threshold": 0.5, "cut": 0.5,
                     "area": found["area"], "mask": "out-mask.png",
                     "segmenter": {"ref": str(tiny_clipseg), "source": "local",
                                   "path": str(tiny_clipseg.resolve()), "device": "cpu"}}
    assert saved["mask"] is None and saved["localize"] is None


@pytest.mark.parametrize("words", [["car"], None])
def test_background_is_the_complement_of_the_foreground(tmp_path, tiny_clipseg, segmenter,
                                                        words):
    source = picture(tmp_path / "a.png")
    masks = {}
    for region in ("foreground", "background"):
        out = tmp_path / f"{region}.png"
        written = edit([source], out, tiny_clipseg, region=region, mask_words=words)
        assert written == [out, tmp_path / f"{region}-mask.png"]
        masks[region] = read_mask(written[1])
        assert_confined(source, out, masks[region])
        found = json.loads(Image.open(out).text["editkit"])["segment"]
        assert found["region"] == region and found["words"] == (words or [GENERIC_PROMPT])
    assert np.array_equal(masks["background"], ~masks["foreground"])
    assert np.array_equal(masks["foreground"], expected(segmenter, source, words or [],
                                                        "foreground"))


def test_each_image_of_a_folder_gets_its_own_mask(tmp_path, tiny_clipseg, segmenter):
    folder = tmp_path / "in"
    folder.mkdir()
    sources = [picture(folder / "x.png"), picture(folder / "y.png", size=(40, 56), seed=1)]
    out = tmp_path / "o"
    written = edit([folder], out, tiny_clipseg, mask_words=["car"], variations=2)
    assert [p.relative_to(out).as_posix() for p in written] == [
        "x-1.png", "x-2.png", "x-mask.png", "x-grid.png",
        "y-1.png", "y-2.png", "y-mask.png", "y-grid.png"]
    for source in sources:
        mask = read_mask(out / f"{source.stem}-mask.png")
        assert np.array_equal(mask, expected(segmenter, source, ["car"]))  # at its own size
        for k in (1, 2):
            assert_confined(source, out / f"{source.stem}-{k}.png", mask)
            saved = json.loads(Image.open(out / f"{source.stem}-{k}.png").text["editkit"])
            assert saved["input"] == str(source)
            assert saved["segment"]["mask"] == str(out / f"{source.stem}-mask.png")


def test_at_the_models_size_with_otsus_threshold(tmp_path, tiny_clipseg):
    source = picture(tmp_path / "a.png", size=(80, 60))
    out, mask_file = edit([source], tmp_path / "out.png", tiny_clipseg, mask_words=["car"],
                          mask_threshold=None, output_size="model")
    assert Image.open(out).size == Image.open(mask_file).size == (32, 24)
    found = json.loads(Image.open(out).text["editkit"])["segment"]
    assert found["threshold"] == "otsu" and 0 < found["cut"] < 1
    soft = np.asarray(Image.open(mask_file)) / 255
    assert found["area"] == pytest.approx(soft.mean(), abs=1e-3) and 0 < found["area"] < 1


def test_an_empty_mask_skips_its_image_and_the_others_are_edited(tmp_path, tiny_clipseg):
    folder = tmp_path / "in"
    folder.mkdir()
    picture(folder / "a.png")
    plain(folder / "b.png", "white")
    said = []
    with pytest.raises(SkippedImages) as caught:
        edit([folder], tmp_path / "o", tiny_clipseg, said, mask_words=["car"],
             mask_threshold=0.9)
    assert caught.value.written == [tmp_path / "o/a.png", tmp_path / "o/a-mask.png"]
    assert not (tmp_path / "o/b.png").exists() and not (tmp_path / "o/b-mask.png").exists()
    assert str(caught.value) == (
        f"1 of 2 images have an empty mask ({folder / 'b.png'}); the other 1 were edited; "
        "lower --mask-threshold (or give otsu), or change --mask-words / --region")
    assert f"skipped: {folder / 'b.png'}: the mask of car is empty at threshold 0.9" in said
    with pytest.raises(InputError) as caught:  # one image alone: refused, nothing written
        edit([folder / "b.png"], tmp_path / "b.png", tiny_clipseg, mask_words=["car"],
             mask_threshold=0.9)
    assert caught.value.message.endswith("b.png: the mask of car is empty at threshold 0.9")
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "b-mask.png").exists()


@pytest.mark.slow
def test_a_single_image_with_an_empty_mask_is_refused_in_one_line(cli, tmp_path,
                                                                   tiny_clipseg):
    plain(tmp_path / "white.png", "white")
    result = cli("edit", "white.png", "make it blue", "--model", "tiny-ip2p", "--size", "32",
                 "--steps", "2", "--mask-words", "car", "--mask-threshold", "0.9",
                 "--segmenter", tiny_clipseg, "--out", "out.png")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: white.png: the mask of car is empty at threshold 0.9; lower --mask-threshold "
        "(or give otsu), or change --mask-words / --region")
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "out-mask.png").exists()


def test_a_mask_that_covers_the_whole_image_is_said_and_the_edit_is_not_confined(
        tmp_path, tiny_clipseg):
    source = plain(tmp_path / "black.png", "black")
    said = []
    out, mask_file = edit([source], tmp_path / "m.png", tiny_clipseg, said, feather=4.0,
                          mask_words=["car"], mask_threshold=0.3)
    assert read_mask(mask_file).all()
    assert any("the mask of car covers the whole image at threshold 0.3, so the edit is not "
               "confined" in line for line in said), said
    unmasked = run_edits([str(source)], EditSettings("make it blue", steps=2, size=32),
                         "tiny-ip2p", str(tmp_path / "u.png"), say=lambda _: None)[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(unmasked)))


@pytest.mark.parametrize("changes, message", [
    (dict(mask_words=[" ", ""]), "the mask words are empty"),
    (dict(region="sky"), "region 'sky' is neither foreground nor background"),
    (dict(region="foreground", mask_threshold=1.0), "mask threshold 1.0 is not between 0 and 1"),
    (dict(region="foreground", mask_threshold=float("nan")), "is not between 0 and 1"),
    (dict(mask_words=["car"], localize=True), "localize and mask_words/region"),
])
def test_settings_that_cannot_work_are_refused(changes, message):
    with pytest.raises(InputError, match=message) as caught:
        EditSettings("make it blue", **changes)
    assert caught.value.hint


def test_refused_before_any_model_loads(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    picture(folder / "a.png")
    picture(folder / "a-mask.png")
    with pytest.raises(InputError, match="a-mask.png would overwrite the result"):
        edit([folder], tmp_path / "o", "someone/not-downloaded",
             region="foreground")
    with pytest.raises(InputError, match="cannot be combined with --mask"):
        run_edits([str(folder / "a.png")], EditSettings("x", region="background"),
                  "tiny-ip2p", None, mask=str(folder / "a.png"))
    assert not (tmp_path / "o").exists() and not (tmp_path / "edits").exists()
