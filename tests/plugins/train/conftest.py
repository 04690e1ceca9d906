from __future__ import annotations

import json
from pathlib import Path

import pytest

COLOURS = [((200, 30, 30), (30, 30, 200)), ((30, 160, 30), (220, 220, 40)),
           ((240, 240, 240), (20, 20, 20)), ((120, 60, 20), (240, 120, 200))]


def make_pairs(folder: Path, count: int = 4, size: tuple[int, int] = (32, 32),
               held_out: int = 0) -> Path:
    """A dataset folder like the filters stage writes: a shape whose colour the edit changes."""
    from PIL import Image, ImageDraw

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        old, new = COLOURS[i % len(COLOURS)]
        pictures = []
        for colour in (old, new):
            image = Image.new("RGB", size, (90, 110, 130))
            draw = ImageDraw.Draw(image)
            draw.rectangle((size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4),
                           fill=colour)
            pictures.append(image)
        for role, image in zip(("before", "after"), pictures):
            image.save(images / f"{i:03d}-{role}.png")
        rows.append({"id": f"{i:06d}-0", "input_image": f"images/{i:03d}-before.png",
                     "edited_image": f"images/{i:03d}-after.png",
                     "edit_prompt": f"make the square {['blue', 'yellow', 'black', 'purple'][i % 4]}",
                     "input": "a photo of a red square", "output": "a photo of a blue square",
                     "seed": i, "scores": {},
                     "split": "test" if i >= count - held_out else "train"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture
def pairs(tmp_path) -> Path:
    return make_pairs(tmp_path / "dataset")
