"""`use: photo`: pairs whose before-image is the user's photo, on tiny-sd (random weights)
and the shipped shapes-sd (where an edit of a photo can be measured), through the renderer
and through a recipe."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from recipe_files import write_recipe

from editkit.builtins.photo import PhotoRenderer, fit_photo
from editkit.builtins.prompt_to_prompt import PromptToPrompt
from editkit.builtins.shapes.photos import ShapesPhotos, ShapesPhotosOptions, draw_photos
from editkit.diffusion.inversion import psnr
from editkit.errors import RecipeError
from editkit.models.segmenter import GENERIC_PROMPT
from editkit.plugin.kinds import CaptionJob, Reject, RenderJob
from editkit.run.recipe import load_recipe
from editkit.run.runner import run_recipe

SWAP = {"input": "a photo of a red car", "output": "a photo of a blue car", "words": ["blue"]}
TINY = dict(model="tiny-sd", samples=1, steps=3, width=32, height=32)
SHAPES = dict(model="shapes-sd", samples=1, steps=10, width=64, height=64, cross="replace",
              on_mismatch="refine")


def make(base=TINY, **options):
    return PhotoRenderer(PhotoRenderer.Options(**{**base, **options}))


def render(renderer, *triplets, seed=0):
    torch.set_num_threads(1)
    return list(renderer.render(RenderJob(triplets=list(triplets), seed=seed)))


def pixels(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def noise_photo(path, size=(32, 32), seed=0):
    """A photo no model draws: every pixel its own, so any resampling shows."""
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def triplet(photo, number=1, **fields):
    return {"id": f"{number:06d}", **SWAP, "photo": str(photo), **fields}


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return noise_photo(tmp_path_factory.mktemp("photo") / "noise.png")


@pytest.fixture(scope="module")
def shapes_triplets(tmp_path_factory):
    """Colour and kind edits of world-drawn photos whose captions leave size, place and
    background unsaid: what the photo shows and the caption does not say, only the photo
    renderer keeps."""
    folder = tmp_path_factory.mktemp("shapes-photos")
    draw_photos(folder, 4)
    gen = ShapesPhotos(ShapesPhotosOptions(
        photos=str(folder), edits_per_photo=1, edits=["colour", "kind"],
        unsaid=["size", "place", "background"], unsaid_rate=1.0))
    found = [t for batch in gen.generate(CaptionJob(count=4, seed=0)) for t in batch]
    assert not any(isinstance(t, Reject) for t in found)
    return [{**t, "id": f"{i:06d}"} for i, t in enumerate(found)]


# --- the before image, fitting and the recorded settings ---------------------------------


def test_the_before_image_is_the_photo_pixel_for_pixel(photo):
    out = render(make(samples=2), triplet(photo))
    assert len(out) == 2
    for pair in out:
        assert np.array_equal(pixels(pair["before"]), pixels(Image.open(photo)))
        assert not np.array_equal(pixels(pair["after"]), pixels(pair["before"]))
        s = pair["settings"]
        assert s["renderer"] == "photo" and s["mode"] == "prompt-to-prompt"
        assert s["inversion"] == "edit-friendly" and s["skip"] == 0
        assert s["scheduler"] == "ddim" and s["photo"] == str(photo)
        assert "fixed_point" not in s and "null_text_lr" not in s
        assert math.isfinite(s["inversion_psnr"]) and s["inversion_psnr"] > 0
        assert s["inversion_seconds"] > 0 and 2.0 <= s["guidance"] <= 3.0
        assert 0.1 <= s["self_fraction"] <= 0.9 and "mask" not in pair
    assert out[0]["settings"]["seed"] != out[1]["settings"]["seed"]


def test_fit_photo_centre_crops_to_the_aspect_then_resizes():
    # a wide photo: green in the middle square, red bars on both sides that the crop drops
    wide = np.zeros((50, 100, 3), np.uint8)
    wide[:, :25] = wide[:, 75:] = (255, 0, 0)
    wide[:, 25:75] = (0, 200, 0)
    fitted = pixels(fit_photo(Image.fromarray(wide), 64, 64))
    assert fitted.shape == (64, 64, 3)
    assert (fitted == (0, 200, 0)).all()  # nothing of the cut-off sides leaks into the edges
    # a tall photo into a wide frame: the middle rows, resized
    tall = np.random.default_rng(1).integers(0, 256, (90, 30, 3), dtype=np.uint8)
    fitted = fit_photo(Image.fromarray(tall), 48, 32)
    expected = Image.fromarray(tall[35:55]).resize((48, 32), Image.Resampling.LANCZOS)
    assert fitted.size == (48, 32) and np.array_equal(pixels(fitted), pixels(expected))
    same = Image.fromarray(tall)
    assert fit_photo(same, 30, 90) is same


def test_a_photo_of_another_size_is_fitted_before_it_is_rendered(tmp_path):
    path = noise_photo(tmp_path / "wide.png", size=(96, 40), seed=2)
    out = render(make(width=48, height=32), triplet(path))
    expected = fit_photo(Image.open(path).convert("RGB"), 48, 32)
    assert out[0]["before"].size == out[0]["after"].size == (48, 32)
    assert np.array_equal(pixels(out[0]["before"]), pixels(expected))


# --- edit-friendly inversion and the other inversions on the shapes world ---------------


def test_the_same_caption_gives_back_the_inversions_reconstruction(shapes_triplets):
    same = [{**t, "output": t["input"]} for t in shapes_triplets[:2]]
    for options in ({}, {"skip": 3}):
        out = render(make(SHAPES, triplets_per_batch=2, **options), *same)
        for pair in out:
            recorded = pair["settings"]["inversion_psnr"]
            assert recorded > 30  # the shapes VAE gives the world's photos back closely
            # the after branch is the decoded before branch (the photo's reconstruction)
            assert abs(psnr(pair["before"], pair["after"])[0] - recorded) < 0.5
        assert out[0]["settings"]["skip"] == options.get("skip", 0)


def test_an_edit_keeps_what_the_caption_leaves_unsaid_unlike_a_text_to_image_pair(
        shapes_triplets):
    """Measured on shapes-sd at 64 px, 10 steps, these three edits: the photo renderer's
    after-images are 14-38 dB from their photos, the text-to-image pairs' 6.5-7 dB."""
    edited = render(make(SHAPES, triplets_per_batch=3), *shapes_triplets[:3])
    plain = render(PromptToPrompt(PromptToPrompt.Options(**SHAPES, triplets_per_batch=3)),
                   *shapes_triplets[:3])
    ours, theirs, recorded = [], [], []
    for pair, other in zip(edited, plain):
        photo = pair["before"]
        assert not np.array_equal(pixels(pair["after"]), pixels(photo))
        ours.append(psnr(photo, pair["after"])[0])
        theirs.append(psnr(photo, other["after"])[0])
        recorded.append(pair["settings"]["inversion_psnr"])
    assert all(a > b for a, b in zip(ours, theirs)), (ours, theirs)
    assert np.mean(ours) > np.mean(theirs) + 6, (ours, theirs)
    assert np.mean(ours) < np.mean(recorded) - 5  # the edit changed more than inversion error


