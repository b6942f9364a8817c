#!/usr/bin/env python3
"""Time `ggufx info` against the tools a user would otherwise run, as whole processes.

    python benchmarks/bench_info.py [--runs N] FILE...

Default files: the two real GGUFs the test suite caches (SmolLM2 Q4_1, Gemma 3 270M Q4_K_M).
Each command runs N times (plus one warm-up) on a warm page cache; the table shows the median wall
time, peak RSS (from wait4) and the ratio to `ggufx info`. Peers: gguf-py's `gguf-dump` (text and
--json) and PyPI's `gguf-inspect`, the fastest Python peer we know.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import CACHE, run, tool  # noqa: E402

DEFAULT_FILES = [CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf", CACHE / "gemma-3-270m-q4_k_m.gguf"]


def run_once(cmd: list[str]) -> tuple[float, int]:
    return run(cmd)


def measure(cmd: list[str], runs: int) -> tuple[float, int]:
    run_once(cmd)  # warm-up: page cache and .pyc files
    samples = [run_once(cmd) for _ in range(runs)]
    return statistics.median(s[0] for s in samples), max(s[1] for s in samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("files", nargs="*", type=Path)
    args = ap.parse_args()
    files = args.files or DEFAULT_FILES
    # byte-compile ggufx as an installed package would be (PYTHONDONTWRITEBYTECODE may be set here)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "ggufx")], check=True)
    ggufx, dump, inspect = tool("ggufx"), tool("gguf-dump"), tool("gguf-inspect")
    rows = []
    for f in files:
        if not f.is_file():
            raise SystemExit(f"{f}: missing (run the test suite once to fetch the real files)")
        cmds = [
            ("ggufx info", [ggufx, "info", str(f)]),
            ("ggufx info --json", [ggufx, "info", "--json", str(f)]),
            ("gguf-inspect", [inspect, "--no-metadata", "--no-tensors", str(f)]),
            ("gguf-inspect (full report)", [inspect, str(f)]),
            ("gguf-dump", [dump, str(f)]),
            ("gguf-dump --json", [dump, "--json", str(f)]),
        ]
        base = None
        for label, cmd in cmds:
            wall, rss = measure(cmd, args.runs)
            base = base or wall
            rows.append((f.name, label, f"{wall * 1000:,.0f}", f"{rss / 2**20:,.1f}", f"{wall / base:,.1f}x"))
    from tabulate import tabulate

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, median of {args.runs} runs\n")
    print(
        tabulate(
            rows,
            headers=["file", "command", "wall ms", "peak RSS MiB", "time vs ggufx info"],
            tablefmt="github",
            colalign=("left", "left", "right", "right", "right"),
        )
    )


if __name__ == "__main__":
    main()
