"""The ``ggufx`` command line: a thin layer over the library.

:func:`run` is the ``ggufx`` program. A ``mem`` command line of the usual shape (options spelled as ``ggufx mem
--help`` lists them, a local file) runs without importing click (:mod:`ggufx.cli._fast`, issue 21: click's import
was a fifth of ``mem``'s start); every other command line, ``--help`` and every usage error go to the click group
(:mod:`ggufx.cli._group`), which ``main`` names here as before. Importing this package imports no click: its
names from the group load on first use.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ggufx.cli._process import raise_gc_threshold

if TYPE_CHECKING:
    from ggufx.cli._group import COMMANDS, LazyGroup, main, usage_error
    from ggufx.cli._process import end_process

__all__ = ["COMMANDS", "LazyGroup", "end_process", "main", "run", "usage_error"]

raise_gc_threshold()  # before click and the command's modules load (ggufx.cli._process)

_FROM_GROUP = frozenset({"COMMANDS", "LazyGroup", "main", "usage_error"})


def __getattr__(name: str) -> Any:
    if name in _FROM_GROUP:
        from ggufx.cli import _group

        return getattr(_group, name)
    if name == "end_process":
        from ggufx.cli._process import end_process

        return end_process
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(prog_name: str | None = None) -> None:
    """The ``ggufx`` program: the fast start where it applies, else the click group (both end the process)."""
    from ggufx.cli._fast import run_fast

    run_fast(sys.argv[1:])  # returns only where it does not apply
    from ggufx.cli._group import main as group

    group(prog_name=prog_name)
