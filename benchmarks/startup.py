"""How long the light commands take to start, against a bare Python start in the same run.

    python benchmarks/startup.py [--repeat 10]

`editkit --help`, `editkit plugins` and `editkit recipes validate` must never import torch
and must answer in under half a second on a two-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def seconds(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    editkit = [sys.executable, "-m", "editkit"]
    cases = {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "editkit --help": editkit + ["--help"],
        "editkit plugins": editkit + ["plugins"],
        "editkit recipes validate quickstart": editkit + ["recipes", "validate",
                                                          str(ROOT / "recipes/quickstart.yaml")],
    }
    results = {name: seconds(argv, args.repeat) for name, argv in cases.items()}
    base = results["python -c pass (baseline)"]
    print(f"{'command':40} {'median s':>9} {'x baseline':>11}")
    for name, value in results.items():
        print(f"{name:40} {value:9.3f} {value / base:11.1f}")


if __name__ == "__main__":
    main()
