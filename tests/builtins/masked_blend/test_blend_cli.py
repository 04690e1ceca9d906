"""masked-blend through the real `editkit` command, on template captions and tiny-sd."""

import json

import numpy as np
from PIL import Image

RECIPE = """
name: blend-tiny
output: runs/blend
seed: 1
captions:
  use: template
  count: 2
  options: {subjects: [car, house, tree], attributes: [red, blue, green]}
render:
  use: masked-blend
  options: {model: tiny-sd, samples: 2, steps: 3, width: 32, height: 32, mask: region,
            feather: 1.0, scheduler: dpm++}
"""


def test_recipe_saves_before_after_and_mask_with_the_source_kept_outside(cli, tmp_path):
    result = cli("run", write_recipe(tmp_path, RECIPE))
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "runs/blend/render"
    records = [json.loads(line) for shard in sorted(folder.glob("shard-*.jsonl"))
               for line in shard.read_text().splitlines()]
    assert len(records) == 4 and all(r["status"] == "kept" for r in records)
    for r in records:
        assert r["settings"]["mask"] == "foreground" and r["settings"]["scheduler"] == "dpm++"
        before, after, mask = (np.asarray(Image.open(folder / r[k]).convert("RGB"), dtype=int)
                               for k in ("before", "after", "mask"))
        outside = mask[..., 0] == 0
        assert np.array_equal(before[outside], after[outside])


def write_recipe(folder, text):
    path = folder / "recipe.yaml"
    path.write_text(text)
    return path
