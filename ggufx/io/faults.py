"""Fault injection for crash-safety tests.

``GGUFX_FAULT`` names a point in a write and what happens there:

* ``POINT`` - the process kills itself with SIGKILL when it reaches POINT;
* ``POINT:N`` - during the write phase POINT, exactly N bytes are written, then SIGKILL;
* ``enospc:POINT`` - the write phase POINT fails with ENOSPC (disk full) before writing.

Points: ``journal-write``, ``journal-synced``, ``insert-range``, ``header-write``, ``header-synced``,
``journal-removed``, ``tmp-write``, ``tmp-synced``, ``renamed``, ``recover-write``. Without the variable
every call here is a no-op costing one dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal


def _spec() -> tuple[str, str | None, int | None] | None:
    raw = os.environ.get("GGUFX_FAULT")
    if not raw:
        return None
    if raw.startswith("enospc:"):
        return "enospc", raw[len("enospc:") :], None
    if ":" in raw:
        name, n = raw.rsplit(":", 1)
        return "bytes", name, int(n)
    return "point", raw, None


def point(name: str) -> None:
    """Die here if asked to."""
    spec = _spec()
    if spec and spec[0] == "point" and spec[1] == name:
        os.kill(os.getpid(), signal.SIGKILL)


def write_at(fd: int, data: bytes | memoryview, offset: int, phase: str) -> int:
    """``pwrite`` all of ``data`` at ``offset`` (looping over short writes), honouring faults."""
    spec = _spec()
    view = memoryview(data)
    if spec and spec[1] == phase:
        if spec[0] == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if spec[0] == "bytes" and spec[2] is not None and spec[2] < len(view):
            _pwrite_all(fd, view[: spec[2]], offset)
            os.fsync(fd)  # make the torn write real, as a crash after the page cache flush would
            os.kill(os.getpid(), signal.SIGKILL)
    _pwrite_all(fd, view, offset)
    return len(view)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
