"""`editkit edit` with a flow-matching editor (the tiny FLUX.1 Kontext): its recommended steps
and guidance, masks and variations as for the other families, PNG metadata without image
guidance, and what it cannot do refused before it loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from editkit.editing import EditSettings, run_edits
from editkit.errors import InputError


def photo(path, size=(80, 64)):
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_a_flow_editor_edits_with_its_recommendation_masks_and_variations(tmp_path):
    source = photo(tmp_path / "street.png")
    mask = Image.new("L", (80, 64), 0)
    mask.paste(255, (0, 0, 40, 64))
    mask.save(tmp_path / "mask.png")
    said: list[str] = []
    written = run_edits([str(source)], EditSettings("make it snowy", size=64, variations=2,
                                                    feather=0),
                        "tiny-flux-kontext", str(tmp_path / "out"), mask=str(tmp_path / "mask.png"),
                        device="cpu", say=said.append)
    images = [Image.open(p) for p in written if p.suffix == ".png" and "grid" not in p.name]
    assert len(images) == 2 and all(im.size == (80, 64) for im in images)
    saved = json.loads(images[0].text["editkit"])
    assert (saved["model"]["family"], saved["steps"], saved["guidance"]) == \
        ("flux-kontext", 28, 2.5)  # the model card's, not InstructPix2Pix's 20 / 7.5
    assert saved["image_guidance"] is None and "Image guidance" not in images[0].text["parameters"]
    assert saved["seed"] == 0 and json.loads(images[1].text["editkit"])["seed"] == 1
    original = np.asarray(Image.open(source).convert("RGB"), np.int16)
    edited = np.asarray(images[0].convert("RGB"), np.int16)
    assert np.array_equal(edited[:, 40:], original[:, 40:])  # outside the mask: kept
    assert np.abs(edited[:, :40] - original[:, :40]).mean() > 5
    assert not np.array_equal(edited, np.asarray(images[1].convert("RGB"), np.int16))


@pytest.mark.parametrize("settings, words", [
    (dict(image_guidance=1.5), "has no image guidance"),
    (dict(localize=True), "--localize reads an InstructPix2Pix UNet's attention"),
])
def test_what_a_flow_editor_cannot_do_is_refused_before_it_loads(tmp_path, settings, words):
    source = photo(tmp_path / "street.png")
    with pytest.raises(InputError, match=words):
        run_edits([str(source)], EditSettings("make it snowy", **settings),
                  "tiny-flux-kontext", str(tmp_path / "out.png"), device="cpu",
                  say=lambda line: None)
    assert not (tmp_path / "out.png").exists()
