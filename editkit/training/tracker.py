"""TensorBoard scalars and images under `train/tensorboard/`, plus `samples/metrics.jsonl`
(the report reads that file, so metrics survive without TensorBoard installed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


class Tracker:
    def __init__(self, folder: Path, log: Callable[[str], None]):
        self.folder = Path(folder)
        self.log = log
        self._writer: Any = None
        self._missing = False

    def _tb(self) -> Any:
        if self._writer is None and not self._missing:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._missing = True
                self.log("TensorBoard logs are off: pip install tensorboard "
                         "(metrics still go to samples/metrics.jsonl)")
                return None
            self._writer = SummaryWriter(str(self.folder / "tensorboard"))
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

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
