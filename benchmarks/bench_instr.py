#!/usr/bin/env python3
"""Instructions executed by `ggufx mem` (one configuration and `--fit`), before and after, under callgrind.

    python benchmarks/bench_instr.py [--before DIR] [--only mem,fit] [--models NAME,...]

Wall and CPU times on a loaded shared VM move by tens of percent between runs; the number of
instructions a process executes (valgrind --tool=callgrind, ``Ir``) moves by well under 0.1%, so it is
what to decide a change by (bench_speed.py gives the wall and CPU medians to report). Each command
runs once as a warm-up (byte code written under benchmarks/.data/pycache/<label>, as bench_speed.py
does; the header index warm), then once under callgrind; the table gives millions of instructions of
the whole process and beyond ``python -c pass``. Models and commands are bench_speed.py's.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_models import models  # noqa: E402

LAUNCH = "import sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'ggufx'; import ggufx.cli as c; (c.run if hasattr(c, 'run') else c.main)()"
COMMANDS = {
    "info": lambda f: ["info", str(f)],
    "mem": lambda f: ["mem", str(f), "-c", "32768", "--gpus", "24GiB"],
    "fit": lambda f: ["mem", str(f), "--fit", "24GiB"],
}


def instructions(cmd: list[str], env: dict[str, str]) -> int:
    """Instructions (callgrind's Ir) of one run of ``cmd``, which must answer (exit 0 or 1)."""
    subprocess.run(cmd, env=env, capture_output=True, check=False)  # warm: byte code, header index
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd], env=env, capture_output=True
        )
        m = re.search(rb"Collected : (\d+)", proc.stderr)
        if m is None or proc.returncode not in (0, 1):
            raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:].decode(errors='replace')}")
        return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, default=None, help="another ggufx tree (checkout or git archive)")
    ap.add_argument("--only", default="mem,fit")
    ap.add_argument("--models", default="qwen36-27b,qwen3-235b-a22b")
    args = ap.parse_args()
    paths = models()
    holes = {p.stem: p for p in (HERE / ".data" / "holes").glob("*.gguf")}
    codes = {"after": ROOT} | ({"before": args.before} if args.before else {})
    env0 = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    start = instructions([sys.executable, "-c", "pass"], env0)
    print(f"python -c pass: {start / 1e6:,.1f} M instructions\n")
    print("| model | command | code | M instructions | beyond `python -c pass` |")
    print("|---|---|---|---:|---:|")
    for name in args.only.split(","):
        for model in args.models.split(","):
            path = paths.get(model) or holes[model]
            for label, tree in sorted(codes.items()):
                env = env0 | {"PYTHONPYCACHEPREFIX": str(HERE / ".data" / "pycache" / label)}
                n = instructions([sys.executable, "-c", LAUNCH, str(tree), *COMMANDS[name](path)], env)
                print(f"| {model} | {name} | {label} | {n / 1e6:,.1f} | {(n - start) / 1e6:,.1f} |", flush=True)


if __name__ == "__main__":
    main()
