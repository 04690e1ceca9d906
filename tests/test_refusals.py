"""Bad input is refused in one line, before any work, and nothing already made is lost.

Each case runs the real `editkit` command: a non-zero exit, exactly one line on stderr, no
traceback. Problems that can be known from the recipe or the arguments are refused there.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from recipe_files import write_recipe

from editkit.errors import ModelError, RecipeError
from editkit.run.recipe import load_recipe
from editkit.testing import tiny_model

BASE = """\
name: t
output: runs/t
captions: {use: template, count: 3}
"""


def refused(result, *words):
    """One line on stderr naming `words`, a non-zero exit and no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def sdxl_folder(path: Path) -> Path:
    """A local SDXL pipeline folder, as far as anything reads it without loading weights."""
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.30.0",
         "unet": ["diffusers", "UNet2DConditionModel"]}))
    (path / "unet").mkdir()
    (path / "unet" / "config.json").write_text(json.dumps(
        {"_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4,
         "addition_embed_type": "text_time", "cross_attention_dim": 2048}))
    return path


def photo(path, size=(40, 30)):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3),
                                                      dtype=np.uint8)).save(path)
    return path


def drop_root_override():
    """The command prefix under which a folder without write permission is unwritable: as
    root that needs the DAC override capability dropped (setpriv); skip where neither works."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search",
              "--inh-caps=-dac_override,-dac_read_search"] if setpriv else []
    probe = Path(__file__).parent  # any folder; a 0555 one is made by the caller
    if not prefix or subprocess.run([*prefix, sys.executable, "-c", "pass"], cwd=probe,
                                    capture_output=True).returncode != 0:
        pytest.skip("root without setpriv: every folder is writable")
    return prefix


def unwritable(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    return folder


# --- 1. model families ------------------------------------------------------------------


def test_unsupported_family_in_a_local_folder_is_refused_at_validation(cli, tmp_path):
    sdxl_folder(tmp_path / "sdxl")
    recipe = write_recipe(tmp_path, BASE + "train: {use: dreambooth, options: {base: ./sdxl, "
                                           "instance_images: .}}\n")
    line = refused(cli("run", recipe.name), "train.options.base", "'./sdxl' is an SDXL model",
                   "StableDiffusionXLPipeline", "Stable Diffusion 1.x/2.x")
    assert line.startswith("Error: recipe.yaml: train.options.base:")
    assert not (tmp_path / "runs").exists()


def test_sdxl_renders_but_is_refused_where_a_stage_cannot_take_it_yet(tmp_path):
    ref = "stabilityai/stable-diffusion-xl-base-1.0"
    text = BASE + (f"render: {{use: masked-blend, options: {{model: {ref}}}}}\n"
                   f"train: {{use: dreambooth, options: {{base: {ref}, "
                   "instance_images: .}}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, text))
    ((path, message),) = info.value.problems
    assert path == "train.options.base"
    assert "is an SDXL model" in message and "known from its hub id" in message


@pytest.mark.parametrize("ref, family", [
    ("black-forest-labs/FLUX.1-dev", "FLUX.1"),
    ("Qwen/Qwen-Image", "Qwen-Image"),
    ("stabilityai/stable-diffusion-3.5-large", "Stable Diffusion 3"),
    ("kandinsky-community/kandinsky-2-2-decoder", "Kandinsky"),
])
def test_unsupported_family_by_hub_id_is_refused_in_train_and_render(tmp_path, ref, family):
    text = BASE + (f"render: {{use: masked-blend, options: {{model: {ref}}}}}\n"
                   f"train: {{use: lora, options: {{base: {ref}}}}}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, text))
    paths = dict(info.value.problems)
    assert set(paths) == {"render.options.model", "train.options.base"}
    assert family in paths["train.options.base"] and "known from its hub id" in \
        paths["train.options.base"]


@pytest.mark.parametrize("ref, family", [
    ("black-forest-labs/FLUX.1-Kontext-dev", "FLUX.1 Kontext editor"),
    ("black-forest-labs/FLUX.2-klein-4B", "FLUX.2 klein editor"),
    ("Qwen/Qwen-Image-Edit-2509", "Qwen-Image-Edit editor"),
])
def test_a_flow_editor_edits_and_trains_with_flow_lora_only(tmp_path, ref, family):
    from editkit.models import reference_problem

    assert reference_problem(ref, "editor") is None and reference_problem(ref, "edit") is None
    assert reference_problem(ref, "flow-base") is None
    text = BASE + (f"render: {{use: masked-blend, options: {{model: {ref}}}}}\n"
                   f"train: {{use: lora, options: {{base: {ref}}}}}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, text))
    paths = dict(info.value.problems)
    assert set(paths) == {"render.options.model", "train.options.base"}
    assert family in paths["train.options.base"] and "use: flow-lora" in \
        paths["train.options.base"]


def test_an_sdxl_editor_edits_and_trains_but_the_renderers_refuse_it(tmp_path):
    from editkit.models import reference_problem

    ref = "diffusers/sdxl-instructpix2pix-768"
    assert reference_problem(ref, "editor") is None and reference_problem(ref, "edit") is None
    assert reference_problem(ref, "train-base") is None
    text = BASE + (f"render: {{use: masked-blend, options: {{model: {ref}}}}}\n"
                   f"train: {{use: instruct-pix2pix, options: {{base: {ref}}}}}\n"
                   f"evaluate: {{base: {ref}}}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, text))
    ((path, message),) = info.value.problems
    assert path == "render.options.model"
    assert "is an SDXL InstructPix2Pix editor (known from its hub id)" in message
    assert "text-to-image" in message


def test_model_family_reads_folders_names_and_editors(tmp_path):
    from editkit.models import model_family

    assert model_family(sdxl_folder(tmp_path / "x")) == "sdxl"
    assert model_family(tiny_model("tiny-sd")) == "sd"
    assert model_family(tiny_model("tiny-ip2p")) == "ip2p"
    assert model_family("tiny-ip2p") == "ip2p"  # a built-in, once built
    assert model_family("shapes-edit") == "ip2p"  # a shipped LoRA editor
    assert model_family("timbrooks/instruct-pix2pix") == "ip2p"
    assert model_family("stable-diffusion-v1-5/stable-diffusion-v1-5") == "sd"
    for ref, family in [("Efficient-Large-Model/Sana_1600M_1024px_diffusers", "sana"),
                        ("HiDream-ai/HiDream-I1-Full", "hidream"),
                        ("Wan-AI/Wan2.1-T2V-14B-Diffusers", "wan"),
                        ("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "pixart"),
                        ("stabilityai/sdxl-turbo", "sdxl")]:
        assert model_family(ref) == family, ref
    assert model_family("someone/swan-lake") is None  # unknown: let through, never guessed
    assert model_family("someone/my-finetune") is None


def test_hub_id_in_the_local_cache_is_known_by_its_model_index(cli, tmp_path):
    snapshot = tmp_path / "hub" / "models--someone--custom" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text(json.dumps(
        {"_class_name": "FluxPipeline", "_diffusers_version": "0.30.0"}))
    (tmp_path / "hub" / "models--someone--custom" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--custom" / "refs" / "main").write_text("a" * 40)
    recipe = write_recipe(tmp_path, BASE + "train: {use: instruct-pix2pix, options: "
                                           "{base: someone/custom}}\n")
    refused(cli("recipes", "validate", recipe, HF_HUB_CACHE=tmp_path / "hub"),
            "train.options.base", "FLUX.1", "in the Hugging Face cache")
    # the same id with nothing cached and no telling name passes offline
    assert cli("recipes", "validate", recipe).returncode == 0


def test_an_editor_given_where_a_text_to_image_model_is_needed(tmp_path):
    text = BASE + "render: {use: prompt-to-prompt, options: {model: timbrooks/instruct-pix2pix}}\n"
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, text))
    ((path, message),) = info.value.problems
    assert path == "render.options.model"
    assert "is an InstructPix2Pix editor" in message and "text-to-image" in message


def test_the_load_path_refuses_an_unsupported_folder_in_one_line(tmp_path):
    from diffusers import StableDiffusionPipeline

    from editkit.models import load
    from editkit.models.editors import load_edit_pipeline

    folder = sdxl_folder(tmp_path / "sdxl")
    with pytest.raises(ModelError, match="is an SDXL model.*StableDiffusionPipeline does not "
                       "load") as info:
        load(StableDiffusionPipeline, str(folder))
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="is an SDXL model"):
        load_edit_pipeline(str(folder), device="cpu")


def test_edit_and_eval_refuse_an_unsupported_model_at_parsing(cli, tmp_path):
    sdxl_folder(tmp_path / "sdxl")
    photo(tmp_path / "a.png")
    refused(cli("edit", "a.png", "make it blue", "--model", "sdxl"), "--model", "SDXL")
    refused(cli("edit", "a.png", "make it blue", "--model", "black-forest-labs/FLUX.1-dev"),
            "FLUX.1")
    refused(cli("eval", ".", "--model", "Qwen/Qwen-Image"), "Qwen-Image")
    assert not (tmp_path / "edits").exists()


# --- 2. model paths that do not exist --------------------------------------------------


@pytest.mark.parametrize("ref", ["./missing-model", "/no/such/model", "~/no-such-model-here",
                                 "models/sd/v1"])
def test_a_local_model_path_that_does_not_exist_is_refused(tmp_path, ref):
    text = BASE + f"render: {{use: prompt-to-prompt, options: {{model: '{ref}'}}}}\n"
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, text))
    assert info.value.problems == [
        ("render.options.model",
         f"'{ref}' does not exist; check the path (a folder with model_index.json)")]


def test_hub_ids_and_builtins_still_pass_offline(tmp_path):
    text = BASE + ("render: {use: prompt-to-prompt, options: {model: someone/not-downloaded}}\n"
                   "train: {use: lora, options: {base: tiny-ip2p}}\n"
                   "evaluate: {base: shapes-edit, models: [someone/other-editor]}\n")
    recipe = load_recipe(write_recipe(tmp_path, text))
    assert recipe.plugins["render"].options.model == "someone/not-downloaded"


def test_model_checks_do_not_import_torch(tmp_path):
    recipe = write_recipe(tmp_path, BASE + (
        "render: {use: prompt-to-prompt, options: {model: stable-diffusion-v1-5/"
        "stable-diffusion-v1-5}}\ntrain: {use: lora, options: {base: timbrooks/"
        "instruct-pix2pix, mixed_precision: bf16}}\n"))
    code = ("import sys\nfrom editkit.run.recipe import load_recipe\n"
            f"load_recipe({str(recipe)!r})\n"
            "print('HEAVY', [m for m in ('torch', 'diffusers', 'transformers') "
            "if m in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


# --- 3. settings that need a GPU ------------------------------------------------------------


def test_fp16_without_a_gpu_is_refused_at_validation(cli, tmp_path):
    recipe = write_recipe(tmp_path, BASE + "train: {use: lora, options: {base: tiny-ip2p, "
                                           "mixed_precision: fp16}}\n")
    # ACCELERATE_USE_CPU: training would run on the CPU here even with a GPU present
    refused(cli("run", recipe, ACCELERATE_USE_CPU="1"), "train.options.mixed_precision",
            "fp16 needs a GPU", "bf16 or no")
    assert not (tmp_path / "runs").exists()  # refused before the captions were made


def test_a_cuda_device_without_one_is_refused_at_validation(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    text = BASE + "render: {use: prompt-to-prompt, options: {model: tiny-sd, device: cuda}}\n"
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, text))
    assert info.value.problems == [("render.options.device", "'cuda' is not available on "
                                    "this machine; use auto or cpu")]


# --- 4. filter thresholds ---------------------------------------------------------------------


FILTERS = BASE + """\
render: {use: prompt-to-prompt, options: {model: tiny-sd}}
filters:
  - {use: clip, options: {min_direction: 5, min_text: -1.5, min_image: .nan}}
  - {use: dino, options: {min_similarity: -3, max_similarity: 2}}
