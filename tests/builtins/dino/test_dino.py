import shutil

import numpy as np
import pytest
from PIL import Image

from editkit.builtins.dino import DinoFilter
from editkit.plugin.kinds import FilterJob
from editkit.testing import tiny_model
from editkit.testing.pairs import synthetic_pairs


def make(**options):
    return DinoFilter(DinoFilter.Options(model="tiny-dinov2", device="cpu", **options))


def direct_cls(paths):
    import torch
    from transformers import AutoImageProcessor, Dinov2Model

    folder = tiny_model("tiny-dinov2")
    model = Dinov2Model.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder)
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad():
        out = model(**processor(images=images, return_tensors="pt"))
    return out.last_hidden_state[:, 0].numpy()  # the CLS token (after the final layer norm)


def test_similarity_matches_a_hand_computed_cosine(tmp_path):
    pairs = synthetic_pairs(tmp_path, 2, samples=1)
    results = list(make(min_similarity=-1).score(FilterJob(pairs=pairs)))
    for pair, result in zip(pairs, results):
        a, b = direct_cls([pair["before_path"], pair["after_path"]])
        expected = float(a @ b / (np.sqrt(a @ a) * np.sqrt(b @ b)))
        assert result["scores"]["dino"] == pytest.approx(expected, abs=1e-5)


def test_identical_images_score_one_and_the_upper_bound_rejects_them(tmp_path):
    pair = synthetic_pairs(tmp_path, 1, samples=1)[0]
    shutil.copy(pair["before_path"], pair["after_path"])
    (result,) = make(min_similarity=0.5, max_similarity=0.99).score(FilterJob(pairs=[pair]))
    assert result["scores"]["dino"] == pytest.approx(1.0, abs=1e-6)
    assert result["keep"] is False and result["criterion"] == "max_similarity"
    assert "> max_similarity 0.99 (nothing changed)" in result["reason"]


def test_lower_bound_rejects_with_value(tmp_path):
    pairs = synthetic_pairs(tmp_path, 3, samples=1)
    values = sorted(r["scores"]["dino"] for r in make(min_similarity=-1)
                    .score(FilterJob(pairs=pairs)))
    threshold = round((values[0] + values[1]) / 2, 6)
    results = list(make(min_similarity=threshold).score(FilterJob(pairs=pairs)))
    rejected = [r for r in results if not r["keep"]]
    assert len(rejected) == 1 and rejected[0]["criterion"] == "min_similarity"
    assert f"{values[0]:.3f} < min_similarity {threshold}" in rejected[0]["reason"]


def test_cache_makes_a_second_run_free_and_bad_files_are_rejects(tmp_path):
    pairs = synthetic_pairs(tmp_path / "img", 2, samples=2)
    pairs[3]["after_path"] = str(tmp_path / "missing.png")
    job = FilterJob(pairs=pairs, cache_dir=tmp_path / "cache")
    first = list(make(min_similarity=-1).score(job))
    assert first[3]["keep"] is False and first[3]["criterion"] == "unreadable image"
    assert job.stats["model_calls"] == 1 and job.stats["images_embedded"] == 7
    again = FilterJob(pairs=pairs, cache_dir=tmp_path / "cache")
    second = list(make(min_similarity=0.9).score(again))
    assert again.stats["model_calls"] == 0 and again.stats["images_cached"] == 7
    assert [r["scores"] for r in second] == [r["scores"] for r in first]


def test_bounds_that_cannot_both_hold_are_an_options_error():
    with pytest.raises(Exception, match="below min_similarity"):
        DinoFilter.Options(min_similarity=0.8, max_similarity=0.5)
