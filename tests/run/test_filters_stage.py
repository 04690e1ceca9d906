"""The clip and dino filters driven by the real `editkit run`: records, manifest, dataset."""

import json

from recipe_files import write_recipe

from editkit.run.folder import RecordStore, read_dataset

RECIPE = """\
name: f
output: runs/f
seed: 3
captions: {{use: template, count: 8, options: {{subjects: [car, house, tree, bench],
           attributes: [red, blue, green, yellow]}}}}
render: {{use: flat, options: {{samples: 3, size: 32}}}}
filters:
  - {{use: clip, options: {{model: tiny-clip, min_image: {min_image}, min_direction: -1,
      min_text: -1, keep_top: 2, triplets_per_batch: 3}}}}
  - {{use: dino, options: {{model: tiny-dinov2, min_similarity: -1, max_similarity: 0.999999}}}}
evaluate: {{split: 0.5, steps: 1, resolution: 32, clip_model: tiny-clip,
            dino_model: tiny-dinov2, base: tiny-ip2p}}
"""


def manifest(tmp_path):
    return json.loads((tmp_path / "runs/f/manifest.json").read_text())


def test_filters_count_rejects_per_criterion_and_refilter_from_cache(cli, tmp_path):
    write_recipe(tmp_path, RECIPE.format(min_image=-1))
    result = cli("run", "recipe.yaml", "--only", "captions", plugins=["testkit"])
    assert result.returncode == 0, result.stderr
    for stage in ("render", "filters"):
        result = cli("run", "recipe.yaml", "--only", stage, plugins=["testkit"])
        assert result.returncode == 0, result.stderr
    summary = manifest(tmp_path)["stages"]["filters"]
    # 8 triplets x 3 samples; keep_top 2 drops one sample of each triplet
    assert summary["scored"] == 24
    assert summary["rejects"]["clip: keep_top"] == 8
    assert summary["stats"]["0-clip"]["images_embedded"] == 48
    assert summary["stats"]["0-clip"]["model_calls"] > 0
    clip_rows = RecordStore(tmp_path / "runs/f/filters/0-clip").read()
    assert len(clip_rows) == 24 and all("clip_direction" in r["scores"] for r in clip_rows)
    assert {r["criterion"] for r in clip_rows if r["status"] == "rejected"} == {"keep_top"}

    rows = read_dataset(tmp_path / "runs/f").rows
    assert len(rows) == summary["kept"]
    assert {"clip_image", "dino"} <= set(rows[0]["scores"])
    by_triplet = {}
    for row in rows:
        by_triplet.setdefault(row["id"].rsplit("-", 1)[0], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in by_triplet.values())  # a triplet never straddles
    assert {"train", "test"} == {s for splits in by_triplet.values() for s in splits}

    # new thresholds: the changed stage is refused, then --fresh redoes it from the cache
    write_recipe(tmp_path, RECIPE.format(min_image=0.99))
    refused = cli("run", "recipe.yaml", "--only", "filters", plugins=["testkit"])
    assert refused.returncode == 1 and "changed stage 'filters'" in refused.stderr
    assert "filters.0.options.min_image: -1.0 -> 0.99" in refused.stderr
    again = cli("run", "recipe.yaml", "--only", "filters", "--fresh", plugins=["testkit"])
    assert again.returncode == 0, again.stderr
    summary = manifest(tmp_path)["stages"]["filters"]
    assert summary["stats"]["0-clip"]["model_calls"] == 0
    assert summary["stats"]["0-clip"]["images_cached"] == 48
    assert summary["stats"]["1-dino"]["model_calls"] == 0
    assert summary["rejects"]["clip: min_image"] > 0
