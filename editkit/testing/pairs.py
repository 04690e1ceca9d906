"""Synthetic (before, after) pairs and run folders for filter, report and benchmark tests.

The images look like renders rather than noise (a smooth gradient scene with a few shapes, one
of which the edit recolours), so thumbnails and compression behave as they do on real runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

COLOURS = {"red": (200, 40, 40), "blue": (40, 60, 200), "green": (40, 160, 60),
           "yellow": (220, 200, 40), "white": (235, 235, 235), "black": (20, 20, 20)}
SUBJECTS = ["car", "house", "tree", "bench", "bicycle", "lamp post"]


def scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A gradient background with shapes, and the box of the shape an edit will change."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    image = (top * (1 - y[..., None]) + bottom * y[..., None] + 20 * x[..., None]).clip(0, 255)
    for _ in range(3):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        w, h = rng.integers(size // 8, size // 3, 2)
        image[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    x0, y0 = rng.integers(size // 8, size // 2, 2)
    box = (int(x0), int(y0), int(x0 + size // 3), int(y0 + size // 3))
    image += rng.normal(0, 3, image.shape)
    return image.clip(0, 255).astype(np.uint8), box


def synthetic_pairs(folder: str | Path, triplets: int, samples: int = 2, size: int = 64,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Pair records as the filters stage hands them over (`before_path`, `after_path`,
    captions, `triplet_id`), with PNGs written under `folder`."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    pairs = []
    for t in range(triplets):
        subject = SUBJECTS[t % len(SUBJECTS)]
        old, new = rng.choice(len(names), 2, replace=False)
        caption = f"a photo of a {names[old]} {subject}"
        for s in range(samples):
            before, (x0, y0, x1, y1) = scene(rng, size)
            after = before.copy()
            after[y0:y1, x0:x1] = COLOURS[names[new]]
            pair_id = f"{t:06d}-{s}"
            paths = {}
            for role, array in (("before", before), ("after", after)):
                path = folder / f"{pair_id}-{role}.png"
                Image.fromarray(array).save(path)
                paths[f"{role}_path"] = str(path)
            pairs.append({"id": pair_id, "triplet_id": f"{t:06d}", "sample": s,
                          "input": caption, "edit": f"make the {subject} {names[new]}",
                          "output": f"a photo of a {names[new]} {subject}",
                          "settings": {"seed": seed * 1000 + s}, **paths})
    return pairs
