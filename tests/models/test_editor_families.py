"""Editors through the family seam: which pipeline an edit model loads with, the family of a
LoRA editor (its base's), and which roles take an SDXL editor."""

import json

import pytest

from editkit.errors import ModelError
from editkit.models import model_family, reference_problem
from editkit.models.editors import load_edit_pipeline
from editkit.models.families import family_named
from editkit.testing import tiny_model


def test_each_family_names_its_editor_pipeline():
    assert family_named("sd").pipeline_class(editor=True).__name__ == \
        "StableDiffusionInstructPix2PixPipeline"
    for name in ("sdxl", "sdxl-ip2p"):
        assert family_named(name).pipeline_class(editor=True).__name__ == \
            "StableDiffusionXLInstructPix2PixPipeline"


@pytest.mark.parametrize("ref, cls, family, native", [
    ("tiny-ip2p", "StableDiffusionInstructPix2PixPipeline", "sd", 32),
    ("tiny-sdxl-ip2p", "StableDiffusionXLInstructPix2PixPipeline", "sdxl", 64),
])
def test_an_editor_loads_with_its_familys_pipeline(ref, cls, family, native):
    from editkit.editing import model_multiple, native_size

    pipe, spec = load_edit_pipeline(ref, device="cpu")
    assert type(pipe).__name__ == cls
    assert spec.family == family and spec.describe()["family"] == family
    assert native_size(pipe) == native  # the UNet's sample size times the VAE's factor
    assert model_multiple(pipe) == (4 if family == "sd" else 16)


def lora_folder(folder, base):
    """What an editkit LoRA editor's folder says of itself (no weights needed to tell)."""
    folder.mkdir(parents=True)
    (folder / "editkit_weights.json").write_text(json.dumps(
        {"type": "lora", "base": base, "lora": "pytorch_lora_weights.safetensors",
         "conv_in": None}))
    return folder


def test_a_lora_editor_is_of_its_bases_family(tmp_path):
    sdxl, sd = str(tiny_model("tiny-sdxl")), str(tiny_model("tiny-ip2p"))
    assert model_family(lora_folder(tmp_path / "on-sdxl", sdxl)) == "sdxl-ip2p"
    assert model_family(lora_folder(tmp_path / "on-builtin", "tiny-sdxl")) == "sdxl-ip2p"
    assert model_family(lora_folder(tmp_path / "on-sd", sd)) == "ip2p"
    assert model_family(lora_folder(tmp_path / "on-hub", "diffusers/sdxl-instructpix2pix-768")
                        ) == "sdxl-ip2p"
    assert model_family(lora_folder(tmp_path / "unknown", "someone/my-finetune")) == "ip2p"
    nested = lora_folder(tmp_path / "on-lora", str(tmp_path / "on-sdxl"))
    assert model_family(nested) == "sdxl-ip2p"
    looped = lora_folder(tmp_path / "looped", str(tmp_path / "looped"))
    assert model_family(looped) == "ip2p"  # a base that names itself ends, not recurses


def test_an_sdxl_editor_may_edit_be_evaluated_and_trained():
    tiny_model("tiny-sdxl-ip2p")
    tiny_model("tiny-sdxl")
    for role in ("edit", "editor"):
        assert reference_problem("tiny-sdxl-ip2p", role) is None
    assert reference_problem("tiny-sdxl", "edit") is None  # a LoRA editor's base
    assert "this needs an instruction editor" in reference_problem("tiny-sdxl", "editor")
    for ref in ("tiny-sdxl-ip2p", "tiny-sdxl", "tiny-ip2p"):
        assert reference_problem(ref, "train-base") is None


def test_a_text_to_image_model_without_conv_in_is_refused_before_loading(tmp_path):
    for ref in ("tiny-sd", "tiny-sdxl"):
        with pytest.raises(ModelError, match="text-to-image model|an SDXL model") as info:
            load_edit_pipeline(ref, device="cpu")
        assert "this needs an instruction editor" in str(info.value)
    lora_folder(tmp_path / "lora", "tiny-sdxl")  # a LoRA with no conv_in on a plain base
    with pytest.raises(ModelError, match="this needs an instruction editor"):
        load_edit_pipeline(str(tmp_path / "lora"), device="cpu")
