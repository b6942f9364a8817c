#!/usr/bin/env python3
"""Where a `ggufx` command's instructions go: callgrind's count per marked function, exclusive of marked callees.

    python benchmarks/bench_phases.py [--mark MODULE:QUALNAME ...] -- mem FILE -c 32768 --gpus 24GiB

The command runs once as a warm-up (byte code, header index, code cache), then under
``valgrind --tool=callgrind --dump-before=getppid``: every marked function calls ``os.getppid()`` on entry and
exit, and so does every first import of a module (``import <module>``), so each dump is the instructions of one
stretch, charged to the innermost marked function (or import) running then. Prints millions of instructions per
mark, with the number of calls; ``(rest)`` is what no mark covers (Python's start, click's parsing, the
interpreter's ending). Deterministic on a loaded VM, as bench_instr.py's totals are; the marks add a few
instructions per call (their count is printed).
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

DEFAULT_MARKS = [
    "ggufx.model.open:open_model",
    "ggufx.results.memory:memory",
    "ggufx.results.memory:fit",
    "ggufx.analysis.memory.buffers:breakdown",
    "ggufx.analysis.memory.graph.graphsim:simulate",
    "ggufx.analysis.memory.graph.graphsim:flash_attn_mismatch",
    "ggufx.analysis.memory.graph.graphsim:_load",
    "ggufx.analysis.memory.graph.graphsim:build_graph",
    "ggufx.analysis.memory.graph.galloc:_reserve",
    "ggufx.analysis.memory.graph.galloc:_Blocks.replay",
    "ggufx.analysis.memory.graph.sched:_Sched.assign",
    "ggufx.analysis.memory.graph.sched:_Sched.split",
    "ggufx.analysis.layers:layer_kinds",
    "ggufx.analysis.memory.placement:place",
    "ggufx.analysis.memory.buffers:weight_buffers",
    "ggufx.cli._common:emit",
    "gc:collect",
]

# run inside the measured process: wrap the marked functions as their modules load, mark first imports
SHIM = r"""
import builtins, gc, importlib, os, sys, time
marks, log = {marks!r}, []
getppid = os.getppid
stack = []
def enter(name):
    getppid(); log.append(('+', name))
def leave(name):
    getppid(); log.append(('-', name))
def wrap(fn, name):
    def marked(*a, **k):
        enter(name)
        try:
            return fn(*a, **k)
        finally:
            leave(name)
    marked.__wrapped__ = fn
    return marked
wanted = {{}}
for m in marks:
    mod, qual = m.split(':')
    wanted.setdefault(mod, []).append(qual)
def patch(mod):
    for qual in wanted.pop(mod.__name__, []):
        owner, *rest = qual.split('.')
        if rest:
            cls = getattr(mod, owner, None)
            if cls is not None and hasattr(cls, rest[0]):
                setattr(cls, rest[0], wrap(getattr(cls, rest[0]), mod.__name__.rsplit('.', 1)[-1] + ':' + qual))
        elif hasattr(mod, owner):
            setattr(mod, owner, wrap(getattr(mod, owner), mod.__name__.rsplit('.', 1)[-1] + ':' + qual))
real_import = builtins.__import__
def marked_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name in sys.modules and not fromlist:
        return real_import(name, globals, locals, fromlist, level)
    before = set(sys.modules)
    label = 'import ' + (name if level == 0 else (globals or {{}}).get('__package__', '') + '.' * level + name) if {per_module!r} else 'import'
    enter(label)
    try:
        return real_import(name, globals, locals, fromlist, level)
    finally:
        leave(label)
        if wanted:
            for n in set(sys.modules) - before:
                if n in wanted:
                    patch(sys.modules[n])
builtins.__import__ = marked_import
real_import_module = importlib.import_module
def marked_import_module(name, package=None):
    if name in sys.modules:
        return real_import_module(name, package)
    before = set(sys.modules)
    label = 'import ' + name if {per_module!r} else 'import'
    enter(label)
    try:
        return real_import_module(name, package)
    finally:
        leave(label)
        for n in set(sys.modules) - before:
            if n in wanted:
                patch(sys.modules[n])
importlib.import_module = marked_import_module
for n in list(wanted):
    if n in sys.modules:
        patch(sys.modules[n])
if 'gc:collect' in marks:
    gc.callbacks.append(lambda phase, info: enter('gc') if phase == 'start' else leave('gc'))
    wanted.pop('gc', None)
import atexit
def dump_log():
    with open({logfile!r}, 'w') as f:
        for op, name in log:
            f.write(op + ' ' + name + '\n')
atexit.register(dump_log)
sys.path.insert(0, {root!r})
sys.argv = ['ggufx', *{args!r}]
import ggufx.cli as c
(c.run if hasattr(c, "run") else c.main)()

"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mark", action="append", default=None, help="MODULE:QUALNAME (default: the memory path's)")
    ap.add_argument("--per-module", action="store_true", help="charge each first import to its module")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the ggufx tree to run")
    ap.add_argument("args", nargs="+", help="the ggufx command line (after --)")
    a = ap.parse_args()
    marks = a.mark or DEFAULT_MARKS
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(HERE / ".data" / "pycache" / "phases")
    with tempfile.TemporaryDirectory() as tmp:
        logfile = str(Path(tmp) / "marks.log")
        code = SHIM.format(per_module=a.per_module, marks=marks, logfile=logfile, root=str(a.tree), args=a.args)
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=False)  # warm-up
        out = Path(tmp) / "cg.out"
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--dump-before=getppid",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                code,
            ],
            env=env,
            capture_output=True,
        )
        if proc.returncode not in (0, 1):
            raise SystemExit(proc.stderr[-3000:].decode(errors="replace"))
        dumps = sorted(
            Path(tmp).glob("cg.out*"), key=lambda p: int(p.name.rsplit(".", 1)[-1]) if "." in p.name[6:] else 10**9
        )
        counts = []
        for p in dumps:
            m = re.search(r"^totals: (\d+)", p.read_text(errors="replace"), re.M) or re.search(
                r"^summary: (\d+)", p.read_text(errors="replace"), re.M
            )
            counts.append(int(m.group(1)) if m else 0)
        log = [line.split(" ", 1) for line in Path(logfile).read_text().splitlines()]
    # dump i (0-based) holds the stretch before the i-th getppid; the last dump (the ending) is the rest
    totals: dict[str, int] = {}
    calls: dict[str, int] = {}
    stack: list[str] = []
    for i, n in enumerate(counts):
        owner = stack[-1] if stack else "(rest)"
        totals[owner] = totals.get(owner, 0) + n
        if i < len(log):
            op, name = log[i]
            if op == "+":
                stack.append(name)
                calls[name] = calls.get(name, 0) + 1
            else:
                stack.pop()
    total = sum(counts)
    print(f"total {total / 1e6:,.1f} M instructions, {len(log)} marks\n")
    print("| mark | calls | M instructions (exclusive) |")
    print("|---|---:|---:|")
    for name, n in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {calls.get(name, '')} | {n / 1e6:,.1f} |")


if __name__ == "__main__":
    main()
