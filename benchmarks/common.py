"""What the benchmark scripts share: timing a whole process with its peak RSS, finding tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("GGUFX_MODEL_CACHE", Path.home() / ".cache" / "ggufx-test-models"))


def tool(name: str) -> str:
    """A console script of the running interpreter's environment, else one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def run(cmd: list[str], settle: bool = False) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes (wait4) of one run of ``cmd``, which must succeed.
    ``settle``: sync and wait first, so that no earlier run's dirty pages are flushed inside this one."""
    if settle:
        os.sync()
        time.sleep(2)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss * 1024
