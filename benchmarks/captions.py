"""Caption throughput: the LLM generators against a local server that answers in 200 ms.

For 1,000 triplets at `per_request` triplets per request and `concurrency` requests in
flight, the least time possible is ceil(requests / concurrency) x 200 ms. The whole captions
stage (real client, prompts, parsing, checks, atomic shards) must stay within 1.2x of that.
The baseline row is the plain `openai` client in a thread pool, with no editkit around it.

    python benchmarks/captions.py [--count 1000] [--delay 0.2] [--no-gate]

It exits 1 when the worst ratio is over 1.2x, unless --no-gate (the test suite runs it that
way, small, to check that the script works: timings are not asserted on shared CI machines).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from editkit.run.recipe import load_recipe
from editkit.run.runner import run_recipe
from editkit.testing.llmserver import ServerProcess


def stage_time(use: str, count: int, options: dict, folder: Path) -> tuple[float, int, int]:
    path = folder / f"{use}-{options['concurrency']}.yaml"
    path.write_text(yaml.safe_dump({"name": "bench", "output": str(folder / path.stem),
                                    "captions": {"use": use, "count": count,
                                                 "options": options}}))
    recipe = load_recipe(path)
    start = time.perf_counter()
    summary = run_recipe(recipe, progress=False)["captions"]
    return time.perf_counter() - start, summary["kept"], summary["stats"]["llm"]["requests"]


def plain_client_time(url: str, requests: int, concurrency: int, per_request: int) -> float:
    from openai import OpenAI

    client = OpenAI(api_key="sk-bench", base_url=url + "/v1", max_retries=0)
    message = [{"role": "user", "content": f"Write {per_request} new triplets"}]

    def one(_: int) -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=message)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--per-request", type=int, default=10)
    parser.add_argument("--no-gate", action="store_true",
                        help="print the table but exit 0 whatever the ratios")
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    per = args.per_request
    requests = math.ceil(args.count / per)
    rows = []
    # the server runs in its own process, as a real one would: in this one it would take
    # the GIL from the client being measured
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(delay=args.delay) as url:
        for use, concurrency in (("openai", 4), ("openai", 8), ("openai", 16), ("ollama", 8)):
            theory = math.ceil(requests / concurrency) * args.delay
            base = plain_client_time(url, requests, concurrency, per) \
                if use == "openai" else float("nan")
            options = {"per_request": per, "concurrency": concurrency,
                       "domain_pack": "streetview"}
            options.update({"base_url": url + "/v1"} if use == "openai" else {"host": url})
            seconds, kept, sent = stage_time(use, args.count, options, Path(tmp))
            rows.append((use, concurrency, kept, sent, theory, base, seconds))
    print(f"{args.count} triplets, {per} per request, server answers in "
          f"{args.delay * 1000:.0f} ms")
    header = ("generator", "conc", "kept", "requests", "theory s", "plain client s",
              "editkit s", "editkit/theory", "editkit/plain")
    print("  ".join(f"{h:>14}" for h in header))
    worst = 0.0
    for use, conc, kept, sent, theory, base, seconds in rows:
        ratio = seconds / theory
        worst = max(worst, ratio)
        print("  ".join(f"{c:>14}" for c in (
            use, conc, kept, sent, f"{theory:.2f}", f"{base:.2f}", f"{seconds:.2f}",
            f"{ratio:.2f}x", f"{seconds / base:.2f}x" if base == base else "-")))
    print(f"worst editkit/theory: {worst:.2f}x (must be <= 1.20x)")
    return 0 if worst <= 1.2 or args.no_gate else 1


if __name__ == "__main__":
    sys.exit(main())
