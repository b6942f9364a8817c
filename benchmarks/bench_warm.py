#!/usr/bin/env python3
"""CPU time of the memory model inside one process, after the imports and the header (issue 21).

    python benchmarks/bench_warm.py [--runs N]

Per model (benchmarks/bench_models.py): the first breakdown (`-c 32768`, one 24 GiB GPU), the next
ones at other contexts (8K to 128K, median), and `mem --fit 24GiB` (`results.fit_budget`, every cache type, llama.cpp's answer) in a
fresh process's memory caches: the part of a command's time beyond process start and the header.
Each figure is the median of N fresh processes (CPU milliseconds, `time.process_time`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_models import models  # noqa: E402

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import ggufx
from ggufx.analysis.memory.buffers import ContextParams, breakdown
from ggufx.analysis.memory.placement import Device, OffloadParams
from ggufx.results import fit_budget
what, path = sys.argv[2], sys.argv[3]
model = ggufx.open(path)
gpu = [Device("CUDA0", 24 << 30)]
t = time.process_time
if what == "fit":
    t0 = t(); fit_budget(model, "24GiB"); print(json.dumps([(t() - t0) * 1000])); raise SystemExit
out = []
for n in (32768, 8192, 16384, 65536, 131072):
    t0 = t(); breakdown(model, gpu, OffloadParams(), ContextParams(n_ctx=n)); out.append((t() - t0) * 1000)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--code", type=Path, default=HERE.parent, help="the ggufx tree to measure")
    args = ap.parse_args()
    print("| model | first breakdown | next ones (median) | mem --fit 24GiB |")
    print("|---|---:|---:|---:|")
    for name, path in models().items():
        runs = {w: [] for w in ("bd", "fit")}
        for _ in range(args.runs):
            for w in runs:
                proc = subprocess.run(
                    [sys.executable, "-c", CHILD, str(args.code), w, str(path)], capture_output=True, text=True
                )
                if proc.returncode:
                    raise SystemExit(proc.stderr[-2000:])
                runs[w].append(json.loads(proc.stdout))
        first = statistics.median(r[0] for r in runs["bd"])
        rest = statistics.median(x for r in runs["bd"] for x in r[1:])
        fit = statistics.median(r[0] for r in runs["fit"])
        print(f"| {name} | {first:,.0f} | {rest:,.0f} | {fit:,.0f} |")


if __name__ == "__main__":
    main()
