#!/usr/bin/env python3
"""`ggufx info` on a remote file (range requests) against the same on the local file and against a
naive full download, over a local HTTP server that waits 50 ms before every response.

    python benchmarks/bench_remote.py [--latency 0.05] [--runs 3] [FILE...]

Default files: the two real GGUFs the test suite caches. The server is tests/httpserver.py (the
one the tests use), on 127.0.0.1. Rows: local file; remote with a cold header cache; remote with
a warm cache (one HEAD request); remote --offline; bodies throttled to --bandwidth; and a full download with curl (or urllib)
followed by a local `ggufx info`. Requests and bytes for ggufx come from its `--debug` summary.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import CACHE, tool  # noqa: E402

from tests.httpserver import RangeServer  # noqa: E402

DEFAULT_FILES = [CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf", CACHE / "gemma-3-270m-q4_k_m.gguf"]
SUMMARY = re.compile(r"ggufx: debug: (\d+) HTTP request\(s\), ([\d,]+) bytes received")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return wall, p.stderr


def download(url: str, dest: Path) -> None:
    curl = shutil.which("curl")
    if curl:
        subprocess.run([curl, "-sSf", "-o", str(dest), url], check=True)
        return
    import urllib.request

    with urllib.request.urlopen(url) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 22)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds before every response (default 0.05)")
    ap.add_argument(
        "--bandwidth",
        type=float,
        default=100.0,
        help="Mbit/s the server sends bodies at (default 100, a fast home line; 0 = loopback speed)",
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("files", nargs="*", type=Path)
    args = ap.parse_args()
    files = args.files or DEFAULT_FILES
    ggufx = tool("ggufx")
    rows = []
    with RangeServer({f.name: f for f in files}) as srv, tempfile.TemporaryDirectory() as tmp:
        srv.state.behaviour.latency = args.latency
        srv.state.behaviour.bandwidth = args.bandwidth * 1e6 / 8
        env = dict(os.environ, GGUFX_CACHE_DIR=os.path.join(tmp, "cache"))
        for f in files:
            url = srv.url(f.name)
            size = f.stat().st_size

            def median(cmd: list[str], prep=None) -> tuple[float, str]:
                out = []
                for _ in range(args.runs):
                    if prep:
                        prep()
                    out.append(timed(cmd, env))
                return statistics.median(w for w, _ in out), out[-1][1]

            def stats(err: str) -> tuple[int, int]:
                m = SUMMARY.search(err)
                return (int(m[1]), int(m[2].replace(",", ""))) if m else (0, 0)

            timed([ggufx, "info", str(f)], env)  # warm-up (.pyc, page cache)
            local, _ = median([ggufx, "info", str(f)])
            cold, err = median([ggufx, "--debug", "info", "--no-cache", url])
            cold_req, cold_bytes = stats(err)
            timed([ggufx, "info", url], env)  # fill the cache
            warm, err = median([ggufx, "--debug", "info", url])
            warm_req, warm_bytes = stats(err)
            offline, err = median([ggufx, "--debug", "info", "--offline", url])
            off_req, off_bytes = stats(err)
            dest = Path(tmp) / f.name

            def naive() -> float:
                t0 = time.perf_counter()
                download(url, dest)
                timed([ggufx, "info", str(dest)], env)
                w = time.perf_counter() - t0
                dest.unlink()
                return w

            full = statistics.median(naive() for _ in range(args.runs))
            rows += [
                (f.name, "ggufx info FILE (local)", local, 0, 0),
                (f.name, "ggufx info URL (cold, --no-cache)", cold, cold_req, cold_bytes),
                (f.name, "ggufx info URL (header cached: HEAD)", warm, warm_req, warm_bytes),
                (f.name, "ggufx info URL --offline (cached)", offline, off_req, off_bytes),
                (f.name, f"full download ({'curl' if shutil.which('curl') else 'urllib'}) + ggufx info", full, 1, size),
            ]
    bw = f"{args.bandwidth:g} Mbit/s" if args.bandwidth else "loopback speed"
    print(f"simulated: {args.latency * 1000:.0f} ms latency per request, bodies at {bw}; median of {args.runs} runs\n")
    print("| file | command | wall s | requests | bytes received | vs full download |")
    print("|---|---|---:|---:|---:|---:|")
    fulls = {r[0]: r[2] for r in rows if r[1].startswith("full")}
    for name, what, wall, req, nbytes in rows:
        print(f"| {name} | {what} | {wall:.3f} | {req} | {nbytes:,} | {fulls[name] / wall:.1f}x |")


if __name__ == "__main__":
    main()
