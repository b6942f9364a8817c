#!/usr/bin/env python3
"""`ggufx mem --fit` against llama.cpp's own `llama-fit-params`, run for run.

    python benchmarks/bench_fit_params.py [--runs N]

llama-fit-params' side is what the recordings measured: every `fit-*` run of
tests/fixtures/llamacpp-logs (one GPU: an H100 or H200 of the GPU machine, 16 cores) has its whole-process
wall time in runs.json (`seconds`: CUDA's start, the model's header, llama.cpp's dry runs on the GPU). ggufx's
side runs here, on the same header-only model, as a user would ask the same question:
`ggufx mem MODEL --fit FREE -fitt T [-c N] [-fitc N]`, FREE being the card's free memory llama.cpp saw. ggufx
answers more than llama-fit-params does (llama.cpp's `-c`/`-ngl`/`-ot`, and also the largest context for each
of three KV cache types). Medians of N whole-process runs after a warm-up (wall and CPU time). The machines
differ (the table says which); llama-fit-params needs a GPU, ggufx does not. FREE is given in bytes, as
measured on the H100 (tests/test_fit_logs.py MEASURED_FREE).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_memory import LOGS, hole_models  # noqa: E402
from common import tool  # noqa: E402


def card_of(rid: str) -> tuple[str, int]:
    """The card a recorded run used and its free MiB as llama.cpp saw it before the run (the
    recording session's runs without fit print it: tests/test_fit_logs.py card_free)."""
    sys.path.insert(0, str(ROOT))
    from tests.test_fit_logs import card_free, machine_of

    free = card_free(machine_of(rid))  # bytes (the H100's measured to the byte, else the printed MiB)
    return ("H200" if free > 100_000 << 20 else "H100"), free


def timed(cmd: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    runs = json.loads((LOGS / "runs.json").read_text())
    fits = sorted(rid for rid, r in runs.items() if r["tool"] == "fit" and r["gpus"] == "1" and r["exit_status"] == 0)
    models = hole_models()
    rows = []
    for rid in fits:
        argv = shlex.split(runs[rid]["args"].replace("@", ""))
        opts = dict(zip(argv[::2], argv[1::2], strict=False))
        name = opts.pop("-m")
        if name not in models or "--fit-print" in opts:
            continue
        card, free = card_of(rid)
        cmd = [tool("ggufx"), "mem", str(models[name]), "--fit", str(free)]
        for k in ("-c", "-fitt", "-fitc"):
            if k in opts:
                cmd += [k, opts[k]]
        timed(cmd)  # warm-up: page cache, byte code
        samples = [timed(cmd) for _ in range(a.runs)]
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        theirs = runs[rid]["seconds"]
        rows.append((rid, card, theirs, wall, cpu))
        print(f"{rid}: llama-fit-params {theirs:.1f} s, ggufx {wall:.2f} s", file=sys.stderr)
    print(f"`ggufx mem --fit` (here: {os.cpu_count()} CPUs) vs llama-fit-params (recorded on the GPU machine)\n")
    print("| run | card | llama-fit-params wall s | ggufx wall s | ggufx CPU s | llama-fit-params / ggufx (wall) |")
    print("|---|---|---:|---:|---:|---:|")
    for rid, card, theirs, wall, cpu in rows:
        print(f"| {rid} | {card} | {theirs:.1f} | {wall:.2f} | {cpu:.2f} | {theirs / wall:.1f}x |")
    ratios = [t / w for _, _, t, w, _ in rows]
    if ratios:
        print(f"\nmedian ratio {statistics.median(ratios):.1f}x over {len(rows)} runs")


if __name__ == "__main__":
    main()
