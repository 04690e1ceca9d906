"""The one training loop every trainer runs, under `accelerate`.

A *task* says what the model is and what a batch's loss is; the loop owns the rest: the
optimizer, schedule, accumulation, mixed precision, EMA, checkpoints and resume, validation,
the memory estimate and the out-of-memory advice, and export. Randomness (noise, timesteps,
crops, dropout) for micro-batch m comes from generators seeded by (seed, m, process), so a
resumed run repeats an uninterrupted one step for step: its final weights are bit-identical to
those of a run never stopped, and to those of a run that never wrote a checkpoint. Work a
resumed run does not repeat (the probe before the first step, validation) leaves the global
random state as it found it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from editkit.errors import RunError
from editkit.training import checkpoint, memory
from editkit.training.ema import EMA
from editkit.training.optim import make_optimizer, make_scheduler

STAT_KEYS = ("steps", "optimizer", "mixed_precision", "last_loss", "memory_estimate_gib",
             "peak_memory_gib", "seconds_per_step")


class Task(Protocol):
    """What a trainer plugs into the loop."""

    def setup(self, accelerator: Any, weight_dtype: Any, log: Callable[[str], None]) -> None: ...
    def model(self) -> Any: ...  # the module whose parameters train (the UNet)
    def trainable(self) -> list[tuple[str, Any]]: ...
    def size(self) -> memory.ModelSize: ...
    def batches(self) -> Any: ...  # a data.BatchPlan
    def loss(self, model: Any, rows: list[int], micro: int, rank: int) -> Any: ...
    def validate(self, folder: Path, step: int, autocast: Any) -> dict[str, float]: ...
    def export(self, folder: Path) -> dict[str, Any]: ...
    def log_scalar(self, name: str, value: float, step: int) -> None: ...
    def close(self) -> None: ...
    # optional: told the step a run resumes at, before any scalar is logged (the TensorBoard
    # writer then drops what the stopped run logged after its last checkpoint)
    # def resume_at(self, step: int) -> None: ...


def seed_for(seed: int, micro: int, rank: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + micro * 7919 + rank * 104_729 + salt) % (2 ** 63)


class Logger:
    """Lines to stderr (main process) and to `train/log.txt`."""

    def __init__(self, folder: Path, main: bool):
        self.path = folder / "log.txt"
        self.main = main

    def __call__(self, line: str) -> None:
        if not self.main:
            return
        print(f"train: {line}", file=sys.stderr, flush=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%H:%M:%S')} {line}\n")


def run(task: Task, options: Any, output_dir: Path, seed: int,
        stats: dict[str, Any], progress: Any = None) -> dict[str, Any]:
    """Train to `options.steps`, resuming from the last checkpoint in `output_dir`.

    `progress` (an `editkit.console.Progress`, the runner's: `TrainJob.progress`) gets a
    "train" task counting steps, with the loss beside it; its time left counts only the
    steps this run has made, not those before a resume."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    output_dir = Path(output_dir)
    result_path = output_dir / "result.json"
    if result_path.exists() and (output_dir / "final" / "editkit_weights.json").exists():
        done = json.loads(result_path.read_text())
        if done.get("steps") == options.steps:  # finished; more `steps` continue training
            stats.update({k: done.get(k) for k in STAT_KEYS})
            return done

    from accelerate.state import AcceleratorState, PartialState

    from editkit.run.distributed import uses_cpu

    # accelerate keeps one AcceleratorState per process; a second training in the same process
    # (the library API, benchmarks, tests) may ask for another precision. The process group
    # (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)

    # matches the runner's process state: several processes without CUDA use gloo on the CPU.
    # The process state first: the precision the accelerator gets depends on its device.
    state = PartialState(cpu=uses_cpu())
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    log = Logger(output_dir, state.is_main_process)
    cpu = state.device.type == "cpu"
    if options.mixed_precision == "fp16" and cpu:
        raise RunError("mixed_precision fp16 needs a GPU", "use mixed_precision: bf16 or no "
                                                            "on the CPU")
    if cpu and options.mixed_precision == "bf16" and not memory.cpu_has_bf16():
        # bf16 on the CPU buys speed only (the weights stay fp32), and without native bf16
        # (AVX-512 BF16 / AMX) it is emulated: the shapes UNet ran 13x slower than in fp32
        log("mixed_precision bf16: this CPU has no native bf16 (it would run several times "
            "slower than fp32), so this run trains in fp32")
        options = options.model_copy(update={"mixed_precision": "no"})
    accelerator = Accelerator(mixed_precision=options.mixed_precision, cpu=uses_cpu())
    device = accelerator.device
    set_seed(seed)
    weight_dtype = ({"fp16": torch.float16, "bf16": torch.bfloat16}[options.mixed_precision]
                    if memory.half_weights(options.mixed_precision, cpu) else torch.float32)
    if cpu and options.mixed_precision == "bf16":
        log("mixed_precision bf16 on the CPU: weights kept in fp32, computed in bf16")
    task.setup(accelerator, weight_dtype, log)

    size = task.size()
    # a task with its own memory planner (the flow editors') gives the estimate itself
    planned = getattr(task, "memory_estimate", None)
    parts = planned(options, cpu) if planned else memory.estimate(size, options, cpu)
    log(memory.describe(parts) + f" on {device}"
        + (f" per process, {accelerator.num_processes} processes"
           if accelerator.num_processes > 1 else ""))
    named = task.trainable()
    params = [p for _, p in named]
    optimizer, optimizer_name = make_optimizer(params, options, str(device), log)
    scheduler = make_scheduler(optimizer, options)
    model = accelerator.prepare_model(task.model())
    optimizer = accelerator.prepare_optimizer(optimizer)
    ema = EMA(named, options.ema_decay, options.ema_on_cpu) if options.ema else None

    step = 0
    history: list[float] = []
    saved = checkpoint.checkpoints(output_dir)
    if saved:
        state = checkpoint.load(saved[-1], params=dict(named), optimizer=optimizer,
                                scheduler=scheduler, ema=ema, scaler=accelerator.scaler,
                                process_index=accelerator.process_index)
        step, history = state["step"], state.get("losses", [])
        log(f"resumed from {saved[-1].name} at step {step} of {options.steps}")
        resume_at = getattr(task, "resume_at", None)
        if resume_at is not None and accelerator.is_main_process:
            resume_at(step)

    plan = task.batches()
    rank, world = accelerator.process_index, accelerator.num_processes
    probe_start = probe(task, model, plan, rank, world, accelerator) if step == 0 else None
    accumulation = options.gradient_accumulation
    model.train()
    first_step = step
    bar = (progress.add("train", total=options.steps, completed=step)
           if progress is not None and accelerator.is_main_process else None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_times: list[float] = []
    while step < options.steps:
        tick = time.perf_counter()
        try:
            total = torch.zeros((), device=device)
            for j in range(accumulation):
                micro = step * accumulation + j
                rows = plan.micro_batch(micro, rank, world)
                sync = (accelerator.no_sync(model) if j < accumulation - 1 and world > 1
                        else nullcontext())
                with sync, accelerator.autocast():
                    loss = task.loss(model, rows, micro, rank)
                    accelerator.backward(loss / accumulation)
                total += loss.detach().float() / accumulation
            accelerator.clip_grad_norm_(params, options.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError:
            if device.type == "cuda":
                available = torch.cuda.get_device_properties(device).total_memory
            else:
                import psutil

                available = psutil.virtual_memory().total
            fitting = getattr(task, "fitting_changes", None)
            fits = (fitting(options, available, cpu) if fitting
                    else memory.fitting_changes(size, options, available, cpu))
            raise RunError(
                f"out of memory at step {step + 1} ({memory.describe(parts)}; {device} has "
                f"{available / memory.GIB:.1f} GiB)",
                "options that should fit: " + "; ".join(fits) if fits else
                "no single option change fits: try a smaller base model or resolution") \
                from None
        step += 1
        if ema is not None:
            ema.update(named, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_times.append(time.perf_counter() - tick)
        mean = accelerator.reduce(total, reduction="mean").item()
        history.append(round(mean, 6))
        if bar is not None:
            bar.update(step, loss=mean)
        if accelerator.is_main_process and (step % 10 == 0 or step == options.steps
                                            or step == first_step + 1):
            log(f"step {step}/{options.steps} loss {mean:.5f} "
                f"lr {scheduler.get_last_lr()[0]:.2e}")
            task.log_scalar("train/loss", mean, step)
        if step % options.checkpoint_every == 0 or step == options.steps:
            checkpoint.save(output_dir, step, params=dict(named), optimizer=optimizer,
                            scheduler=scheduler, ema=ema, scaler=accelerator.scaler,
                            extra={"losses": history, "optimizer": optimizer_name},
                            accelerator=accelerator, keep=options.keep_checkpoints)
        if options.validate_every and step % options.validate_every == 0 \
                and step < options.steps:
            if accelerator.is_main_process:
                with kept_random_state():  # a run resumed after this step does not redo it
                    task.validate(output_dir / "samples", step, accelerator.autocast)
            accelerator.wait_for_everyone()

    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else _rss_peak())
    if ema is not None:
        ema.copy_to(named)
    probe_end = probe(task, model, plan, rank, world, accelerator)
    model.train(False)
    metrics: dict[str, float] = {}
    result: dict[str, Any] = {}
    if accelerator.is_main_process:
        metrics = task.validate(output_dir / "samples", step, accelerator.autocast)
        tmp = output_dir / ".final-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = task.export(tmp)
        (tmp / "editkit_weights.json").write_text(json.dumps(weights, indent=2))
        shutil.rmtree(output_dir / "final", ignore_errors=True)
        os.replace(tmp, output_dir / "final")
        result = {"weights": str(output_dir / "final"), **weights, "steps": step,
                  "optimizer": optimizer_name, "processes": world,
                  "mixed_precision": options.mixed_precision,
                  "first_loss": history[0] if history else None,
                  "probe_loss_start": probe_start, "probe_loss_end": probe_end,
                  "last_loss": history[-1] if history else None,
                  "memory_estimate_gib": round(parts["total"] / memory.GIB, 3),
                  "peak_memory_gib": round(peak / memory.GIB, 3),
                  # the median: the first steps pay for allocation and kernel selection
                  "seconds_per_step": (round(sorted(step_times)[len(step_times) // 2], 4)
                                       if step_times else None),
                  "validation": metrics}
        result_tmp = output_dir / ".result.json.tmp"
        result_tmp.write_text(json.dumps(result, indent=2))
        os.replace(result_tmp, result_path)
        log(f"done: {step} steps, weights in {output_dir / 'final'}")
    accelerator.wait_for_everyone()
    task.close()
    if not accelerator.is_main_process:
        result = json.loads(result_path.read_text())
    stats.update({k: result.get(k) for k in STAT_KEYS})
    return result


def probe(task: Task, model: Any, plan: Any, rank: int, world: int, accelerator: Any,
          batches: int = 4) -> float:
    """Loss on fixed batches with fixed noise: comparable before and after training, unlike
    the noisy per-step loss. In eval mode (no dropout), leaving the model's mode and the
    global random state as they were: a resumed run skips the first probe."""
    import torch

    losses = []
    training = model.training
    model.eval()
    try:
        with kept_random_state(), torch.no_grad(), accelerator.autocast():
            for k in range(batches):
                rows = plan.micro_batch(k, rank, world)
                losses.append(task.loss(model, rows, -1 - k, rank).float())
    finally:
        model.train(training)
    value = accelerator.reduce(torch.stack(losses).mean(), reduction="mean")
    return round(value.item(), 6)


@contextmanager
def kept_random_state() -> Iterator[None]:
    """Python's, NumPy's and torch's global random state (CUDA's too) restored on exit."""
    state = checkpoint.rng_state()
    try:
        yield
    finally:
        checkpoint.set_rng_state(state)


def _rss_peak() -> float:
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
