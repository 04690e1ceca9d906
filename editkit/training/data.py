"""Paired training data: a dataset's rows, aspect buckets, identical crops and flips.

The batch for micro-step `m` is a pure function of `(seed, m)`, so a resumed run sees exactly
the batches an uninterrupted run sees, and every process of a data-parallel run takes its own
slice of one global batch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editkit.errors import InputError
from editkit.run.folder import read_dataset

COLUMNS = ("input_image", "edit_prompt", "edited_image")


@dataclass
class Row:
    id: str
    prompt: str
    input_image: Path
    edited_image: Path | None  # None for single-image data (DreamBooth)
    caption: str = ""  # the input caption, when the dataset has one
    output: str = ""  # the output caption, when the dataset has one
    size: tuple[int, int] = (0, 0)  # (width, height) of the input image


def read_pair_rows(folder: Path) -> tuple[list[Row], list[Row], list[str]]:
    """(train rows, held-out rows, problems) of a dataset in either layout (`editkit.run.folder`
    reads it), or of a run folder's. Rows whose `split` is "test" are held out."""
    from PIL import Image

    data = read_dataset(folder, required=COLUMNS, fix=(
        "point dataset= at a folder with metadata.jsonl (columns input_image, edit_prompt, "
        "edited_image), or run render and filters"))
    train: list[Row] = []
    held: list[Row] = []
    problems = list(data.problems)
    for item in data.rows:
        row = Row(id=str(item["id"]), prompt=str(item["edit_prompt"]),
                  input_image=item["input_image"], edited_image=item["edited_image"],
                  caption=str(item.get("input") or ""), output=str(item.get("output") or ""))
        try:
            with Image.open(row.input_image) as a, Image.open(row.edited_image) as b:
                row.size = a.size
                if a.size != b.size:
                    problems.append(f"{row.id}: before {a.size} and after {b.size} differ")
                    continue
        except OSError as exc:
            problems.append(f"{row.id}: unreadable image ({exc})")
            continue
        (held if item["split"] == "test" else train).append(row)
    if not train:
        detail = f" ({'; '.join(problems[:3])})" if problems else ""
        raise InputError(f"dataset {data.folder} has no usable training rows{detail}",
                         "check its metadata.jsonl and the image files it names")
    return train, held, problems


def make_buckets(resolution: int, multiple: int, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) sizes of about resolution² pixels, sides a multiple of `multiple`."""
    area = resolution * resolution
    out = set()
    side = multiple
    while side <= resolution * max_ratio:
        other = int(area / side) // multiple * multiple
        if other >= multiple and max(side, other) / min(side, other) <= max_ratio:
            out.add((side, other))
        side += multiple
    out.add((resolution // multiple * multiple,) * 2)
    return sorted(out)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


@dataclass(frozen=True)
class Crop:
    """Where a bucket's crop comes from: the image scaled to `scaled` (width, height), the
    crop's top-left corner there, and whether it is then mirrored."""

    scaled: tuple[int, int]
    left: int
    top: int
    mirror: bool

    def time_ids(self, original: tuple[int, int], bucket: tuple[int, int]
                 ) -> tuple[int, int, int, int, int, int]:
        """SDXL's size and crop conditioning: (original height, width; the crop's top, left as
        the trained image sees it, from the right edge when mirrored; target height, width).
        `original` and `bucket` are (width, height)."""
        left = self.scaled[0] - bucket[0] - self.left if self.mirror else self.left
        return (original[1], original[0], self.top, left, bucket[1], bucket[0])


def plan_crop(size: tuple[int, int], bucket: tuple[int, int], rng: random.Random | None,
              flip: bool) -> Crop:
    """The crop `paired_crop` takes of an image of `size` (width, height)."""
    width, height = size
    scale = max(bucket[0] / width, bucket[1] / height)
    scaled = (max(bucket[0], round(width * scale)), max(bucket[1], round(height * scale)))
    spare_x, spare_y = scaled[0] - bucket[0], scaled[1] - bucket[1]
    if rng is None:
        return Crop(scaled, spare_x // 2, spare_y // 2, False)
    left, top = rng.randint(0, spare_x), rng.randint(0, spare_y)
    return Crop(scaled, left, top, flip and rng.random() < 0.5)


def paired_crop(images: list[Any], bucket: tuple[int, int], rng: random.Random | None,
                flip: bool, crop: Crop | None = None) -> list[Any]:
    """Scale to cover the bucket, then one crop and one flip shared by all images (`crop`,
    else one `plan_crop` draws). `rng` None gives a centred crop and no flip (used for cached
    latents)."""
    from PIL import Image

    if crop is None:
        crop = plan_crop(images[0].size, bucket, rng, flip)
    out = []
    for image in images:
        image = image.convert("RGB").resize(crop.scaled, Image.Resampling.BICUBIC)
        image = image.crop((crop.left, crop.top, crop.left + bucket[0], crop.top + bucket[1]))
        out.append(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if crop.mirror else image)
    return out


class BatchPlan:
    """Which rows form global micro-batch m: rows shuffled per epoch, grouped by bucket, each
    group cut into batches of `global_batch` (a short last batch is filled from its bucket)."""

    def __init__(self, rows: list[Row], buckets: list[tuple[int, int]] | None,
                 global_batch: int, seed: int):
        self.rows = rows
        self.global_batch = global_batch
        self.seed = seed
        self.bucket_of = (None if buckets is None
                          else [nearest_bucket(r.size, buckets) for r in rows])
        self._epochs: dict[int, list[list[int]]] = {}
        self._per_epoch = len(self._epoch(0))

    def bucket(self, index: int, square: tuple[int, int]) -> tuple[int, int]:
        return square if self.bucket_of is None else self.bucket_of[index]

    def _epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            rng = random.Random(f"{self.seed}-epoch-{epoch}")
            order = list(range(len(self.rows)))
            rng.shuffle(order)
            groups: dict[Any, list[int]] = {}
            for i in order:
                key = None if self.bucket_of is None else self.bucket_of[i]
                groups.setdefault(key, []).append(i)
            batches = []
            for members in groups.values():
                for start in range(0, len(members), self.global_batch):
                    batch = members[start:start + self.global_batch]
                    k = 0
                    while len(batch) < self.global_batch:
                        batch.append(members[k % len(members)])
                        k += 1
                    batches.append(batch)
            rng.shuffle(batches)
            self._epochs = {epoch: batches}  # keep one epoch in memory
        return self._epochs[epoch]

    def micro_batch(self, m: int, rank: int = 0, world: int = 1) -> list[int]:
        per_epoch = self._per_epoch
        batch = self._epoch(m // per_epoch)[m % per_epoch]
        return batch[rank::world]


def to_tensor(image: Any) -> Any:
    """A PIL image as a (3, H, W) float tensor in [-1, 1], as the VAEs take it."""
    import numpy as np
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)
