"""Optimizers (`adamw`, `adamw8bit`, `paged-adamw8bit`) and learning-rate schedules.

bitsandbytes 0.45+ runs its 8-bit optimizers on the CPU too; paging needs CUDA and is
skipped there (said in the log). If bitsandbytes cannot run on the device, the run stops with
a clear error unless the recipe asked for `optimizer_fallback: adamw` — never a silent switch.
"""

from __future__ import annotations

from typing import Any, Callable

from editkit.errors import RunError


def bitsandbytes_problem(device: str) -> str | None:
    """None if an 8-bit AdamW step works on `device`, else why not."""
    try:
        import bitsandbytes as bnb
        import torch

        param = torch.nn.Parameter(torch.ones(64, 64, device=device))
        param.grad = torch.ones_like(param)
        bnb.optim.AdamW8bit([param], lr=1e-3, min_8bit_size=1).step()
        return None
    except Exception as exc:  # import errors, missing native library, unsupported device
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"


def make_optimizer(params: list[Any], options: Any, device: str,
                   log: Callable[[str], None]) -> tuple[Any, str]:
    """(optimizer, the name actually used)."""
    import torch

    name = options.optimizer
    if name != "adamw":
        problem = bitsandbytes_problem(device)
        if problem:
            if options.optimizer_fallback != "adamw":
                raise RunError(f"optimizer {name}: bitsandbytes cannot run on {device} "
                               f"({problem})",
                               "install a bitsandbytes build for this device, or set "
                               "optimizer: adamw, or optimizer_fallback: adamw")
            log(f"optimizer {name}: bitsandbytes cannot run on {device} ({problem}); "
                f"using adamw as optimizer_fallback says")
            name = "adamw"
    kwargs = dict(lr=options.learning_rate, weight_decay=options.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs), name
    import bitsandbytes as bnb

    kwargs["min_8bit_size"] = options.min_8bit_size
    if name == "paged-adamw8bit":
        if not device.startswith("cuda"):
            log("paged-adamw8bit: paging needs CUDA; bitsandbytes runs it unpaged on " + device)
        return bnb.optim.PagedAdamW8bit(params, **kwargs), name
    return bnb.optim.AdamW8bit(params, **kwargs), name


def make_scheduler(optimizer: Any, options: Any) -> Any:
    """A LambdaLR (its state is just the step, so resume restores it exactly)."""
    import math

    import torch

    warm, total = options.warmup_steps, options.steps
    # the decay over the last `decay_steps` only (warmup-stable-decay), else over all after
    # the warm-up
    start = max(warm, total - options.decay_steps) if options.decay_steps else warm

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        progress = min(1.0, max(0, step - start) / max(1, total - start))
        if options.lr_scheduler == "linear":
            return 1.0 - progress
        if options.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
