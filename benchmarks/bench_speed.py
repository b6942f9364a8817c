#!/usr/bin/env python3
"""How long `ggufx info`, `mem`, `mem --fit` and `report` take, as whole processes, before and after.

    python benchmarks/bench_speed.py [--runs N] [--before /work/main] [--only info,mem,fit,report,report-gpus]
                                     [--models NAME,...]

One table per command, one row per model and code: "after" is this checkout, "before" another
checkout of ggufx (default: /work/main, the commit this branch started from), both run by this
interpreter with their own tree first on sys.path and their own byte-code cache
(benchmarks/.data/pycache/<label>, as an installed package has one), so the two differ only in their
code. `info` is paired with PyPI's `gguf-inspect` (its header summary, `--no-metadata --no-tensors`),
the fastest Python peer we know. Models (benchmarks/bench_models.py): the Qwen3.6 27B hybrid replica
of the recorded runs (64 layers), a 94-layer MoE of Qwen3-235B-A22B's shape, Gemma 3 270M, DeepSeek-V4-Flash's
and HRM-Text-1B's published shapes; ``--models``
picks among those and the header-only models of benchmarks/.data/holes by name (qwen3next-80b-a3b,
glm45-air, ...).

Per model the commands compared (before, after, the peer, `python -c pass`) run N times interleaved,
round by round, after a warm-up round (page cache and byte code warm), so that the other workers of
a shared machine weigh on all of them alike; the table gives the median wall time, the median CPU
time (user + system, from wait4: steadier than wall time on a busy machine; the ratios are of CPU
times) and the largest peak RSS; `info` and `mem` also give their CPU beyond process start (minus
`python -c pass`). `mem` is `-c 32768 --gpus 24GiB`; `fit` is `mem --fit 24GiB` (every cache type,
llama.cpp's answer); `report` writes the HTML page (memory at several contexts), `report-gpus` with
`--gpus 24GiB` (the memory chart's budget and llama.cpp's --fit point).
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

LAUNCH = "import sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'ggufx'; import ggufx.cli as c; (c.run if hasattr(c, 'run') else c.main)()"


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


def measure(cmds: list[tuple[list[str], dict[str, str]]], runs: int) -> list[tuple[float, float, int]]:
    """Each command's median wall and CPU seconds and largest peak RSS over ``runs`` rounds, the
    commands interleaved round by round (so that a busy spell of the shared machine falls on all of
    them alike), after one warm-up round (page cache, byte code)."""
    for cmd, env in cmds:
        run(cmd, env)
    samples: list[list[tuple[float, float, int]]] = [[] for _ in cmds]
    for _ in range(runs):
        for i, (cmd, env) in enumerate(cmds):
            samples[i].append(run(cmd, env))
    return [
        (statistics.median(s[0] for s in ss), statistics.median(s[1] for s in ss), max(s[2] for s in ss))
        for ss in samples
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--before",
        type=Path,
        default=Path("/work/main"),
        help="the ggufx tree to compare with (a checkout, or `git archive REV ggufx templates | tar -x -C DIR`)",
    )
    ap.add_argument("--only", default="info,mem,fit,report,report-gpus")
    ap.add_argument("--models", default="", help="comma-separated names (default: the five of bench_models.py)")
    args = ap.parse_args()
    paths = models()
    if args.models:
        holes = {p.stem: p for p in (HERE / ".data" / "holes").glob("*.gguf")}
        names = args.models.split(",")
        unknown = [n for n in names if n not in paths and n not in holes]
        if unknown:
            raise SystemExit(f"unknown models: {', '.join(unknown)} (known: {', '.join(sorted({*paths, *holes}))})")
        paths = {n: paths.get(n) or holes[n] for n in names}
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
        "report-gpus": lambda f, n: ["report", str(f), "--gpus", "24GiB", "-o", str(out / f"{n}.html")],
    }
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, median of {args.runs} interleaved runs after a warm-up"
    )
    for label, path in codes.items():
        rev = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        print(f"{label}: {path}" + (f" (commit {rev.stdout.strip()})" if rev.returncode == 0 else ""))
    print()
    for name in args.only.split(","):
        rows = []
        for model, path in paths.items():
            labels = [lb for lb in ("before", "after") if lb in codes]
            cmds = [(ggufx(lb)[0] + commands[name](path, model), ggufx(lb)[1]) for lb in labels]
            names = [f"ggufx {name} ({lb})" for lb in labels]
            if name == "info":  # the peer
                cmds.append(([tool("gguf-inspect"), "--no-metadata", "--no-tensors", str(path)], env0))
                names.append("gguf-inspect")
            if name in ("info", "mem"):  # what a process costs before it does anything
                cmds.append(([sys.executable, "-c", "pass"], env0))
                names.append("python -c pass")
            got = dict(zip(names, measure(cmds, args.runs), strict=True))
            after = got[f"ggufx {name} (after)"][1]
            start = got.get("python -c pass", (0.0, 0.0, 0))[1]
            for label, (wall, cpu, rss) in got.items():
                if label.endswith("(after)") and f"ggufx {name} (before)" in got:
                    note = f"{got[f'ggufx {name} (before)'][1] / cpu:.2f}x less CPU than before"
                elif label == "gguf-inspect":
                    note = f"ggufx (after) {cpu / after:.2f}x less CPU"
                else:
                    note = ""
                if start and label.startswith("ggufx"):
                    note += f"{'; ' if note else ''}{(cpu - start) * 1000:,.0f} ms beyond process start"
                rows.append((model, label, wall, cpu, rss, note))
        print(f"## {name}\n")
        print("| model | command | wall ms | CPU ms | peak RSS MiB | note |")
        print("|---|---|---:|---:|---:|---|")
        for model, label, wall, cpu, rss, note in rows:
            print(f"| {model} | {label} | {wall * 1000:,.0f} | {cpu * 1000:,.0f} | {rss / 2**20:,.1f} | {note} |")
        print()


if __name__ == "__main__":
    main()
