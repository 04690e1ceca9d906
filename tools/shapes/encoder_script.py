"""The command line the world's encoder training scripts share: train (unless --eval-only),
then print the held-out tables."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable


def run(doc: str, train: Callable[..., dict], report: Callable[[str, int], None],
        steps: int, batch: int, captions: bool = False) -> None:
    """Parse the arguments, train on one thread, save to OUT and report on held-out scenes;
    `captions`: the model reads captions, so --unsaid is offered."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=4000, help="training pairs")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch", type=int, default=batch, help="pairs per step")
    parser.add_argument("--eval-count", type=int, default=200, help="held-out triplets")
    parser.add_argument("--eval-only", action="store_true")
    if captions:
        parser.add_argument("--unsaid", type=float, default=0.0,
                            help="leave size, place and background out of training captions "
                                 "at this rate, as `use: shapes` with `unsaid` may")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if not args.eval_only:
        extra = {"unsaid": args.unsaid} if captions else {}
        print(train(args.out, args.seed, args.pairs, args.steps, args.batch, **extra))
    report(str(args.out), args.eval_count)


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """A plain fixed-width table (numbers to three decimals)."""
    cells = [header] + [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
                        for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(title)
    for row in cells:
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))


def start(out: Path, seed: int, threads: int) -> tuple[Path, float]:
    """One thread (the other core trains the world's text-to-image model), a seeded torch, the
    output folder; returns (folder, start time)."""
    import time

    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out, time.time()


def optimiser(model: Any, lr: float, weight_decay: float, steps: int) -> tuple[Any, Any]:
    """AdamW with a linear warm-up over the first twentieth, then a linear decay to 5%."""
    import torch

    adam = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    return adam, torch.optim.lr_scheduler.LambdaLR(
        adam, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / steps))


def update(adam: Any, schedule: Any, loss: Any) -> None:
    """One optimiser step on `loss`, then the schedule's."""
    adam.zero_grad(set_to_none=True)
    loss.backward()
    adam.step()
    schedule.step()


def pixel_values(processor: Any, images: list[Any], chunk: int = 512) -> Any:
    """The processor's own normalisation, so training sees what the filters will feed in."""
    import torch

    return torch.cat([processor(images=images[i:i + chunk], return_tensors="pt").pixel_values
                      for i in range(0, len(images), chunk)])


def finish(out: Path, model: Any, processor: Any, settings: dict, started: float) -> dict:
    """Save model and processor (safetensors) and `train_stats.json`: the settings, seconds
    and bytes on disk."""
    import json
    import time

    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    stats = {**settings, "seconds": round(time.time() - started, 1),
             "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}
    (out / "train_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats
