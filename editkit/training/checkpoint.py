"""Checkpoints: written to a temporary folder and renamed into place, the last N kept.

A checkpoint holds the trained parameters (safetensors), the optimizer and scheduler state,
the EMA weights, fp16's loss scale, the step, and every process's random state — everything
needed for a resumed run to continue exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

PREFIX = "step-"


def checkpoints(folder: Path) -> list[Path]:
    root = Path(folder) / "checkpoints"
    if not root.exists():
        return []
    done = [p for p in root.iterdir()
            if p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, step: int, *, params: dict[str, Any], optimizer: Any, scheduler: Any,
         ema: Any, extra: dict[str, Any], accelerator: Any, keep: int,
         scaler: Any = None) -> Path:
    """Every process writes its random state; the main process writes the rest, then renames
    the temporary folder into place and prunes old checkpoints."""
    import torch
    from safetensors.torch import save_file

    root = Path(folder) / "checkpoints"
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in params.items()},
                  tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if ema is not None:
            save_file(ema.state_dict(), tmp / "ema.safetensors")
        if scaler is not None:  # mixed_precision fp16: the loss scale and its growth count
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(path: Path, *, params: dict[str, Any], optimizer: Any, scheduler: Any, ema: Any,
         process_index: int, scaler: Any = None) -> dict[str, Any]:
    """Restore a checkpoint into live objects; returns its state.json."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(path / "trainable.safetensors")
    missing = sorted(set(params) - set(weights))
    if missing:
        from editkit.errors import RunError

        raise RunError(f"checkpoint {path} does not match the model ({len(missing)} trained "
                       f"weights missing, e.g. {missing[0]})",
                       "the recipe's model or LoRA settings changed: start with --fresh")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name].to(param))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    if ema is not None and (path / "ema.safetensors").exists():
        ema.load_state_dict(load_file(path / "ema.safetensors"))
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=False))
    rng = path / f"rng-{process_index}.pt"
    if rng.exists():
        set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((path / "state.json").read_text())
