"""`use: shapes-photos`: edits of photos the world drew, read back with the oracle."""

import random

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from editkit.builtins.shapes.captions import scene_from_dict
from editkit.builtins.shapes.photos import ShapesPhotos, ShapesPhotosOptions, draw_photos
from editkit.builtins.shapes.world import BACKGROUNDS, draw, random_scene
from editkit.errors import RecipeError
from editkit.plugin.kinds import CaptionJob, Reject
from editkit.run.recipe import load_recipe


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes-photos")
    draw_photos(root, 5, seed=3)
    return root


def generator(folder, **options):
    return ShapesPhotos(ShapesPhotosOptions(photos=str(folder), **options))


def stream(gen, start=0, seed=0):
    """Every record the generator yields from `start`, and the sizes of its batches."""
    batches = list(gen.generate(CaptionJob(count=1000, seed=seed, start=start)))
    return [item for batch in batches for item in batch], [len(b) for b in batches]


def same_scene(a, b):
    return a.background == b.background and set(a.shapes) == set(b.shapes)


def test_draw_photos_is_deterministic_and_draws_the_worlds_scenes(tmp_path):
    paths = draw_photos(tmp_path / "a", 4, seed=7)
    again = draw_photos(tmp_path / "b", 4, seed=7)
    other = draw_photos(tmp_path / "c", 4, seed=8)
    assert [p.name for p in paths] == [f"photo-{i:04d}.png" for i in range(4)]
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    assert [p.read_bytes() for p in paths] != [p.read_bytes() for p in other]
    rng = random.Random("editkit-shapes-photos:7")
    for path in paths:
        drawn = np.asarray(draw(random_scene(rng, 2)))
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), drawn)


def test_triplets_carry_their_photo_and_the_scenes_that_were_drawn(folder):
    records, _ = stream(generator(folder, edits_per_photo=2))
    rng = random.Random("editkit-shapes-photos:3")
    drawn = [random_scene(rng, 2) for _ in range(5)]
    assert len(records) == 10 and not any(isinstance(r, Reject) for r in records)
    for k, record in enumerate(records):
        path = folder / f"photo-{k // 2:04d}.png"
        assert record["photo"] == str(path.resolve()) and record["photo_name"] == path.name
        before, after = scene_from_dict(record["scene_before"]), \
            scene_from_dict(record["scene_after"])
        assert same_scene(before, drawn[k // 2])
        assert record["input"] == before.caption() and record["output"] == after.caption()
        assert before != after and record["edit"]
        assert record["edit_kind"] in ("colour", "kind", "size", "background")
        assert record["region"] == ("background" if record["edit_kind"] == "background"
                                    else "foreground")
        assert record["words"] and all(w in record["output"] for w in record["words"])
    # the two edits of one photo are drawn apart
    assert any(records[2 * i]["output"] != records[2 * i + 1]["output"] for i in range(5))


def test_the_stream_is_deterministic_and_resumes_exactly_where_it_stopped(folder):
    gen = generator(folder, edits_per_photo=3, batch=4)
    full, sizes = stream(gen)
    assert sizes == [4, 4, 4, 3]  # 5 photos x 3 edits, then it stops: the photos ran out
    assert stream(generator(folder, edits_per_photo=3, batch=4))[0] == full
    for start in (1, 4, 7, 14):
        assert stream(gen, start=start)[0] == full[start:]
    assert stream(gen, start=15)[0] == []
    assert stream(gen, seed=1)[0] != full


def test_the_options_choose_the_edits_and_what_the_captions_leave_out(folder):
    records, _ = stream(generator(folder, edits=["colour"], unsaid=["place", "background"],
                                  unsaid_rate=1.0))
    for record in records:
        before = scene_from_dict(record["scene_before"])
        assert record["edit_kind"] == "colour"
        assert record["input"] == before.caption(frozenset({"place", "background"}))
        assert " background" not in record["input"] and " on the " not in record["input"]


def test_an_unreadable_or_empty_photo_is_a_reject_and_the_rest_go_on(tmp_path):
    draw_photos(tmp_path, 3)
    (tmp_path / "photo-0001.png").write_bytes(b"not a png at all")
    Image.new("RGB", (64, 64), BACKGROUNDS["white"]).save(tmp_path / "photo-0002.png")
    records, _ = stream(generator(tmp_path, edits_per_photo=2))
    assert len(records) == 6
    assert not any(isinstance(r, Reject) for r in records[:2])
    for reject in records[2:4]:
        assert isinstance(reject, Reject) and reject.reason == "unreadable photo"
        assert "photo-0001.png is not a readable image" in reject.detail
        assert reject.data == {"photo": str((tmp_path / "photo-0001.png").resolve()),
                               "photo_name": "photo-0001.png"}
    assert [r.reason for r in records[4:]] == ["nothing in the photo"] * 2


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "missing", "is not a folder"),
    (lambda root: root, "holds no photos"),
])
def test_a_missing_or_empty_folder_is_refused(tmp_path, make, message):
    (tmp_path / "notes.txt").write_text("no photos here")
    with pytest.raises(ValidationError, match=message):
        ShapesPhotosOptions(photos=str(make(tmp_path)))


def test_a_recipe_names_the_photos_option_when_it_refuses_it(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: t\noutput: {tmp_path / 'run'}\ncaptions: {{use: shapes-photos, "
                    f"count: 4, options: {{photos: {tmp_path / 'none'}}}}}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    ((where, message),) = info.value.problems
    assert where == "captions.options.photos" and "is not a folder" in message
