"""`editkit edit --localize`: the mask from the edit model's cross-attention to the words."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from editkit.diffusion.localize import edit_with_maps, instruction_words
from editkit.editing import EditSettings, run_edits
from editkit.errors import InputError
from editkit.models import load
from editkit.testing import sharpen_attention, tiny_model

INSTRUCTION = "remove the red cars"


def photo(path, size=(80, 60)):
    array = np.zeros((size[1], size[0], 3), np.uint8) + np.array((200, 20, 20), np.uint8)
    array[: size[1] // 2, : size[0] // 2] = (20, 200, 20)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def sharp_model(tmp_path_factory):
    """tiny-ip2p with sharpened attention (random weights attend almost uniformly), saved
    and loaded back like any diffusers folder."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = load(StableDiffusionInstructPix2PixPipeline, str(tiny_model("tiny-ip2p")))
    sharpen_attention(pipe.unet)
    folder = tmp_path_factory.mktemp("sharp-ip2p")
    pipe.save_pretrained(folder, safe_serialization=True)
    return str(folder)


def localized(tmp_path, model, name="out.png", **changes):
    values = {"instruction": INSTRUCTION, "steps": 2, "size": 32, "feather": 0.0,
              "localize": True, **changes}
    return run_edits([str(photo(tmp_path / "in.png"))], EditSettings(**values), model,
                     str(tmp_path / name), say=lambda _: None)


def test_content_words_skip_stop_words_and_edit_verbs():
    assert instruction_words("Remove the red cars from the street.") == ["red", "cars",
                                                                         "street"]
    assert instruction_words("make it blue") == ["blue"]
    assert instruction_words("turn the sky into a sunset, add clouds") == ["sky", "sunset",
                                                                           "clouds"]
    assert instruction_words(INSTRUCTION, ["Cars"]) == ["cars"]
    with pytest.raises(InputError, match="boats not in the instruction"):
        instruction_words(INSTRUCTION, ["boats"])
    with pytest.raises(InputError, match="no content word"):
        instruction_words("make it so")


def test_outside_the_saved_mask_the_input_is_kept(tmp_path, sharp_model):
    out, mask_file = localized(tmp_path, sharp_model)
    assert mask_file == tmp_path / "out-mask.png"
    mask = np.asarray(Image.open(mask_file))
    assert mask.shape == (60, 80) and set(np.unique(mask)) <= {0, 255}
    assert 0 < (mask > 0).mean() < 1  # sharpened maps pick a region, not all or nothing
    before, after = np.asarray(Image.open(tmp_path / "in.png")), np.asarray(Image.open(out))
    assert after.shape == before.shape
    assert np.array_equal(before[mask == 0], after[mask == 0])
    assert not np.array_equal(before[mask > 0], after[mask > 0])
    saved = json.loads(Image.open(out).text["editkit"])["localize"]
    assert saved["words"] == ["red", "cars"] and saved["threshold"] == "otsu"
    assert 0 < saved["cut"] < 1 and saved["mask"] == str(mask_file)
    assert saved["area"] == pytest.approx((mask > 0).mean(), abs=1e-3)


def test_a_higher_threshold_gives_a_smaller_mask(tmp_path, sharp_model):
    areas = []
    for cut in (0.2, 0.6, 0.9):
        mask_file = localized(tmp_path, sharp_model, f"t{cut}.png", localize_threshold=cut,
                              localize_words=["cars"])[1]
        areas.append((np.asarray(Image.open(mask_file)) > 0).mean())
        saved = json.loads(Image.open(tmp_path / f"t{cut}.png").text["editkit"])["localize"]
        assert saved["words"] == ["cars"] and saved["threshold"] == cut
    assert areas[0] > areas[1] > areas[2] > 0


def test_capture_reads_the_text_branch_only_and_restores_the_processors(sharp_model):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    torch.set_num_threads(1)
    pipe = load(StableDiffusionInstructPix2PixPipeline, sharp_model)
    pipe.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (32, 24), (120, 40, 200))

    def plain():
        return np.asarray(pipe(INSTRUCTION, image=image, num_inference_steps=3,
                               generator=torch.Generator().manual_seed(1)).images[0])

    reference = plain()
    original = {k: type(v) for k, v in pipe.unet.attn_processors.items()}
    edited, maps, controller = edit_with_maps(
        pipe, INSTRUCTION, [image, image], ["red", "cars"], 3,
        generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == original
    assert np.array_equal(plain(), reference)
    # capturing does not change the edit (up to float rounding of softmax @ v vs SDPA)
    assert np.abs(np.asarray(edited[0], np.int16) - reference).max() <= 2
    # sized from the latents: 24x32 pixels, VAE factor 2 -> 12x16 latents; latents that
    # small read the finest cross-attention level (factor 1 of the tiny UNet) -> 12x16 maps
    assert controller.factor == 1 and maps.shape == (2, 1, 12, 16)
    captured = {name for _, name in controller.materialised}
    cross = {name for name, layer in controller.layers.items()
             if layer.cross and layer.factor == controller.factor}
    assert captured == cross  # self-attention and other levels stay on the fused kernel
    assert {step for step, _ in controller.materialised} == {0, 1, 2}
    # one step from the same noise: the image-only and unconditional copies are identical
    # for two instructions, so maps that differ come from the text-conditioned copy
    one = {word: edit_with_maps(pipe, f"remove the red {word}", [image], [word], 1,
                                generator=torch.Generator().manual_seed(1))[1]
           for word in ("cars", "dog")}
    assert not torch.allclose(one["cars"], one["dog"])  # both one token at position 4
    # no guidance: the UNet batch is the text-conditioned samples alone
    _, alone, _ = edit_with_maps(pipe, INSTRUCTION, [image], ["cars"], 2, guidance_scale=1.0,
                                 generator=torch.Generator().manual_seed(1))
    assert alone.shape == (1, 1, 12, 16) and torch.isfinite(alone).all()


def test_localize_usage_errors(cli, tmp_path):
    photo(tmp_path / "a.png")
    Image.new("L", (80, 60), 255).save(tmp_path / "m.png")
    for extra, message in [
        (["--localize", "--mask", "m.png"], "give --localize or --mask, not both"),
        (["--localize-words", "cars"], "need --localize"),
        (["--localize", "--localize-threshold", "high"], "neither 'otsu' nor a number"),
        (["--localize", "--localize-words", "boats"], "boats not in the instruction"),
    ]:
        result = cli("edit", "a.png", INSTRUCTION, "--model", "tiny-ip2p", *extra)
        assert result.returncode != 0, extra
        assert message in result.stderr, (extra, result.stderr)
        assert "Traceback" not in result.stderr


def test_localize_from_the_command_line(cli, tmp_path):
    photo(tmp_path / "a.png")
    result = cli("edit", "a.png", "make the cars blue", "--model", "tiny-ip2p", "--size", "32",
                 "--steps", "2", "--localize", "--variations", "2", "--out", "o")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["o/a-1.png", "o/a-1-mask.png", "o/a-2.png",
                                     "o/a-2-mask.png", "o/a-grid.png"]
    for k in (1, 2):
        assert Image.open(tmp_path / f"o/a-{k}-mask.png").size == (80, 60)
        saved = json.loads(Image.open(tmp_path / f"o/a-{k}.png").text["editkit"])
        assert saved["localize"]["words"] == ["cars", "blue"]
