"""`editkit edit` and `editkit eval` with SDXL InstructPix2Pix editors (the tiny built-in
`tiny-sdxl-ip2p`: 64 px, VAE factor 8, UNet sides in multiples of 16), through the family
seam: the same images diffusers' own SDXL pipeline gives, and Stable Diffusion's unchanged."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editkit.editing import EditSettings, run_edits
from editkit.models.editors import load_edit_pipeline, widen_conv_in
from editkit.testing import sharpen_attention, tiny_model

INSTRUCTION = "make the red cars blue"


def photo(path, size=(64, 48), seed=0):
    """Dark noise with a red block: something to edit and, for the segmenter, to find."""
    pixels = np.random.default_rng(seed).integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
    pixels[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = (230, 40, 40)
    Image.fromarray(pixels).save(path)
    return path


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), np.int16)


def diffusers_edit(folder, image, seed, steps, guidance=7.5, image_guidance=1.5,
                   instruction=INSTRUCTION, lora=None, conv_in=None):
    """The edit as a diffusers user makes it: the SDXL InstructPix2Pix pipeline called at
    the image's size, its LoRA loaded with `load_lora_weights`."""
    from diffusers import StableDiffusionXLInstructPix2PixPipeline

    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(folder)
    if conv_in is not None:
        from safetensors.torch import load_file

        widen_conv_in(pipe.unet, 8)
        pipe.unet.conv_in.load_state_dict(load_file(conv_in))
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    pipe.set_progress_bar_config(disable=True)
    return pipe(instruction, image=image, num_inference_steps=steps, guidance_scale=guidance,
                image_guidance_scale=image_guidance, height=image.size[1], width=image.size[0],
                generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def test_edit_gives_the_image_diffusers_sdxl_pipeline_gives(tmp_path):
    source = photo(tmp_path / "a.png")
    settings = EditSettings(instruction=INSTRUCTION, steps=3, seed=5, guidance=6,
                            image_guidance=1.3)
    said = []
    out = run_edits([str(source)], settings, "tiny-sdxl-ip2p", str(tmp_path / "out.png"),
                    device="cpu", say=said.append)
    assert out == [tmp_path / "out.png"] and not said  # at its own size: nothing resized
    ours = pixels(tmp_path / "out.png")
    theirs = diffusers_edit(tiny_model("tiny-sdxl-ip2p"), Image.open(source).convert("RGB"),
                            seed=5, steps=3, guidance=6, image_guidance=1.3)
    assert theirs.size == (64, 48)  # at the image's size, not the model's 64x64
    assert np.abs(ours - np.asarray(theirs, np.int16)).max() <= 1
    assert np.abs(ours - pixels(source)).mean() > 10  # it edited
    saved = json.loads(Image.open(tmp_path / "out.png").text["editkit"])
    assert saved["model"]["family"] == "sdxl" and saved["model"]["ref"] == "tiny-sdxl-ip2p"
    assert (saved["seed"], saved["guidance"], saved["image_guidance"]) == (5, 6.0, 1.3)
    assert saved["working_size"] == [64, 48] and saved["size"] == 64  # native: 8 latents x 8


def test_sizes_variations_and_a_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photo(folder / "wide.png", size=(80, 60))
    photo(folder / "tall.png", size=(48, 64), seed=1)
    said = []
    paths = run_edits([str(folder)], EditSettings(instruction=INSTRUCTION, steps=2, size=128,
                                                  variations=2),
                      "tiny-sdxl-ip2p", str(tmp_path / "out"), device="cpu", say=said.append)
    assert [p.name for p in paths] == ["tall-1.png", "tall-2.png", "tall-grid.png",
                                       "wide-1.png", "wide-2.png", "wide-grid.png"]
    assert any("80x60 is edited at 128x96 (long side 128, sides multiple of 16), returned "
               "at 80x60" in line for line in said), said
    assert Image.open(paths[0]).size == (48, 64) and Image.open(paths[3]).size == (80, 60)
    assert not np.array_equal(pixels(paths[3]), pixels(paths[4]))  # seeds 0 and 1
    saved = json.loads(Image.open(paths[4]).text["editkit"])
    assert saved["working_size"] == [128, 96] and saved["seed"] == 1


def test_mask_confines_the_sdxl_edit(tmp_path):
    source = photo(tmp_path / "a.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = run_edits([str(source)], EditSettings(instruction=INSTRUCTION, steps=2, feather=0),
                    "tiny-sdxl-ip2p", str(tmp_path / "m.png"), mask=str(tmp_path / "mask.png"),
                    device="cpu", say=lambda _: None)[0]
    before, after = pixels(source), pixels(out)
    assert np.array_equal(before[:, :32], after[:, :32])
    assert not np.array_equal(before[:, 32:], after[:, 32:])


def test_mask_words_confine_the_sdxl_edit_to_the_segmenters_mask(tmp_path, tiny_clipseg):
    source = photo(tmp_path / "a.png")
    written = run_edits([str(source)], EditSettings(instruction=INSTRUCTION, steps=2,
                                                    feather=0, mask_words=["car"]),
                        "tiny-sdxl-ip2p", str(tmp_path / "out.png"), device="cpu",
                        segmenter=str(tiny_clipseg), say=lambda _: None)
    assert [p.name for p in written] == ["out.png", "out-mask.png"]
    mask = pixels(written[1])[..., 0] > 0
    assert 0 < mask.mean() < 1
    before, after = pixels(source), pixels(written[0])
    assert np.array_equal(before[~mask], after[~mask])
    assert not np.array_equal(before[mask], after[mask])
    saved = json.loads(Image.open(written[0]).text["editkit"])
    assert saved["segment"]["words"] == ["car"] and saved["model"]["family"] == "sdxl"


@pytest.fixture(scope="module")
def sharp_sdxl(tmp_path_factory):
    """tiny-sdxl-ip2p with sharpened attention (random weights attend almost uniformly)."""
    from diffusers import StableDiffusionXLInstructPix2PixPipeline

    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(tiny_model("tiny-sdxl-ip2p"))
    sharpen_attention(pipe.unet)
    folder = tmp_path_factory.mktemp("sharp-sdxl-ip2p")
    pipe.save_pretrained(folder, safe_serialization=True)
    return str(folder)


def test_localize_reads_the_sdxl_editors_attention(tmp_path, sharp_sdxl):
    from editkit.diffusion.localize import edit_with_maps
    from editkit.models.families import family_of

    pipe, _ = load_edit_pipeline(sharp_sdxl, device="cpu")
    image = Image.open(photo(tmp_path / "a.png")).convert("RGB")
    original = {k: type(v) for k, v in pipe.unet.attn_processors.items()}

    def seeds():
        return [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]

    edited, maps, controller = edit_with_maps(pipe, INSTRUCTION, [image, image],
                                              ["red", "cars"], 3, generator=seeds())
    assert {k: type(v) for k, v in pipe.unet.attn_processors.items()} == original
    # capturing does not change the edit, up to float rounding of softmax @ v against the
    # fused kernel (measured on the plain tiny editor: the sharpened one magnifies rounding)
    plain_pipe, _ = load_edit_pipeline("tiny-sdxl-ip2p", device="cpu")
    captured = edit_with_maps(plain_pipe, INSTRUCTION, [image, image], ["red", "cars"], 3,
                              generator=seeds(), output_type="np")[0]
    plain = family_of(plain_pipe).edit(plain_pipe, [INSTRUCTION] * 2, [image, image], 3,
                                       generator=seeds(), output_type="np")
    assert np.abs(np.asarray(captured) - np.asarray(plain)).max() < 1e-4
    # 64x48 px, VAE factor 8 -> 6x8 latents; the tiny SDXL UNet attends to text only at
    # its lower level (factor 2) -> 3x4 maps
    assert controller.factor == 2 and maps.shape == (2, 1, 3, 4)
    captured = {name for _, name in controller.materialised}
    cross = {name for name, layer in controller.layers.items()
             if layer.cross and layer.factor == 2}
    assert captured == cross and {step for step, _ in controller.materialised} == {0, 1, 2}
    out, mask_file = run_edits([str(tmp_path / "a.png")], EditSettings(
        instruction=INSTRUCTION, steps=2, feather=0, localize=True), sharp_sdxl,
        str(tmp_path / "out.png"), device="cpu", say=lambda _: None)
    mask = pixels(mask_file)[..., 0] > 0
    assert 0 < mask.mean() < 1
    before, after = pixels(tmp_path / "a.png"), pixels(out)
    assert np.array_equal(before[~mask], after[~mask])
    saved = json.loads(Image.open(out).text["editkit"])["localize"]
    assert saved["words"] == ["red", "cars", "blue"] and saved["mask"] == str(mask_file)


def lora_editor(folder, base, conv_in=False):
    """An editkit LoRA editor on an SDXL `base`: a peft LoRA on the UNet's attention saved
    with the SDXL pipeline's `save_lora_weights`, and, from a text-to-image base, the
    widened conv_in beside it."""
    from diffusers import StableDiffusionXLInstructPix2PixPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from safetensors.torch import save_file

    from editkit.training.unet import conv_in_state, lora_layers, lora_metadata

    unet = UNet2DConditionModel.from_pretrained(tiny_model(base), subfolder="unet")
    noise = torch.Generator().manual_seed(0)
    if conv_in:
        widen_conv_in(unet, 8)
        with torch.no_grad():
            image_part = unet.conv_in.weight[:, 4:]
            image_part.copy_(torch.randn(image_part.shape, generator=noise) * 0.05)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=noise) * 0.02)
    folder.mkdir(parents=True)
    StableDiffusionXLInstructPix2PixPipeline.save_lora_weights(
        folder, unet_lora_layers=lora_layers(unet),
        unet_lora_adapter_metadata=lora_metadata(unet), safe_serialization=True)
    if conv_in:
        save_file(conv_in_state(unet), folder / "conv_in.safetensors")
    (folder / "editkit_weights.json").write_text(json.dumps({
        "type": "lora", "base": base, "lora": "pytorch_lora_weights.safetensors",
        "conv_in": "conv_in.safetensors" if conv_in else None}))
    return folder