"""


def test_filter_thresholds_out_of_their_range_are_refused(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, FILTERS))
    paths = dict(info.value.problems)
    assert set(paths) == {"filters.0.options.min_direction", "filters.0.options.min_text",
                          "filters.0.options.min_image", "filters.1.options.min_similarity",
                          "filters.1.options.max_similarity"}
    assert paths["filters.0.options.min_direction"] == (
        "Input should be less than or equal to 1, got 5")
    assert paths["filters.1.options.min_similarity"] == (
        "Input should be greater than or equal to -1, got -3")


def test_minus_one_still_switches_a_threshold_off(tmp_path):
    # what benchmarks/shapes.py does to break the filters on purpose
    zero = ["filters.0.options.min_image=-1", "filters.0.options.min_direction=-1",
            "filters.0.options.min_text=-1", "filters.0.options.keep_top=null",
            "filters.1.options.min_similarity=-1", "filters.1.options.max_similarity=1"]
    recipe = load_recipe(write_recipe(tmp_path, FILTERS), zero)
    assert recipe.plugins["filters.0"].options.min_direction == -1
    assert recipe.plugins["filters.1"].options.min_similarity == -1


# --- 5. editkit edit arguments ----------------------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (["--guidance", "nan"], ["--guidance", "'nan' is not a finite number"]),
    (["--guidance", "inf"], ["--guidance", "'inf' is not a finite number"]),
    (["--guidance", "-2"], ["--guidance", "'-2' is below 0"]),
    (["--image-guidance", "nan"], ["--image-guidance", "not a finite number"]),
    (["--feather", "-5"], ["--feather", "'-5' is below 0"]),
    (["--steps", "0"], ["--steps", "0 is not in the range"]),
    (["--dtype", "fp8"], ["--dtype", "'fp8'"]),
    (["--mask", "missing.png"], ["--mask", "does not exist"]),
    (["--model", "./missing-editor"], ["--model", "does not exist"]),
    (["--model", "tiny-sd"], ["--model", "text-to-image", "instruction editor"]),
    (["--mask-words", "car", "--mask", "a.png"], ["--mask-words and --region", "not both"]),
    (["--region", "foreground", "--localize"], ["--localize and --mask-words / --region"]),
    (["--region", "sky"], ["--region", "'sky' is not one of 'foreground', 'background'"]),
    (["--mask-words", " , "], ["--mask-words", "' , ' names nothing"]),
    (["--mask-words", "car", "--mask-threshold", "1.5"],
     ["--mask-threshold", "'1.5' is neither 'otsu' nor a number between 0 and 1"]),
    (["--region", "background", "--mask-threshold", "0"], ["--mask-threshold", "'0'"]),
    (["--mask-threshold", "0.3"], ["need --mask-words or --region"]),
    (["--segmenter", "someone/clipseg"], ["need --mask-words or --region"]),
    (["--region", "foreground", "--segmenter", "./missing-segmenter"],
     ["--segmenter", "does not exist"]),
])
def test_edit_refuses_bad_values_at_parsing(cli, tmp_path, args, words):
    tiny_model("tiny-sd")
    photo(tmp_path / "a.png")
    refused(cli("edit", "a.png", "make it blue", "--model", "tiny-ip2p", *args), *words)
    assert not (tmp_path / "edits").exists()


@pytest.mark.parametrize("instruction", ["", "   "])
def test_edit_refuses_an_empty_instruction(cli, tmp_path, instruction):
    photo(tmp_path / "a.png")
    refused(cli("edit", "a.png", instruction, "--model", "tiny-ip2p"), "INSTRUCTION",
            "the instruction is empty")


def test_edit_out_with_a_non_image_suffix_is_refused_not_made_a_folder(cli, tmp_path):
    photo(tmp_path / "a.png")
    refused(cli("edit", "a.png", "make it blue", "--model", "tiny-ip2p", "--out", "result.txt"),
            "--out result.txt is not an image file name", ".png")
    assert not (tmp_path / "result.txt").exists()
    photo(tmp_path / "b.png")
    refused(cli("edit", "a.png", "b.png", "x", "--model", "tiny-ip2p", "--out", "one.png"),
            "--out one.png is one file but there are 2 results")
    (tmp_path / "taken").write_text("keep me")
    refused(cli("edit", "a.png", "b.png", "x", "--model", "tiny-ip2p", "--out", "taken"),
            "is one file but there are 2 results")
    refused(cli("edit", "a.png", "x", "--model", "tiny-ip2p", "--out", "taken/r.png"),
            "taken is a file, not a folder")
    assert (tmp_path / "taken").read_text() == "keep me"


def test_edit_into_a_folder_that_cannot_be_written_is_refused_up_front(cli, tmp_path):
    photo(tmp_path / "a.png")
    locked = unwritable(tmp_path / "locked")
    prefix = drop_root_override()
    for out in ("locked/r.png", "locked/sub"):
        result = subprocess.run([*prefix, sys.executable, "-m", "editkit", "edit", "a.png",
                                 "x", "--model", "tiny-ip2p", "--out", out], cwd=tmp_path,
                                env=cli.env(), capture_output=True, text=True, timeout=300)
        refused(result, "cannot be written")
    locked.chmod(0o755)
    assert list(locked.iterdir()) == []


# --- 6. one broken image among good ones ------------------------------------------------------


def test_a_broken_image_among_good_ones_is_reported_and_the_others_edited(cli, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photo(folder / "a.png")
    photo(folder / "c.png", size=(30, 40))
    (folder / "b.png").write_text("not an image")
    result = cli("edit", "in", "make it blue", "--model", "tiny-ip2p", "--steps", "2",
                 "--size", "32", "--out", "out")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert sorted(result.stdout.split()) == ["out/a.png", "out/c.png"]
    assert Image.open(tmp_path / "out/c.png").size == (30, 40)
    assert not (tmp_path / "out/b.png").exists()
    errors = [line for line in result.stderr.splitlines() if "b.png" in line]
    assert len(errors) == 2  # said when skipped, and in the closing error
    assert errors[0].startswith("skipped: in/b.png is not an image that can be read")
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: 1 of 3 images could not be read (in/b.png); the other 2 were edited; "
        "pass PNG, JPEG or WebP files")


# --- 7. editkit run: the recipe file and its output -----------------------------------------


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["not UTF-8 text (byte 0 is 0x89)"]),
    (b"name: caf\xe9\n", ["not UTF-8 text (byte 9 is 0xe9)"]),
    (b"name: t\x00\n", ["not valid YAML", "#x0000"]),
    (b"- a\n- b\n", ["a recipe must be a YAML mapping"]),
])
def test_run_refuses_a_recipe_file_that_is_not_a_yaml_mapping(cli, tmp_path, content, words):
    (tmp_path / "r.yaml").write_bytes(content)
    refused(cli("run", "r.yaml"), "r.yaml", *words)


def test_run_refuses_an_output_that_is_a_file_or_under_one(cli, tmp_path):
    recipe = write_recipe(tmp_path, BASE)
    (tmp_path / "notes.txt").write_text("keep me")
    refused(cli("run", recipe, "output=notes.txt"), "output: run folder notes.txt is a file")
    refused(cli("run", recipe, "output=notes.txt/run"), "notes.txt is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_run_refuses_an_output_it_cannot_write(cli, tmp_path):
    recipe = write_recipe(tmp_path, BASE)
    unwritable(tmp_path / "locked")
    prefix = drop_root_override()
    result = subprocess.run([*prefix, sys.executable, "-m", "editkit", "run", str(recipe),
                             "output=locked/run"], cwd=tmp_path, env=cli.env(),
                            capture_output=True, text=True, timeout=300)
    refused(result, "output: run folder locked/run cannot be made", "cannot be written")


# --- 8. one rule for the edit guidance --------------------------------------------------------


def test_eval_uses_the_editors_recommended_guidance_as_edit_does(tmp_path):
    from editkit.editing import EditSettings, run_edits
    from editkit.evaluation.evaluate import evaluate_models, load_rows
    from editkit.evaluation.settings import EvalSettings
    from editkit.testing.pairs import synthetic_pairs

    editor = tmp_path / "editor"
    shutil.copytree(tiny_model("tiny-ip2p"), editor)
    (editor / "editkit_weights.json").write_text(
        '{"type": "pipeline", "guidance": {"text": 2.5, "image": 1.25}}')
    pairs = synthetic_pairs(tmp_path / "data" / "images", 1, samples=1, size=32)
    with open(tmp_path / "data" / "metadata.jsonl", "w") as handle:
        for p in pairs:
            handle.write(json.dumps({"id": p["id"], "edit_prompt": p["edit"],
                                     "input_image": f"images/{Path(p['before_path']).name}"})
                         + "\n")
    rows, source = load_rows(tmp_path / "data", "all")
    fast = dict(steps=1, resolution=32, clip_model="tiny-clip", dino_model="tiny-dinov2",
                device="cpu")
    result = evaluate_models([str(editor), "tiny-ip2p"], rows, tmp_path / "ev",
                             EvalSettings(**fast), source)
    used = [m["model"]["edited_with"] for m in result["models"]]
    assert used == [{"text": 2.5, "image": 1.25, "text_from": "model", "image_from": "model"},
                    {"text": 7.5, "image": 1.5, "text_from": "default",
                     "image_from": "default"}]
    assert result["settings"]["guidance"] is None  # the models ran at different ones
    given = evaluate_models([str(editor)], rows, tmp_path / "ev2",
                            EvalSettings(**fast, guidance=4.0), source)
    assert given["models"][0]["model"]["edited_with"] == {
        "text": 4.0, "image": 1.25, "text_from": "given", "image_from": "model"}
    # editkit edit picks the same numbers for the same editor
    out = run_edits([pairs[0]["before_path"]], EditSettings("make it blue", steps=1, size=32),
                    str(editor), str(tmp_path / "e.png"), say=lambda _: None)[0]
    saved = json.loads(Image.open(out).text["editkit"])
    assert (saved["guidance"], saved["image_guidance"]) == (2.5, 1.25)


def test_one_owner_of_the_default_guidance():
    from editkit.editing import DEFAULT_GUIDANCE, pick_guidance
    from editkit.evaluation.settings import EvalSettings

    assert pick_guidance(None, None, None) == {**DEFAULT_GUIDANCE, "text_from": "default",
                                               "image_from": "default"}
    assert EvalSettings().guidance is None and EvalSettings().image_guidance is None


def test_a_photo_renderer_after_captions_without_photos_is_refused(tmp_path):
    recipe = BASE + "render: {use: photo, options: {model: shapes-sd, width: 64, height: 64}}\n"
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, recipe))
    assert info.value.problems == [(
        "render.use", "'photo' renders triplets made from photos, and captions 'template' has "
        "none: set captions.options.photos to a folder of photos (openai, ollama, "
        "shapes-photos), or use prompt-to-prompt")]
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "a.png")
    ok = BASE.replace("{use: template, count: 3}",
                      "{use: shapes-photos, count: 2, options: {photos: " + str(photos) + "}}")
    load_recipe(write_recipe(tmp_path, ok + "render: {use: photo, options: {model: shapes-sd, "
                             "width: 64, height: 64}}\n"))
