#!/usr/bin/env python3
"""How long `ggufx info`, `mem`, `mem --fit` and `report` take, as whole processes, before and after.

    python benchmarks/bench_speed.py [--runs N] [--before /work/main] [--only info,mem,fit,report]

One table per command, one row per model and code: "after" is this checkout, "before" another
checkout of ggufx (default: /work/main, the commit this branch started from), both run by this
interpreter with their own tree first on sys.path and their own byte-code cache
(benchmarks/.data/pycache/<label>, as an installed package has one), so the two differ only in their
code. `info` is paired with PyPI's `gguf-inspect` (its header summary, `--no-metadata --no-tensors`),
the fastest Python peer we know. Models (benchmarks/bench_models.py): the Qwen3.6 27B hybrid replica
of the recorded runs (64 layers), a 94-layer MoE of Qwen3-235B-A22B's shape, Gemma 3 270M.

Each command runs N times after a warm-up (page cache and byte code warm); the table gives the
median wall time, the median CPU time (user + system, from wait4: steadier than wall time on a busy
machine) and the largest peak RSS. `mem` is `-c 32768 --gpus 24GiB`; `fit` is `mem --fit 24GiB`
(every cache type, llama.cpp's answer); `report` writes the HTML page (memory at several contexts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_models import models  # noqa: E402
from common import tool  # noqa: E402

LAUNCH = "import sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'ggufx'; from ggufx.cli import main; main()"


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak RSS bytes of one run, which must answer (exit 0 or 1)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) not in (0, 1):  # 1: mem --gpus answered "does not fit"
        err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def measure(cmd: list[str], env: dict[str, str], runs: int) -> tuple[float, float, int]:
    run(cmd, env)  # warm-up: page cache, byte code
    samples = [run(cmd, env) for _ in range(runs)]
    return (
        statistics.median(s[0] for s in samples),
        statistics.median(s[1] for s in samples),
        max(s[2] for s in samples),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--before",
        type=Path,
        default=Path("/work/main"),
        help="the ggufx tree to compare with (a checkout, or `git archive REV ggufx | tar -x -C DIR`)",
    )
    ap.add_argument("--only", default="info,mem,fit,report")
    args = ap.parse_args()
    paths = models()
    out = Path(tempfile.mkdtemp(prefix="ggufx-bench-"))
    codes = {"after": ROOT}
    if (args.before / "ggufx" / "cli").is_dir():
        codes["before"] = args.before
    env0 = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def ggufx(label: str) -> tuple[list[str], dict[str, str]]:
        env = env0 | {"PYTHONPYCACHEPREFIX": str(HERE / ".data" / "pycache" / label)}
        return [sys.executable, "-c", LAUNCH, str(codes[label])], env

    commands = {
        "info": lambda f, n: ["info", str(f)],
        "mem": lambda f, n: ["mem", str(f), "-c", "32768", "--gpus", "24GiB"],
        "fit": lambda f, n: ["mem", str(f), "--fit", "24GiB"],
        "report": lambda f, n: ["report", str(f), "-o", str(out / f"{n}.html")],
    }
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, median of {args.runs} runs after a warm-up")
    for label, path in codes.items():
        rev = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        print(f"{label}: {path}" + (f" (commit {rev.stdout.strip()})" if rev.returncode == 0 else ""))
    print()
    for name in args.only.split(","):
        rows = []
        for model, path in paths.items():
            base = None
            for label in ("before", "after"):
                if label not in codes:
                    continue
                cmd, env = ggufx(label)
                wall, cpu, rss = measure(cmd + commands[name](path, model), env, args.runs)
                ratio = f"{base / cpu:.1f}x" if base else ""  # CPU time: steadier on a shared machine
                base = base or cpu
                rows.append((model, f"ggufx {name} ({label})", wall, cpu, rss, ratio))
            if name == "info":
                inspect = tool("gguf-inspect")
                wall, cpu, rss = measure([inspect, "--no-metadata", "--no-tensors", str(path)], env0, args.runs)
                rows.append((model, "gguf-inspect", wall, cpu, rss, f"ggufx (after) {cpu / rows[-1][3]:.1f}x faster"))
        print(f"## {name}\n")
        print("| model | command | wall ms | CPU ms | peak RSS MiB | speed-up |")
        print("|---|---|---:|---:|---:|---|")
        for model, label, wall, cpu, rss, note in rows:
            print(f"| {model} | {label} | {wall * 1000:,.0f} | {cpu * 1000:,.0f} | {rss / 2**20:,.1f} | {note} |")
        print()


if __name__ == "__main__":
    main()
