"""`use: editor`: pairs whose after-image an instruction editor makes of a before-image a
text-to-image model drew (or of the triplet's photo). On tiny models (tiny-sd before-images,
tiny-ip2p and tiny-flux2-klein editors) and in the shapes world (shapes-sd and the shipped
shapes-edit), through the renderer and through a recipe."""

import json

import numpy as np
import pytest
import torch
from pair_checks import pixels, png, render, renderer
from PIL import Image
from pydantic import ValidationError
from recipe_files import write_recipe

from editkit.builtins.editor import EditorRenderer
from editkit.builtins.photo import fit_photo
from editkit.builtins.prompt_to_prompt import PromptToPrompt
from editkit.errors import ModelError, RecipeError
from editkit.models import resolve
from editkit.plugin.kinds import Reject
from editkit.run.recipe import load_recipe
from editkit.run.runner import run_recipe

TINY = dict(model="tiny-sd", editor="tiny-ip2p", samples=2, width=32, height=32,
            before_steps=3, steps=3)
CAR = {"id": "000001", "input": "a photo of a red car", "edit": "make the car blue",
       "output": "a photo of a blue car"}
HOUSE = {"id": "000002", "input": "a photo of a green house", "edit": "make the house red",
         "output": "a photo of a red house"}
KEYS = {"renderer", "seed", "editor", "editor_family", "steps", "guidance", "image_guidance",
        "width", "height", "before", "model", "before_steps", "before_guidance",
        "before_scheduler", "negative_prompt"}


@pytest.fixture(scope="module", autouse=True)
def built():
    """The tiny models, built once: their configs then tell their families at validation."""
    for name in ("tiny-sd", "tiny-ip2p", "tiny-flux2-klein"):
        resolve(name)


def make(**options):
    return renderer(EditorRenderer, TINY, **options)