@pytest.mark.parametrize("inversion", ["ddim", "negative-prompt"])
def test_deterministic_inversions_record_their_settings(photo, shapes_triplets, inversion):
    out = render(make(inversion=inversion, fixed_point=1), triplet(photo))
    s = out[0]["settings"]
    assert s["inversion"] == inversion and s["fixed_point"] == 1 and "skip" not in s
    assert np.array_equal(pixels(out[0]["before"]), pixels(Image.open(photo)))
    assert math.isfinite(s["inversion_psnr"])
    same = {**shapes_triplets[0], "output": shapes_triplets[0]["input"]}
    pair = render(make(SHAPES, inversion=inversion, fixed_point=1), same)[0]
    assert pair["settings"]["inversion_psnr"] > 30
    assert abs(psnr(pair["before"], pair["after"])[0] - pair["settings"]["inversion_psnr"]) < 1


def test_null_text_records_its_learning_rate(photo):
    s = render(make(inversion="null-text", null_text_lr=0.05), triplet(photo))[0]["settings"]
    assert s["inversion"] == "null-text" and s["null_text_lr"] == 0.05
    assert s["fixed_point"] == 3


def test_control_off_is_recorded_and_still_starts_from_the_photo(photo):
    pair = render(make(control=False, cross="replace", local_blend=True), triplet(photo))[0]
    s = pair["settings"]
    assert s["control"] is False and s["cross"] == "none" and s["self_fraction"] == 0.0
    assert np.array_equal(pixels(pair["before"]), pixels(Image.open(photo)))
    assert "inversion_psnr" in s and "mask" not in pair


