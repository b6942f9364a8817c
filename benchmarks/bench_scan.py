#!/usr/bin/env python3
"""Scan a folder of hundreds of GGUF files: `ggufx scan` against running `gguf-inspect` (the fastest
Python peer) once per file, as a user would in a shell loop.

    python benchmarks/bench_scan.py [--files 300]

The folder (in a temporary directory) holds copies of the synthetic fixtures with templates (every
value type, big-endian, split sets) and symlinks to the two real files of the test cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIX = HERE.parent / "tests" / "fixtures"
CACHE = Path(os.environ.get("GGUFX_MODEL_CACHE", Path.home() / ".cache" / "ggufx-test-models"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=300)
    args = ap.parse_args()
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        sources = [
            FIX / "all-types-v3.gguf",
            FIX / "big-endian.gguf",
            FIX / "edge-values.gguf",
            FIX / "no-tensors.gguf",
        ]
        for i in range(args.files):
            shutil.copy(sources[i % len(sources)], root / f"model-{i:04d}.gguf")
        for real in CACHE.glob("*.gguf"):
            (root / real.name).symlink_to(real)
        files = sorted(root.glob("*.gguf"))
        t0 = time.perf_counter()
        subprocess.run([str(bindir / "ggufx"), "scan", str(root), "--json"], stdout=subprocess.DEVNULL, check=False)
        t_scan = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(
            [str(bindir / "ggufx"), "scan", str(root), "--json", "--no-lint"], stdout=subprocess.DEVNULL, check=False
        )
        t_nolint = time.perf_counter() - t0
        t0 = time.perf_counter()
        for f in files:
            subprocess.run(
                [str(bindir / "gguf-inspect"), "--no-metadata", "--no-tensors", str(f)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        t_loop = time.perf_counter() - t0
    print(f"| command ({len(files)} files) | wall s | per file ms | vs ggufx scan |")
    print("|---|---:|---:|---:|")
    for label, t in (
        ("ggufx scan (with template lint)", t_scan),
        ("ggufx scan --no-lint", t_nolint),
        ("gguf-inspect, once per file", t_loop),
    ):
        print(f"| {label} | {t:.2f} | {1000 * t / len(files):.1f} | {t / t_scan:.1f}x |")


if __name__ == "__main__":
    main()
