"""A small paired dataset (the layout the filters stage writes) for trainer tests and
benchmarks: a coloured square whose colour the instruction changes."""

from __future__ import annotations

import json
from pathlib import Path

COLOURS = [((200, 30, 30), (30, 30, 200), "blue"), ((30, 160, 30), (220, 220, 40), "yellow"),
           ((240, 240, 240), (20, 20, 20), "black"), ((120, 60, 20), (240, 120, 200), "pink")]


def make_pair_dataset(folder: str | Path, count: int = 4, size: tuple[int, int] = (32, 32),
                      held_out: int = 0) -> Path:
    """`count` before/after pairs with metadata.jsonl; the last `held_out` rows are split
    "test"."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    w, h = size
    for i in range(count):
        old, new, word = COLOURS[i % len(COLOURS)]
        for role, colour in (("before", old), ("after", new)):
            image = Image.new("RGB", size, (90, 110, 130))
            ImageDraw.Draw(image).rectangle((w // 4, h // 4, 3 * w // 4, 3 * h // 4),
                                            fill=colour)
            image.save(images / f"{i:03d}-{role}.png")
        rows.append({"id": f"{i:06d}-0", "input_image": f"images/{i:03d}-before.png",
                     "edited_image": f"images/{i:03d}-after.png",
                     "edit_prompt": f"make the square {word}",
                     "input": "a photo of a square", "output": f"a photo of a {word} square",
                     "seed": i, "scores": {},
                     "split": "test" if i >= count - held_out else "train"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder
