"""The run's dataset loads as it is with Hugging Face `datasets`, as diffusers' InstructPix2Pix
trainer loads it, and every editkit reader still takes the older flat layout."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from recipe_files import write_recipe

from editkit.run.folder import read_dataset, write_dataset_folder

RECIPE = """\
name: pairs
output: runs/pairs
seed: 4
captions: {use: template, count: 12, options: {subjects: [car, house, tree, bench],
           attributes: [red, blue, green, yellow]}}
render: {use: flat, options: {samples: 2}}
filters:
  - {use: pixel-diff, options: {min_change: 0.5}}
train: {use: mean-colour}
evaluate: {split: 0.4}
"""


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    """`datasets` offline, with its cache in this test's folder; returns the cache."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return str(cache)


def make_run(cli, tmp_path):
    """A run folder through captions, render and filters, as `editkit run` leaves it."""
    write_recipe(tmp_path, RECIPE)
    for stage in ("captions", "render", "filters"):
        done = cli("run", "recipe.yaml", "--only", stage, plugins=["testkit"])
        assert done.returncode == 0, done.stderr
    return tmp_path / "runs/pairs"


def flatten(dataset):
    """Rewrite a dataset in the flat layout earlier versions wrote: metadata.jsonl (rows
    sorted by id, image paths `images/NAME`) beside images/."""
    rows = sorted(read_dataset(dataset).rows, key=lambda r: r["id"])
    (dataset / "images").mkdir()
    lines = []
    for row in rows:
        for column in ("input_image", "edited_image"):
            shutil.copy(row[column], dataset / "images" / row[column].name)
            row[column] = f"images/{row[column].name}"
        lines.append(json.dumps(row, sort_keys=True) + "\n")
    (dataset / "metadata.jsonl").write_text("".join(lines))
    for name in ("train", "__test__", "README.md"):
        path = dataset / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_a_run_dataset_loads_as_train_and_test_with_image_columns(cli, tmp_path, hf_offline):
    from datasets import DatasetDict, load_dataset
    from datasets import Image as ImageFeature

    run = make_run(cli, tmp_path)
    rows = read_dataset(run).rows
    held = {r["id"] for r in rows if r["split"] == "test"}
    assert held and len(held) < len(rows)

    data = load_dataset(str(run / "dataset"), cache_dir=hf_offline)
    assert isinstance(data, DatasetDict) and set(data) == {"train", "test"}
    assert set(data["test"]["id"]) == held
    assert set(data["train"]["id"]) == {r["id"] for r in rows} - held
    assert set(data["test"]["split"]) == {"test"} and set(data["train"]["split"]) == {"train"}
    features = data["train"].features
    assert isinstance(features["input_image"], ImageFeature)
    assert isinstance(features["edited_image"], ImageFeature)
    assert {"edit_prompt", "id", "input", "output", "seed", "scores", "split"} <= set(features)
    first = data["train"][0]
    source = next(r for r in rows if r["id"] == first["id"])
    assert np.array_equal(np.asarray(first["edited_image"]),
                          np.asarray(Image.open(source["edited_image"])))
    assert first["edit_prompt"] == source["edit_prompt"]
    assert first["scores"]["change"] >= 0.5
    card = (run / "dataset/README.md").read_text()
    assert card.startswith("---\nconfigs:") and "Made by editkit from the recipe `pairs`" in card


def test_diffusers_trainers_loading_call_sees_only_the_train_rows(cli, tmp_path, hf_offline):
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    run = make_run(cli, tmp_path)
    train = {r["id"] for r in read_dataset(run).split("train")}
    train_data_dir = str(run / "dataset")
    # what examples/instruct_pix2pix/train_instruct_pix2pix.py does with --train_data_dir
    data_files = {"train": os.path.join(train_data_dir, "**")}
    data = load_dataset("imagefolder", data_files=data_files, cache_dir=hf_offline)
    assert list(data) == ["train"] and set(data["train"]["id"]) == train
    columns = data["train"].column_names
    assert {"input_image", "edit_prompt", "edited_image"} <= set(columns)
    assert isinstance(data["train"].features["input_image"], ImageFeature)
    assert data["train"][0]["input_image"].convert("RGB").size == (16, 16)
    # editkit's own trainers (here a third party's, through editkit's reader) agree
    done = cli("run", "recipe.yaml", "--only", "train", plugins=["testkit"])
    assert done.returncode == 0, done.stderr
    weights = json.loads((run / "train/weights.json").read_text())
    assert weights["examples"] == len(train)


def test_an_older_flat_run_still_trains_evaluates_and_is_rewritten_in_place(cli, tmp_path):
    from editkit.evaluation.evaluate import load_rows

    run = make_run(cli, tmp_path)
    rows, source = load_rows(run, "test")
    train = read_dataset(run).split("train")
    flatten(run / "dataset")
    assert read_dataset(run).has_split and (run / "dataset/metadata.jsonl").is_file()

    flat_rows, flat_source = load_rows(run, "test")
    assert [r["id"] for r in flat_rows] == [r["id"] for r in rows]
    assert flat_rows[0]["input_image"].is_file()
    # the same rows in either layout: an evaluation made on one is not redone for the other
    assert flat_source == source
    done = cli("run", "recipe.yaml", "--only", "train", plugins=["testkit"])
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "train/weights.json").read_text())["examples"] == len(train)
    # the filters stage, run again, writes the dataset in today's layout
    done = cli("run", "recipe.yaml", "--only", "filters", plugins=["testkit"])
    assert done.returncode == 0, done.stderr
    assert not (run / "dataset/metadata.jsonl").exists()
    assert (run / "dataset/train/metadata.jsonl").is_file()
    assert load_rows(run, "test")[1] == source


def test_both_splits_get_one_schema_whatever_the_values(tmp_path, hf_offline):
    """`datasets` refuses metadata files whose inferred types differ: nulls in one split
    and numbers in the other, or whole numbers in one and fractions in the other."""
    from datasets import load_dataset

    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8), "red").save(image)
    rows = [{"id": f"{i}", "edit_prompt": "make it blue", "input_image": image,
             "edited_image": image, "split": "test" if i >= 3 else "train",
             "seed": i if i < 3 else None, "scores": {"a": 1 if i == 3 else 0.5,
                                                      "b": float("nan") if i == 0 else 0.25}}
            for i in range(5)]
    folder = write_dataset_folder(tmp_path / "dataset", rows)
    data = load_dataset(str(folder), cache_dir=hf_offline)
    assert data["train"].num_rows == 3 and data["test"].num_rows == 2
    assert "seed" not in data["train"].column_names  # no value at all in the test split
    assert "Left out: seed" in (folder / "README.md").read_text()
    assert data["test"][0]["scores"] == {"a": 1.0, "b": 0.25}
    assert data["train"][0]["scores"]["b"] is None  # NaN is not JSON: written as null
    assert (folder / "train/images/a.png").samefile(image)  # hard-linked, not copied


def test_a_dataset_is_replaced_whole(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    row = {"id": "1", "edit_prompt": "p", "input_image": image, "edited_image": image}
    folder = write_dataset_folder(tmp_path / "dataset", [{**row, "split": "test"}])
    assert (folder / "__test__/metadata.jsonl").is_file()
    write_dataset_folder(folder, [{**row, "split": "train"}])
    assert not (folder / "__test__").exists()
    assert [r["split"] for r in read_dataset(folder).rows] == ["train"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "dataset"]
