"""TensorBoard scalars and images under `train/tensorboard/`, plus `samples/metrics.jsonl`
(the report reads that file, so metrics survive without TensorBoard installed).

A resumed run redoes the steps its stopped predecessor made after the last checkpoint:
`resume_at(step)` drops what was logged for them, from TensorBoard (its writer opens with
`purge_step`) and from `metrics.jsonl`, so each step is shown once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


class Tracker:
    def __init__(self, folder: Path, log: Callable[[str], None]):
        self.folder = Path(folder)
        self.log = log
        self._writer: Any = None
        self._missing = False
        self._purge_step: int | None = None

    def resume_at(self, step: int) -> None:
        """The run continues after `step`: what was logged for later steps is dropped."""
        self._purge_step = step + 1
        path = self.folder / "samples" / "metrics.jsonl"
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and _step(line) <= step]
            if len(kept) != len(lines):
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
                os.replace(tmp, path)

    def _tb(self) -> Any:
        if self._writer is None and not self._missing:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._missing = True
                self.log("TensorBoard logs are off: pip install tensorboard "
                         "(metrics still go to samples/metrics.jsonl)")
                return None
            # events of steps from `purge_step` on, in the files of earlier runs, are hidden
            self._writer = SummaryWriter(str(self.folder / "tensorboard"),
                                         purge_step=self._purge_step)
        return self._writer

    def scalar(self, name: str, value: float, step: int) -> None:
        writer = self._tb()
        if writer is not None:
            writer.add_scalar(name, value, step)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.scalar(f"validation/{name}", value, step)
        path = self.folder / "samples" / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")

    def image(self, name: str, image: Any, step: int) -> None:
        import numpy as np

        writer = self._tb()
        if writer is not None:
            writer.add_image(name, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def sample_sheet(self, folder: Any, name: str, images: list[Any], step: int) -> None:
        """`images` (before, edit, target; all one size) side by side, saved as
        `folder/name.png` and logged as `samples/name`."""
        from PIL import Image

        width, height = images[0].size
        sheet = Image.new("RGB", (width * len(images), height))
        for k, im in enumerate(images):
            sheet.paste(im, (k * width, 0))
        sheet.save(Path(folder) / f"{name}.png")
        self.image(f"samples/{name}", sheet, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 0.0
