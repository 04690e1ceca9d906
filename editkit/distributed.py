"""Several processes on one run (`accelerate launch -m editkit run ...`).

The main process owns the run folder (lock, recipe, manifest, stage state) and runs the
stages that are not sharded; every process renders its share. Results and failures are
shared through the process group, so one process failing stops the others with a message
instead of leaving them waiting at a barrier. With one process nothing here talks to
torch.distributed, and the single-process run is unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from .errors import EditkitError, RunError

T = TypeVar("T")


@dataclass
class Processes:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def on_main(self, work: Callable[[], T]) -> T:
        """Run `work` on the main process; every process gets its result (or its error)."""
        if self.world == 1:
            return work()
        import torch.distributed as dist

        result: Any = None
        failure: Exception | None = None
        if self.is_main:
            try:
                result = work()
            except Exception as exc:  # shared below, then raised here as it was
                failure = exc
        box = [(result, _describe(failure))]
        dist.broadcast_object_list(box, src=0)
        if failure is not None:
            raise failure
        result, problem = box[0]
        if problem is not None:
            raise RunError(f"the main process failed: {problem}", "see its message above")
        return result

    def everywhere(self, work: Callable[[], None]) -> None:
        """Run `work` on every process and wait for all; any failure fails them all."""
        if self.world == 1:
            work()
            return
        import torch.distributed as dist

        failure: Exception | None = None
        try:
            work()
        except Exception as exc:
            failure = exc
        problems: list[Any] = [None] * self.world
        dist.all_gather_object(problems, _describe(failure))
        if failure is not None:
            raise failure
        for rank, problem in enumerate(problems):
            if problem is not None:
                raise RunError(f"process {rank} failed: {problem}", "see its message above")


def _describe(exc: Exception | None) -> str | None:
    if exc is None:
        return None
    return str(exc) if isinstance(exc, EditkitError) else f"{type(exc).__name__}: {exc}"


def processes() -> Processes:
    """This process's place among those `accelerate launch` (or torchrun) started."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Processes()
    import torch
    from accelerate import PartialState

    # without cpu=True accelerate leaves CPU-only processes unconnected (gloo is its CPU backend)
    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(rank=state.process_index, world=state.num_processes)
