"""How the ``ggufx`` process runs and ends: the cyclic collector's threshold, the exit codes and the lines an
ending prints, and an ending without the interpreter's teardown. Nothing here imports click (the fast start,
:mod:`ggufx.cli._fast`, runs without it)."""

from __future__ import annotations

import gc
import os
import sys
from typing import Any, NoReturn

EXIT_CHECK_FAILED, EXIT_USAGE = 1, 2  # 0 is success


def os_error_line(e: OSError) -> str:
    """The one line for what the system refused (``-o`` into a missing folder, a full disk): not a bug in ggufx."""
    return f"ggufx: error: {f'{e.filename}: ' if e.filename else ''}{e.strerror or e}"


def internal_error_line(e: Exception) -> str:
    """The one line for a bug in ggufx (``--debug`` shows its traceback instead)."""
    return f"ggufx: internal error: {type(e).__name__}: {e} (rerun with --debug and report it)"


# the cyclic collector's first generation threshold in the command line's process: the memory model
# allocates hundreds of thousands of short-lived containers that reference counting frees, and collecting
# every 700 allocations (Python's default) cost 56 ms of CPU of `report` on the 27B replica and 95 ms of
# `mem --fit` on the 94-layer MoE. Raised as the command line's package loads, before click and the command's modules
# (at 700, importing them collected 16 times), and at 100,000 with the objects of the modules imported
# before the command frozen (gc.freeze: never traversed again), `mem` on the 27B replica collects next to
# nothing (0.6 M instructions, 20,000: 8 to 15 M; issue 21) with the same peak memory on every `--fit`
# of benchmarks/SPEED.md. Never lowered where a caller set it higher.
GC_THRESHOLD = 100_000


def raise_gc_threshold() -> None:
    threshold = gc.get_threshold()
    if threshold[0] < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, *threshold[1:])


def end_process(code: Any) -> NoReturn:
    """End the process with exit status ``code`` once a command is done, as the interpreter would
    (flushed output, atexit handlers run) but without its teardown, which tears every module down
    and costs about 9 ms of CPU after `ggufx info` (10% of it). Where ending it that way could
    differ from the interpreter's own ending (a code that is not a number, a thread still running,
    output that cannot be flushed), the interpreter ends it as always."""
    import atexit

    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)  # CPython's; elsewhere the usual ending
    threading = sys.modules.get("threading")  # threads it counts start through it: not imported, none runs
    running = threading is not None and threading.active_count() > 1
    if (code is not None and not isinstance(code, int)) or run_exitfuncs is None or running:
        raise SystemExit(code)
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None and not stream.closed:
                stream.flush()
    except Exception:  # a closed pipe...: the interpreter reports it and ends with 120, as ever
        raise SystemExit(code) from None
    run_exitfuncs()
    os._exit((code or 0) & 0xFF)
