import pytest
import torch
from PIL import Image

from editkit.errors import InputError, ModelError
from editkit.models.segmenter import (
    DEFAULT_SEGMENTER,
    GENERIC_PROMPT,
    Segmenter,
    build_tiny_clipseg,
)


@pytest.fixture(scope="module")
def clipseg_dir(tmp_path_factory):
    return build_tiny_clipseg(tmp_path_factory.mktemp("tiny-clipseg"))


@pytest.fixture(scope="module")
def segmenter(clipseg_dir):
    return Segmenter(clipseg_dir, device="cpu")


def picture(width, height, seed=0):
    """A picture with structure: a bright square on a dark noisy ground."""
    gen = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(height, width, 3, generator=gen) * 60).to(torch.uint8)
    pixels[height // 4: height // 2, width // 4: width // 2] = torch.tensor([230, 40, 40],
                                                                           dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def test_masks_are_soft_and_at_each_images_size(segmenter):
    images = [picture(40, 30), picture(70, 90, seed=1)]
    found = segmenter.masks(images, "a red car")
    assert [tuple(m.shape) for m in found] == [(1, 30, 40), (1, 90, 70)]
    for mask in found:
        assert mask.dtype == torch.float32
        assert 0 <= float(mask.min()) and float(mask.max()) <= 1
        assert float(mask.std()) > 0  # a map, not a constant
    again = segmenter.masks(images, ["a red car", "a red car"])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(found, again))


def test_several_phrases_for_an_image_combine_by_max(segmenter):
    image = picture(48, 36)
    car = segmenter.masks(image, "car")[0]
    tree = segmenter.masks(image, "tree")[0]
    both = segmenter.masks(image, ["car", "tree"])[0]
    assert not torch.allclose(car, tree)
    assert torch.allclose(both, torch.maximum(car, tree), atol=1e-5)
    per_image = segmenter.masks([image, picture(20, 20)], [["car", "tree"], "sky"])
    assert torch.allclose(per_image[0], both, atol=1e-5)
    assert per_image[1].shape == (1, 20, 20)


def test_phrases_must_match_the_images(segmenter):
    with pytest.raises(InputError, match="3 phrase entries for 2 images"):
        segmenter.masks([picture(16, 16), picture(16, 16)], ["a", "b", "c"])


def test_foreground_and_background_are_complements(segmenter):
    images = [picture(40, 30), picture(64, 48, seed=2)]
    fore = segmenter.region_heat(images, region="foreground")
    back = segmenter.region_heat(images, region="background")
    generic = segmenter.masks(images, GENERIC_PROMPT)
    for f, b, g in zip(fore, back, generic):
        assert torch.allclose(f + b, torch.ones_like(f))
        assert torch.allclose(f, g)
    named = segmenter.region_heat(images, ["car", "tree"], region="foreground")
    assert torch.allclose(named[0], segmenter.masks(images[0], ["car", "tree"])[0], atol=1e-5)


@pytest.mark.parametrize("threshold", [0.5, "otsu"])
def test_region_mask_is_binary_with_stats(segmenter, threshold):
    images = [picture(40, 30), picture(70, 90, seed=1)]
    masks, stats = segmenter.region_mask(images, region="background", threshold=threshold)
    soft = segmenter.region_heat(images, region="background")
    for mask, info, heat in zip(masks, stats, soft):
        assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
        assert mask.shape == heat.shape
        assert info["area"] == pytest.approx(float(mask.mean()))
        assert torch.equal(mask, (heat > info["threshold"]).float())
        assert info["region"] == "background" and info["words"] == [GENERIC_PROMPT]
    if threshold == 0.5:
        assert [s["threshold"] for s in stats] == [0.5, 0.5]
    else:
        assert all(s["method"] == "otsu" and 0 <= s["threshold"] <= 1 for s in stats)


def test_region_from_the_words_an_edit_changes(segmenter):
    image = picture(32, 32)
    masks, stats = segmenter.region_mask(image, words=["car", "tree"], threshold=0.3)
    union = segmenter.masks(image, ["car", "tree"])[0]
    assert torch.equal(masks[0], (union > 0.3).float())
    assert stats[0]["words"] == ["car", "tree"] and stats[0]["region"] == "words"


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "no words to find the region of"),
    (dict(region="sky"), "unknown region 'sky'"),
    (dict(region="foreground", threshold=1.5), "outside 0-1"),
    (dict(region="foreground", threshold="half"), "neither a number nor otsu"),
])
def test_region_mask_refuses_what_cannot_work(segmenter, kwargs, message):
    with pytest.raises(InputError, match=message) as caught:
        segmenter.region_mask(picture(16, 16), **kwargs)
    assert "\n" not in str(caught.value) and caught.value.hint


def test_loads_through_from_pretrained_of_the_folder(clipseg_dir, monkeypatch):
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    calls = []
    for cls in (CLIPSegForImageSegmentation, CLIPSegProcessor):
        real = cls.from_pretrained.__func__

        def spy(klass, location, *args, _real=real, **kwargs):
            calls.append((klass.__name__, str(location)))
            return _real(klass, location, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    loaded = Segmenter(str(clipseg_dir), device="cpu")
    folder = str(clipseg_dir.resolve())
    assert sorted(calls) == [("CLIPSegForImageSegmentation", folder),
                             ("CLIPSegProcessor", folder)]
    assert loaded.describe() == {"ref": str(clipseg_dir), "source": "local", "path": folder,
                                 "device": "cpu"}
    saved = CLIPSegForImageSegmentation.from_pretrained(clipseg_dir).state_dict()
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, saved[name]), name  # the saved weights, not a fresh init


def test_a_missing_model_is_one_line(tmp_path):
    with pytest.raises(ModelError) as caught:
        Segmenter(str(tmp_path / "no-such-model"), device="cpu")
    assert "\n" not in str(caught.value) and caught.value.hint
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="could not load CLIPSeg") as caught:
        Segmenter(str(empty), device="cpu")
    assert "\n" not in str(caught.value) and "complete" in caught.value.hint


def test_default_is_the_refined_clipseg():
    assert DEFAULT_SEGMENTER == "CIDAS/clipseg-rd64-refined"


def test_a_checkpoint_laid_out_like_the_hubs_loads(clipseg_dir, tmp_path):
    """CIDAS/clipseg-rd64-refined keeps its image settings in preprocessor_config.json and
    names ViTImageProcessor there; it loads without torchvision."""
    import json
    import shutil

    hub = tmp_path / "hub-layout"
    shutil.copytree(clipseg_dir, hub)
    processor = json.loads((hub / "processor_config.json").read_text())
    (hub / "processor_config.json").unlink()
    images = {**processor["image_processor"], "image_processor_type": "ViTImageProcessor",
              "processor_class": "CLIPSegProcessor"}
    (hub / "preprocessor_config.json").write_text(json.dumps(images))
    found = Segmenter(hub, device="cpu").masks(picture(50, 20), "a car")
    assert found[0].shape == (1, 20, 50)
