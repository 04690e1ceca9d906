"""Pairs scored per second by the clip and dino filters: batched against one image per model
call (the baseline, measured in the same run), and a re-filter served from the cache.

    python benchmarks/filters.py [--pairs 128] [--size 256] [--batch-size 32]
        [--clip tiny-clip] [--dino tiny-dinov2] [--device auto]

Pass real models (--clip openai/clip-vit-large-patch14 --dino facebook/dinov2-base) where
they are downloaded; the built-in tiny ones measure the overheads around the model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any


def pairs_per_second(cls: Any, options: dict[str, Any], pairs: list[dict[str, Any]],
                     cache: Path | None) -> tuple[float, dict[str, Any]]:
    from editkit.plugin.kinds import FilterJob

    plugin = cls(cls.Options(**options))
    # load the model outside the clock: both modes pay it once
    warm = FilterJob(pairs=pairs[:2])
    list(plugin.score(warm))
    job = FilterJob(pairs=pairs, cache_dir=cache)
    start = time.perf_counter()
    list(plugin.score(job))
    return len(pairs) / (time.perf_counter() - start), job.stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--clip", default="tiny-clip")
    parser.add_argument("--dino", default="tiny-dinov2")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from editkit.builtins.clip import ClipFilter
    from editkit.builtins.dino import DinoFilter
    from editkit.models import pick_device
    from editkit.testing.pairs import synthetic_pairs

    passing = dict(min_text=-1, min_direction=-1, min_image=-1, keep_top=None)
    filters = [("clip", ClipFilter, {"model": args.clip, **passing}),
               ("dino", DinoFilter, {"model": args.dino, "min_similarity": -1})]
    with tempfile.TemporaryDirectory() as tmp:
        pairs = synthetic_pairs(Path(tmp) / "img", args.pairs // 2, samples=2, size=args.size)
        print(f"{len(pairs)} pairs of {args.size}x{args.size}, device "
              f"{pick_device(args.device)}, batch {args.batch_size}\n")
        print("| filter | mode | pairs/s | x one at a time |\n|---|---|---:|---:|")
        for name, cls, options in filters:
            options = {**options, "device": args.device}
            cache = Path(tmp) / f"cache-{name}"
            base, _ = pairs_per_second(cls, {**options, "batch_size": 1}, pairs, None)
            batched, _ = pairs_per_second(cls, {**options, "batch_size": args.batch_size},
                                          pairs, cache)
            cached, stats = pairs_per_second(cls, {**options, "batch_size": args.batch_size},
                                             pairs, cache)
            assert stats["model_calls"] == 0, stats
            for mode, value in (("one at a time (baseline)", base),
                                (f"batched ({args.batch_size})", batched),
                                ("re-filter from cache", cached)):
                print(f"| {name} | {mode} | {value:.1f} | {value / base:.2f} |")


if __name__ == "__main__":
    main()
