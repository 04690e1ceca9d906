"""Synthetic (before, after) pairs, datasets and run folders for filter, trainer, report and
benchmark tests.

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
                Image.fromarray(array).save(path, compress_level=1)
                paths[f"{role}_path"] = str(path)
            pairs.append({"id": pair_id, "triplet_id": f"{t:06d}", "sample": s,
                          "input": caption, "edit": f"make the {subject} {names[new]}",
                          "output": f"a photo of a {names[new]} {subject}",
                          "settings": {"seed": seed * 1000 + s}, **paths})
    return pairs


def synthetic_run(folder: str | Path, triplets: int, samples: int = 2, size: int = 64,
                  seed: int = 0, held_out: float = 0.05) -> Path:
    """A run folder as captions -> render -> clip filter would leave it, without models:
    render records and images, one filter's records (scores, a reject every few pairs),
    the dataset with its split (`held_out` of the triplets), and a manifest. For report and
    dataset tests at the scale of real runs."""
    import os

    from editkit.run.folder import (
        DATASET,
        RecordStore,
        atomic_write_json,
        filter_folder,
        write_dataset_folder,
    )
    from editkit.run.stages import split_of

    folder = Path(folder)
    images = folder / "render" / "images"
    pairs = synthetic_pairs(images, triplets, samples, size, seed)
    rng = np.random.default_rng(seed + 1)
    render, scored, dataset = [], [], []
    for n, pair in enumerate(pairs):
        record = {k: pair[k] for k in ("id", "triplet_id", "sample", "input", "edit", "output",
                                       "settings")}
        if n % 50 == 49:  # a render failure now and then
            os.unlink(pair["before_path"])
            os.unlink(pair["after_path"])
            render.append({**record, "status": "rejected", "detail": "",
                           "reason": "black image (safety checker or NaN)"})
            continue
        record.update(before=f"images/{pair['id']}-before.png",
                      after=f"images/{pair['id']}-after.png")
        render.append({**record, "status": "kept"})
        scores = {"clip_image": float(rng.uniform(0.5, 1)),
                  "clip_direction": float(rng.uniform(-0.1, 0.5)),
                  "clip_text_before": float(rng.uniform(0.1, 0.35)),
                  "clip_text_after": float(rng.uniform(0.1, 0.35))}
        keep = scores["clip_image"] >= 0.7
        scored.append({"id": pair["id"], "scores": scores,
                       "status": "kept" if keep else "rejected",
                       "criterion": None if keep else "min_image",
                       "reason": None if keep else f"clip image similarity "
                       f"{scores['clip_image']:.3f} < min_image 0.7"})
        if keep:
            dataset.append({"id": pair["id"], "input_image": pair["before_path"],
                            "edited_image": pair["after_path"], "edit_prompt": pair["edit"],
                            "input": pair["input"], "output": pair["output"], "scores": scores,
                            "seed": pair["settings"]["seed"],
                            "split": split_of(pair["triplet_id"], held_out)})
    RecordStore(folder / "render").append(render)
    RecordStore(folder / filter_folder(0, "clip")).append(scored)
    write_dataset_folder(folder / DATASET, dataset, "synthetic: edit pairs")
    kept = sum(r["status"] == "kept" for r in scored)
    atomic_write_json(folder / "manifest.json", {
        "editkit": "test", "recipe": "synthetic",
        "stages": {"render": {"pairs": len(scored), "rejected": len(render) - len(scored)},
                   "filters": {"scored": len(scored), "kept": kept,
                               "rejects": {"clip: min_image": len(scored) - kept}}}})
    return folder


SQUARES = [((200, 30, 30), (30, 30, 200), "blue"), ((30, 160, 30), (220, 220, 40), "yellow"),
           ((240, 240, 240), (20, 20, 20), "black"), ((120, 60, 20), (240, 120, 200), "pink")]


def make_pair_dataset(folder: str | Path, count: int = 4, size: tuple[int, int] = (32, 32),
                      held_out: int = 0, flat: bool = False) -> Path:
    """A dataset folder as the filters stage writes it for trainers: `count` before/after
    pairs (a square the instruction recolours); the last `held_out` rows are split "test".
    `flat` writes the older layout instead (metadata.jsonl beside images/, as users' folders
    and runs of earlier versions have it), with the same rows."""
    import json
    import tempfile

    from PIL import Image, ImageDraw

    from editkit.run.folder import write_dataset_folder

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as staging:
        images = folder / "images" if flat else Path(staging)
        images.mkdir(parents=True, exist_ok=True)
        rows = []
        w, h = size
        for i in range(count):
            old, new, word = SQUARES[i % len(SQUARES)]
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
        if flat:
            (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            return folder
        for row in rows:
            for column in ("input_image", "edited_image"):
                row[column] = images / Path(row[column]).name
        return write_dataset_folder(folder, rows, "squares: edit pairs")