def test_local_blend_returns_its_mask_with_the_pair(photo):
    out = render(make(local_blend=True, blend_start=0.0, blend_threshold=0.5, width=48,
                      cross="replace", skip=1), triplet(photo))
    pair = out[0]
    assert pair["mask"].size == (48, 32) and pair["before"].size == (48, 32)
    assert pair["settings"]["local_blend"] and pair["settings"]["words"] == ["blue"]


# --- masked mode --------------------------------------------------------------------------


def masked(tiny_clipseg, **options):
    return make(mode="masked", segmenter=str(tiny_clipseg), feather=0.0, **options)


def test_masked_mode_keeps_the_photo_outside_the_mask_exactly(photo, tiny_clipseg):
    out = render(masked(tiny_clipseg, samples=2, mask_threshold="otsu"), triplet(photo))
    assert len(out) == 2
    original = pixels(Image.open(photo))
    for pair in out:
        mask = pixels(pair["mask"])
        assert pair["mask"].size == (32, 32) and set(np.unique(mask)) == {0, 255}
        outside = mask[..., 0] == 0
        assert np.array_equal(pixels(pair["before"]), original)
        assert np.array_equal(pixels(pair["after"])[outside], original[outside])
        assert not np.array_equal(pixels(pair["after"])[~outside], original[~outside])
        s = pair["settings"]
        assert s["mode"] == "masked" and s["strength"] == 0.7 and s["feather"] == 0.0
        assert s["segmenter"] == str(tiny_clipseg) and s["mask_words"] == ["red"]
        assert s["mask_region"] == "words" and s["control"] is False
        assert 0 < s["mask_area"] < 1 and s["mask_area"] == pytest.approx(
            float((~outside).mean()), abs=1e-3)
        assert "inversion_psnr" not in s


@pytest.mark.parametrize("fields, words, region", [
    ({}, ["red"], "words"),  # the photo shows the red car, not the blue one
    ({"input": "a large purple circle and a small red square",
      "output": "a large purple triangle and a small red square", "words": ["triangle"]},
     ["circle"], "words"),
    ({"output": "a photo of a red car and a dog", "words": ["dog"]}, ["dog"], "words"),
    ({"output": "a photo of a red car and a dog", "words": []}, [GENERIC_PROMPT],
     "foreground"),
])
def test_the_mask_is_found_from_what_the_photo_shows(photo, tiny_clipseg, fields, words,
                                                     region):
    pair = render(masked(tiny_clipseg, mask_threshold="otsu"), triplet(photo, **fields))[0]
    assert pair["settings"]["mask_words"] == words
    assert pair["settings"]["mask_region"] == region


def test_a_background_edit_masks_the_background(photo, tiny_clipseg):
    t = triplet(photo, input="a red car on grass", output="a red car on sand",
                region="background", words=["sand"])
    s = render(masked(tiny_clipseg, mask_threshold="otsu"), t)[0]["settings"]
    assert s["mask_region"] == "background"


def test_an_empty_mask_is_a_reject(photo, tiny_clipseg):
    out = render(masked(tiny_clipseg, samples=2, mask_threshold=0.99), triplet(photo, 7))
    assert [(r.reason, r.data) for r in out] == [
        ("empty mask", {"triplet_id": "000007", "sample": 0}),
        ("empty mask", {"triplet_id": "000007", "sample": 1})]
    assert "threshold 0.99; lower mask_threshold" in out[0].detail


# --- rejects and refusals -----------------------------------------------------------------


def test_triplets_without_a_photo_or_with_a_broken_one_are_rejects(photo, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    no_photo = {"id": "000002", **SWAP}
    out = render(make(samples=2, triplets_per_batch=4), no_photo, triplet(broken, 3),
                 triplet(tmp_path / "gone.png", 4), triplet(photo, 5))
    rejects = [(o.reason, o.data["triplet_id"]) for o in out if isinstance(o, Reject)]
    assert rejects == [("no photo", "000002")] * 2 + [("unreadable photo", "000003")] * 2 + \
        [("unreadable photo", "000004")] * 2
    assert "set captions.options.photos" in out[0].detail
    assert "broken.png is not a readable image" in out[2].detail
    assert [o["triplet_id"] for o in out if not isinstance(o, Reject)] == ["000005"] * 2


@pytest.mark.parametrize("options, message", [
    ({"scheduler": "euler"}, "samples with DDIM"),
    ({"skip": 3}, "skip 3 leaves no steps of 3"),
    ({"skip": 1, "inversion": "ddim"}, "skip is for inversion: edit-friendly"),
    ({"skip": 1, "mode": "masked"}, "skip is for inversion: edit-friendly"),
    ({"mask_threshold": 1.0}, "mask_threshold must be between 0 and 1"),
    ({"mask_threshold": 0}, "mask_threshold must be between 0 and 1"),
    ({"mask_threshold": "half"}, "mask_threshold"),
    ({"strength": 0}, "strength"),
    ({"inversion": "ddpm"}, "inversion"),
])
def test_options_that_cannot_work_are_refused(options, message):
    with pytest.raises(ValidationError, match=message):
        PhotoRenderer.Options(**{**TINY, **options})


def test_accepted_options():
    for options in ({"mask_threshold": "otsu"}, {"skip": 2}, {"scheduler": "default"},
                    {"mode": "masked", "strength": 1.0}):
        PhotoRenderer.Options(**{**TINY, **options})


def test_a_recipe_names_the_refused_render_option(tmp_path):
    path = write_recipe(tmp_path, f"""\
name: t
output: {tmp_path / 'run'}
captions: {{use: template, count: 2}}
render: {{use: photo, options: {{model: tiny-sd, steps: 4, skip: 4}}}}
""")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    ((where, message),) = info.value.problems
    assert where == "render.options" and "skip 4 leaves no steps of 4" in message


# --- through a recipe ----------------------------------------------------------------------


def records(folder):
    return [json.loads(line) for shard in sorted(folder.glob("shard-*.jsonl"))
            for line in shard.read_text().splitlines() if line]


@pytest.mark.slow
def test_a_recipe_renders_its_photos_and_a_second_run_renders_nothing_new(tmp_path):
    photos = draw_photos(tmp_path / "photos", 6)
    path = write_recipe(tmp_path, f"""\
name: photos
output: {tmp_path / 'run'}
seed: 1
captions:
  use: shapes-photos
  count: 10
  options: {{photos: {tmp_path / 'photos'}, edits_per_photo: 2}}
render:
  use: photo
  options: {{model: shapes-sd, samples: 1, steps: 10, width: 64, height: 64, cross: replace,
            on_mismatch: refine, triplets_per_batch: 4, device: cpu}}
""")
    run_recipe(load_recipe(path), progress=False)
    captions = {r["id"]: r for r in records(tmp_path / "run/captions") if r["status"] == "kept"}
    assert len(captions) == 10
    folder = tmp_path / "run/render"
    rendered = records(folder)
    assert len(rendered) == 10 and all(r["status"] == "kept" for r in rendered)
    by_name = {p.name: p for p in photos}
    for record in rendered:
        triplet = captions[record["triplet_id"]]
        photo = by_name[triplet["photo_name"]]
        assert record["settings"]["photo"] == triplet["photo"] == str(photo.resolve())
        assert np.array_equal(pixels(Image.open(folder / record["before"])),
                              pixels(Image.open(photo)))
        assert record["settings"]["inversion_psnr"] > 30
        assert record["input"] == triplet["input"] and record["output"] == triplet["output"]
    shards = {p.name: p.read_bytes() for p in folder.glob("shard-*.jsonl")}
    run_recipe(load_recipe(path), progress=False)
    assert {p.name: p.read_bytes() for p in folder.glob("shard-*.jsonl")} == shards