@pytest.mark.parametrize("base, conv_in", [("tiny-sdxl-ip2p", False), ("tiny-sdxl", True)])
def test_a_lora_editor_on_an_sdxl_base_edits_as_diffusers_loads_it(tmp_path, base, conv_in):
    from editkit.models import model_family

    editor = lora_editor(tmp_path / "editor", base, conv_in)
    assert model_family(str(editor)) == "sdxl-ip2p"
    source = photo(tmp_path / "a.png")
    out = run_edits([str(source)], EditSettings(instruction=INSTRUCTION, steps=3, seed=2),
                    str(editor), str(tmp_path / "out.png"), device="cpu", say=lambda _: None)[0]
    image = Image.open(source).convert("RGB")
    theirs = diffusers_edit(tiny_model(base), image, seed=2, steps=3, lora=editor,
                            conv_in=editor / "conv_in.safetensors" if conv_in else None)
    assert np.abs(pixels(out) - np.asarray(theirs, np.int16)).max() <= 1
    if not conv_in:  # the LoRA changes the edit: it was applied
        bare = diffusers_edit(tiny_model(base), image, seed=2, steps=3)
        assert np.abs(pixels(out) - np.asarray(bare, np.int16)).mean() > 1
    saved = json.loads(Image.open(out).text["editkit"])["model"]
    assert (saved["type"], saved["family"], saved["pipeline"]["ref"]) == ("lora", "sdxl", base)


def test_stable_diffusion_edits_exactly_as_before(tmp_path):
    """Through the seam, Stable Diffusion's editor is called as it always was: the same bytes
    as StableDiffusionInstructPix2PixPipeline called directly."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    source = photo(tmp_path / "a.png", size=(32, 24))
    out = run_edits([str(source)], EditSettings(instruction=INSTRUCTION, steps=3, seed=4),
                    "tiny-ip2p", str(tmp_path / "out.png"), device="cpu", say=lambda _: None)[0]
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_model("tiny-ip2p"))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe([INSTRUCTION], image=[Image.open(source).convert("RGB")],
                  num_inference_steps=3, guidance_scale=7.5, image_guidance_scale=1.5,
                  generator=[torch.Generator("cpu").manual_seed(4)]).images[0]
    assert np.array_equal(pixels(out), np.asarray(theirs, np.int16))
    assert json.loads(Image.open(out).text["editkit"])["model"]["family"] == "sd"


def dataset(folder, rows=2, size=64):
    from editkit.testing.pairs import synthetic_pairs

    pairs = synthetic_pairs(folder / "images", rows, samples=1, size=size)
    with open(folder / "metadata.jsonl", "w") as handle:
        for p in pairs:
            handle.write(json.dumps({
                "id": p["id"], "input_image": f"images/{Path(p['before_path']).name}",
                "edited_image": f"images/{Path(p['after_path']).name}",
                "edit_prompt": p["edit"], "input": p["input"], "output": p["output"]}) + "\n")
    return pairs


def test_eval_measures_an_sdxl_editor_beside_a_stable_diffusion_one(tmp_path):
    from editkit.evaluation.evaluate import evaluate_models, load_rows, write_results
    from editkit.evaluation.settings import EvalSettings

    pairs = dataset(tmp_path)
    rows, source = load_rows(tmp_path, "all")
    settings = EvalSettings(steps=2, resolution=64, clip_model="tiny-clip",
                            dino_model="tiny-dinov2", device="cpu")
    result = evaluate_models(["tiny-sdxl-ip2p", "tiny-ip2p"], rows, tmp_path / "ev", settings,
                             source)
    _, table = write_results(tmp_path / "ev", result)
    lines = table.read_text().splitlines()
    assert lines[2].startswith("| tiny-sdxl-ip2p | 2 |") and lines[3].startswith("| tiny-ip2p |")
    assert [m["model"]["family"] for m in result["models"]] == ["sdxl", "sd"]
    assert None not in result["models"][0]["metrics"].values()  # every metric measured
    # the evaluated edit is the one diffusers makes (seed 0 per row, 7.5 / 1.5)
    row = result["models"][0]["rows"][0]
    first = next(p for p in pairs if p["id"] == row["id"])
    theirs = diffusers_edit(tiny_model("tiny-sdxl-ip2p"),
                            Image.open(first["before_path"]).convert("RGB"), seed=0, steps=2,
                            instruction=row["edit_prompt"])
    assert np.abs(pixels(tmp_path / "ev" / row["image"]) -
                  np.asarray(theirs, np.int16)).max() <= 1


@pytest.mark.slow
def test_eval_command_with_an_sdxl_editor_writes_its_table(cli, tmp_path):
    dataset(tmp_path)
    result = cli("eval", ".", "--model", "tiny-sdxl-ip2p", "--out", "ev", "--steps", "2",
                 "--resolution", "64", "--clip-model", "tiny-clip", "--dino-model",
                 "tiny-dinov2", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2].startswith("| tiny-sdxl-ip2p | 2 |")
    assert (tmp_path / "ev" / "metrics.md").read_text().startswith("| model |")
    data = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert data["models"][0]["model"]["family"] == "sdxl"


def test_a_text_to_image_sdxl_model_is_refused_as_the_editor(cli, tmp_path):
    photo(tmp_path / "a.png")
    result = cli("edit", "a.png", INSTRUCTION, "--model", "tiny-sdxl")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "'tiny-sdxl' is an SDXL model" in line and "instruction editor" in line
    assert not (tmp_path / "edits").exists()