def refusal(folder, options):
    """The one problem validating a recipe with these render options finds."""
    text = ("name: editor-pairs\noutput: run\nseed: 0\ncaptions:\n  use: template\n  count: 4\n"
            "  options: {subjects: [car, house], attributes: [red, blue, green]}\n"
            f"render:\n  use: editor\n  options: {json.dumps(options)}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(folder, text))
    (problem,) = info.value.problems
    assert "\n" not in problem[1]
    return problem


# --- the pairs and their settings -----------------------------------------------------------


def test_each_sample_has_its_own_seed_and_draws_and_records_every_setting():
    out = render(make(samples=4, guidance=(5, 9), image_guidance=(1.2, 1.8),
                      before_guidance=(3, 4)), CAR)
    assert [o["sample"] for o in out] == [0, 1, 2, 3]
    assert len({o["settings"]["seed"] for o in out}) == 4
    assert len({o["settings"]["guidance"] for o in out}) == 4
    for o in out:
        s = o["settings"]
        assert set(s) == KEYS and s["renderer"] == "editor" and s["before"] == "generated"
        assert 5 <= s["guidance"] <= 9 and 1.2 <= s["image_guidance"] <= 1.8
        assert 3 <= s["before_guidance"] <= 4 and s["steps"] == 3 and s["before_steps"] == 3
        assert (s["editor"], s["editor_family"], s["model"]) == ("tiny-ip2p", "sd", "tiny-sd")
        assert o["before"].size == o["after"].size == (32, 32)
        assert png(o["before"]) != png(o["after"])
    again = render(make(samples=4, guidance=(5, 9), image_guidance=(1.2, 1.8),
                        before_guidance=(3, 4)), CAR)
    assert [png(o["after"]) for o in again] == [png(o["after"]) for o in out]
    other = render(make(samples=1), CAR, seed=1)
    assert other[0]["settings"]["seed"] != out[0]["settings"]["seed"]


def test_steps_and_guidance_left_out_are_the_editors_as_editkit_edit_picks_them():
    (pair,) = render(make(samples=1, steps=None), CAR)
    s = pair["settings"]
    assert (s["steps"], s["guidance"], s["image_guidance"]) == (20, 7.5, 1.5)


def test_the_before_image_is_prompt_to_prompts_source_image_for_the_same_seed():
    ours = make(before_steps=4, before_guidance=(5, 9), before_scheduler="euler-ancestral")
    theirs = renderer(PromptToPrompt, dict(model="tiny-sd", samples=2, width=32, height=32,
                                           steps=4, guidance=(5, 9), cross="replace",
                                           scheduler="euler-ancestral"), pipe=ours.pipeline())
    for edited, drawn in zip(render(ours, CAR, HOUSE), render(theirs, CAR, HOUSE)):
        assert edited["settings"]["seed"] == drawn["settings"]["seed"]
        assert edited["settings"]["before_guidance"] == drawn["settings"]["guidance"]
        assert np.abs(pixels(edited["before"]) - pixels(drawn["before"])).max() <= 1


def test_a_pair_renders_the_same_alone_or_batched_with_other_triplets():
    alone = render(make(guidance=7.5), CAR)
    batched = render(make(guidance=7.5, triplets_per_batch=2), HOUSE, CAR)
    mine = [o for o in batched if o["triplet_id"] == CAR["id"]]
    assert [png(o["before"]) for o in mine] == [png(o["before"]) for o in alone]
    for a, b in zip(mine, alone):  # edited four at a time, then one at a time: rounding
        assert np.abs(pixels(a["after"]) - pixels(b["after"])).max() <= 1


def test_a_photo_is_edited_as_it_is_and_no_text_to_image_model_loads(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "photo.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    made = make(model="nobody/not-downloaded")
    out = render(made, {**CAR, "photo": str(tmp_path / "photo.png")},
                 {**HOUSE, "photo": str(tmp_path / "broken.png")})
    assert made._pipe is None
    rejects = [o for o in out if isinstance(o, Reject)]
    pairs = [o for o in out if not isinstance(o, Reject)]
    assert len(pairs) == 2
    expected = pixels(fit_photo(Image.fromarray(array), 32, 32))
    for pair in pairs:
        assert np.array_equal(pixels(pair["before"]), expected)
        s = pair["settings"]
        assert s["before"] == "photo" and s["photo"] == str(tmp_path / "photo.png")
        assert "model" not in s and "before_steps" not in s
    assert [(r.reason, r.data) for r in rejects] == [
        ("unreadable photo", {"triplet_id": HOUSE["id"], "sample": n}) for n in (0, 1)]


def test_a_diverging_text_to_image_model_gives_rejected_pairs_not_a_crash():
    made = make()
    with torch.no_grad():
        made.pipeline().vae.decoder.conv_out.bias.fill_(float("nan"))
    out = render(made, CAR)
    assert [o.reason for o in out] == ["non-finite image (NaN)"] * 2
    assert out[0].data["settings"]["seed"] != out[1].data["settings"]["seed"]


# --- flow editors -----------------------------------------------------------------------


def test_a_flow_editor_makes_pairs_with_its_own_guidance_only(tmp_path):
    out = render(make(editor="tiny-flux2-klein", width=64, height=64, steps=None,
                      guidance=(1, 3)), CAR)
    for o in out:
        s = o["settings"]
        assert s["editor_family"] == "flux2-klein" and s["image_guidance"] is None
        assert s["steps"] == 4 and 1 <= s["guidance"] <= 3  # the distilled klein's 4 steps
        assert o["after"].size == (64, 64)
    assert refusal(tmp_path, {"editor": "tiny-flux2-klein", "image_guidance": [1.2, 1.8]})[0] \
        == "render.options.image_guidance"
    with pytest.raises(ModelError, match="multiples of 16"):
        make(editor="tiny-flux2-klein", width=40, height=64).editor()


def test_validation_refuses_models_that_cannot_do_their_part(tmp_path):
    where, said = refusal(tmp_path, {"model": "tiny-sd", "editor": "tiny-sd"})
    assert where == "render.options.editor" and "instruction editor" in said
    where, said = refusal(tmp_path, {"model": "tiny-ip2p", "editor": "tiny-ip2p"})
    assert where == "render.options.model" and "text-to-image" in said
    with pytest.raises(ValidationError, match="before_scheduler 'eulr'"):
        make(before_scheduler="eulr")
    with pytest.raises(ValidationError, match="low end first"):
        make(guidance=(9, 5))


# --- the render stage: resume -----------------------------------------------------------


RECIPE = """
name: editor-pairs
output: {output}
seed: 0
captions:
  use: template
  count: 4
  options: {{subjects: [car, house, tree], attributes: [red, blue, green]}}
render:
  use: editor
  options: {{model: tiny-sd, editor: tiny-ip2p, samples: 2, width: 32, height: 32,
            before_steps: 2, steps: 2, guidance: [5, 9]}}
"""


def test_a_resumed_render_neither_redoes_nor_doubles_a_pair(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, RECIPE.format(output=tmp_path / "run")))
    run_recipe(recipe, progress=False)
    folder = tmp_path / "run" / "render"
    shards = sorted(folder.glob("shard-*.jsonl"))
    assert len(shards) == 4  # a shard a batch of one triplet
    # a kill during the last batch: its shard was never written, its images may have been
    last = [json.loads(line) for line in shards[-1].read_text().splitlines()]
    images = {r["id"]: (folder / r["after"]).read_bytes() for r in last}
    kept = {p: (p.stat().st_mtime_ns, p.read_text()) for p in shards[:-1]}
    shards[-1].unlink()
    run_recipe(load_recipe(recipe.source), progress=False)
    records = [json.loads(line) for p in sorted(folder.glob("shard-*.jsonl"))
               for line in p.read_text().splitlines()]
    assert len(records) == 8 and len({r["id"] for r in records}) == 8
    assert all(r["status"] == "kept" for r in records)
    assert {p: (p.stat().st_mtime_ns, p.read_text()) for p in shards[:-1]} == kept
    assert {r["id"]: (folder / r["after"]).read_bytes() for r in records
            if r["id"] in images} == images


# --- the shapes world: the after-image is editkit edit's --------------------------------


def test_the_after_image_is_what_editkit_edit_gives_for_that_image_seed_and_guidance(tmp_path):
    from editkit.editing import EditSettings, run_edits

    triplet = {"id": "000001", "input": "a large red circle on a white background",
               "edit": "make the circle blue",
               "output": "a large blue circle on a white background"}
    made = renderer(EditorRenderer, dict(model="shapes-sd", editor="shapes-edit", samples=1,
                                         width=64, height=64, before_steps=10,
                                         before_guidance=(3, 6)))
    (pair,) = render(made, triplet)
    s = pair["settings"]
    # shapes-edit's own recommendation (its editkit_weights.json), as editkit edit takes it
    assert (s["steps"], s["guidance"], s["image_guidance"]) == (20, 1.5, 1.5)
    pair["before"].save(tmp_path / "before.png")
    (written,) = run_edits([str(tmp_path / "before.png")],
                           EditSettings(instruction=triplet["edit"], seed=s["seed"]),
                           "shapes-edit", str(tmp_path / "edited.png"), say=lambda _: None)
    assert np.array_equal(pixels(Image.open(written).convert("RGB")), pixels(pair["after"]))
