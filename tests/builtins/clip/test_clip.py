import shutil

import numpy as np
import pytest
from PIL import Image

from editkit.builtins.clip import ClipFilter
from editkit.plugin.kinds import FilterJob
from editkit.testing import tiny_model
from editkit.testing.pairs import synthetic_pairs


def make(**options):
    return ClipFilter(ClipFilter.Options(model="tiny-clip", device="cpu", **options))


PASS_ALL = dict(min_text=-1, min_direction=-1, min_image=-1, keep_top=None)


def direct(paths, texts):
    """CLIP features straight from transformers, cosines by hand."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    folder = tiny_model("tiny-clip")
    model, processor = CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad():
        img = model.get_image_features(**processor(images=images, return_tensors="pt"))
        tok = processor.tokenizer(texts, padding=True, return_tensors="pt")
        txt = model.get_text_features(**tok)
    img = getattr(img, "pooler_output", img).numpy()
    txt = getattr(txt, "pooler_output", txt).numpy()
    # InstructPix2Pix normalises the features before taking differences
    return (img / np.linalg.norm(img, axis=1, keepdims=True),
            txt / np.linalg.norm(txt, axis=1, keepdims=True))


def cos(a, b):
    return float(a @ b / (np.sqrt(a @ a) * np.sqrt(b @ b)))


def test_scores_match_a_direct_computation(tmp_path):
    pair = synthetic_pairs(tmp_path, 1, samples=1)[0]
    (result,) = make(**PASS_ALL).score(FilterJob(pairs=[pair]))
    img, txt = direct([pair["before_path"], pair["after_path"]], [pair["input"], pair["output"]])
    scores = result["scores"]
    assert scores["clip_image"] == pytest.approx(cos(img[0], img[1]), abs=1e-5)
    assert scores["clip_direction"] == pytest.approx(cos(img[1] - img[0], txt[1] - txt[0]),
                                                     abs=1e-5)
    assert scores["clip_text_before"] == pytest.approx(cos(img[0], txt[0]), abs=1e-5)
    assert scores["clip_text_after"] == pytest.approx(cos(img[1], txt[1]), abs=1e-5)
    assert result["keep"] is True and result["reason"] is None


def test_identical_images_have_image_similarity_one(tmp_path):
    pair = synthetic_pairs(tmp_path, 1, samples=1)[0]
    shutil.copy(pair["before_path"], pair["after_path"])
    (result,) = make(**PASS_ALL).score(FilterJob(pairs=[pair]))
    assert result["scores"]["clip_image"] == pytest.approx(1.0, abs=1e-6)
    assert result["scores"]["clip_direction"] == 0.0  # no change has no direction


def test_each_threshold_rejects_with_its_criterion_and_value(tmp_path):
    pairs = synthetic_pairs(tmp_path, 3, samples=1)
    scores = {r["id"]: r["scores"] for r in make(**PASS_ALL).score(FilterJob(pairs=pairs))}
    for option, key, criterion in (("min_image", "clip_image", "min_image"),
                                   ("min_direction", "clip_direction", "min_direction"),
                                   ("min_text", "clip_text_before", "min_text")):
        values = sorted(min(s[key], s["clip_text_after"]) if option == "min_text" else s[key]
                        for s in scores.values())
        threshold = (values[0] + values[1]) / 2  # exactly one pair falls below
        options = {**PASS_ALL, option: round(threshold, 6)}
        results = list(make(**options).score(FilterJob(pairs=pairs)))
        rejected = [r for r in results if not r["keep"]]
        assert len(rejected) == 1, option
        assert rejected[0]["criterion"] == criterion
        assert f"{values[0]:.3f} < {option} {round(threshold, 6)}" in rejected[0]["reason"]


def test_keep_top_keeps_the_best_directions_of_each_triplet(tmp_path):
    pairs = synthetic_pairs(tmp_path, 2, samples=4)
    results = list(make(**{**PASS_ALL, "keep_top": 2}).score(FilterJob(pairs=pairs)))
    for triplet in ("000000", "000001"):
        mine = [r for r, p in zip(results, pairs) if p["triplet_id"] == triplet]
        ranked = sorted(mine, key=lambda r: r["scores"]["clip_direction"], reverse=True)
        assert [r["keep"] for r in ranked] == [True, True, False, False]
        assert ranked[3]["criterion"] == "keep_top"
        assert "ranks 4 of 4 passing samples" in ranked[3]["reason"]


def test_batched_and_one_at_a_time_agree(tmp_path):
    pairs = synthetic_pairs(tmp_path, 3, samples=2)
    one = list(make(**PASS_ALL, batch_size=1).score(FilterJob(pairs=pairs)))
    many = list(make(**PASS_ALL, batch_size=32).score(FilterJob(pairs=pairs)))
    for a, b in zip(one, many):
        for key in a["scores"]:
            assert a["scores"][key] == pytest.approx(b["scores"][key], abs=1e-5)


def test_refiltering_with_new_thresholds_makes_no_model_calls(tmp_path):
    pairs = synthetic_pairs(tmp_path / "img", 3, samples=2)
    cache = tmp_path / "cache"
    first_job = FilterJob(pairs=pairs, cache_dir=cache)
    first = list(make().score(first_job))
    assert first_job.stats["model_calls"] > 0
    assert first_job.stats["images_embedded"] == 12
    again = make(min_image=0.95, keep_top=1)
    job = FilterJob(pairs=pairs, cache_dir=cache)
    second = list(again.score(job))
    assert job.stats["model_calls"] == 0
    assert job.stats["images_cached"] == 12 and job.stats["texts_cached"] == 6
    assert again._encoder._model is None  # the model was never even loaded
    assert [r["scores"] for r in second] == [r["scores"] for r in first]


def test_corrupt_and_missing_images_are_rejects_not_crashes(tmp_path):
    pairs = synthetic_pairs(tmp_path, 3, samples=1)
    with open(pairs[0]["after_path"], "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n not really")
    pairs[1]["before_path"] = str(tmp_path / "gone.png")
    results = list(make(**PASS_ALL).score(FilterJob(pairs=pairs)))
    assert [r["keep"] for r in results] == [False, False, True]
    assert results[0]["criterion"] == "unreadable image"
    assert results[0]["reason"].startswith("unreadable image (after): cannot decode image")
    assert results[1]["reason"].startswith("unreadable image (before): cannot read image")
    assert "gone.png" in results[1]["reason"]


def test_options_are_checked():
    with pytest.raises(Exception, match="keep_top"):
        ClipFilter.Options(keep_top=0)
    with pytest.raises(Exception, match="min_imag"):
        ClipFilter.Options(min_imag=0.5)
