#!/usr/bin/env python3
"""Whether two ggufx trees answer `mem` byte-identically over every header of benchmarks/.data/holes.

    python benchmarks/check_same.py --before DIR [--after DIR] [--only NAME,...] [--cache DIR] [--speed]

DIR is a checkout or ``git archive REV ggufx templates | tar -x -C DIR``. For each header, both trees
run ``ggufx mem X --json`` and ``ggufx mem X --fit 24GiB --json`` (each tree first on sys.path) and the
outputs (stdout and exit code) are compared byte for byte. ``--cache DIR`` keeps the "before" outputs
there (keyed on the command), so that a second check only reruns "after". ``--speed`` adds the speed
benchmarks' header-only models of benchmarks/.data/speed (DeepSeek-V4-Flash's and HRM-Text-1B's shapes, the
27B replica, the 94-layer MoE), each also with ``mem X -c 32768 --gpus 24GiB --json``. Exit 1 on any difference.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOLES = HERE / ".data" / "holes"
SPEED = HERE / ".data" / "speed"
LAUNCH = "import sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'ggufx'; import ggufx.cli as c; (c.run if hasattr(c, 'run') else c.main)()"
COMMANDS = (["--json"], ["--fit", "24GiB", "--json"])


def answer(tree: Path, args: list[str]) -> bytes:
    proc = subprocess.run([sys.executable, "-c", LAUNCH, str(tree), *args], capture_output=True)
    return f"exit {proc.returncode}\n".encode() + proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, default=ROOT)
    ap.add_argument("--only", default="")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--speed", action="store_true", help="also the models of benchmarks/.data/speed")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    files = sorted(p for p in HOLES.glob("*.gguf") if not names or p.stem in names)
    if args.speed:
        files += sorted(p for p in SPEED.glob("*.gguf") if not names or p.stem in names)
    bad = 0
    n = 0
    for path in files:
        commands = (*COMMANDS, ["-c", "32768", "--gpus", "24GiB", "--json"]) if path.parent == SPEED else COMMANDS
        for extra in commands:
            n += 1
            cmd = ["mem", str(path), *extra]
            cached = None
            if args.cache:
                args.cache.mkdir(parents=True, exist_ok=True)
                cached = args.cache / (hashlib.sha256(" ".join(cmd).encode()).hexdigest()[:16] + ".out")
            if cached is not None and cached.exists():
                before = cached.read_bytes()
            else:
                before = answer(args.before, cmd)
                if cached is not None:
                    cached.write_bytes(before)
            after = answer(args.after, cmd)
            same = before == after
            bad += not same
            print(f"{'same' if same else 'DIFFERENT'}  {path.stem:24s} {' '.join(extra)}", flush=True)
    print(f"{n - bad} same, {bad} different")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
