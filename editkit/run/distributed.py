"""Several processes on one run (`accelerate launch -m editkit run ...`).

The main process owns the run folder's bookkeeping (lock, recipe, manifest, stage state);
every process renders its share of the records and enters the trainer. With one process this
is all free: no process group is created and torch is not imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def writer(self) -> str:
        """Tag in shard names so processes never pick the same file name."""
        return f"r{self.rank:02d}-" if self.world > 1 else ""

    def barrier(self) -> None:
        if self.world > 1:
            state().wait_for_everyone()


def current() -> Dist:
    """The process's rank and the number of processes, from the launcher's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist()
    return Dist(rank=state().process_index, world=state().num_processes)


def state() -> Any:
    """accelerate's process state, set up once (gloo on CPU, nccl on CUDA).

    Without CUDA, accelerate treats a multi-process launch as one process unless told to
    use the CPU: editkit tells it, so `accelerate launch --multi_gpu --num_processes 2`
    also runs on a CPU-only machine. Trainers must build their Accelerator to match
    (`Accelerator(cpu=uses_cpu())`).
    """
    from accelerate import PartialState

    return PartialState(cpu=uses_cpu())


def uses_cpu() -> bool:
    import torch

    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or \
        not torch.cuda.is_available()
