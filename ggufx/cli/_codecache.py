"""The methods ``@dataclass`` generates, compiled once and remembered across ``ggufx`` processes.

``dataclasses`` writes each method it adds to a class (``__init__``, ``__repr__``, ``__eq__``; for a
frozen class ``__setattr__``, ``__delattr__`` and ``__hash__``) as Python source and compiles that
source when the class is defined, at every import: about 4 M instructions a frozen class on CPython
3.11, 160 M of the 600 M that `ggufx mem` on a 27B model ran beyond Python's own start (issue 21).
What that compilation gives depends on the text alone (and the interpreter), so the command line
keeps each text's code object, per interpreter, in one file of ggufx's cache folder (``code/``
beside the header index's ``local/``: ``GGUFX_CACHE_DIR``, else ``~/.cache/ggufx/headers``;
``GGUFX_NO_CACHE=1`` turns it off) and hands ``dataclasses`` the code of a text compiled before
instead of compiling it again. Each command has its own file: ``mem`` reads the 178 texts of its modules'
classes, not those of every command (4.9 M instructions; a file shared by the commands that had run held 446
texts, 8.8 M; issue 21). Each class is still made by ``dataclasses`` from that code: the same
methods, fields, ``repr``, equality, hashing and immutability (:func:`compile` of the same text,
``"<string>"``, no inherited flags: what ``exec`` of it compiles). Only the ``ggufx`` command's own
process installs it (a library user's process is left alone); an unreadable or foreign file, or one
another user owns or may write, is ignored; one that cannot be written only leaves the next process
compiling again.
"""

from __future__ import annotations

import builtins
import marshal
import os
import sys
from types import CodeType
from typing import Any

MAX_ENTRIES = 4096  # past this, a process writes back only the texts it used (other versions' go)

_state: dict[str, Any] = {}


def cache_file(command: str | None = None) -> str | None:
    """This interpreter's file of compiled texts (``command``'s own), or ``None`` where caching is off."""
    from ggufx.io.header_index import default_cache_dir

    root = default_cache_dir()
    if root is None:
        return None
    tag = f"{sys.implementation.cache_tag}-{sys.hexversion:x}"
    own = f"-{command}" if command else ""
    return os.path.join(root, "code", f"dataclass-methods-{tag}{own}.marshal")


def load(path: str) -> dict[str, CodeType]:
    """The texts and their code in ``path`` (empty where it is missing, unreadable or not such a file)."""
    try:
        with open(path, "rb") as f:
            if not _own(os.fstat(f.fileno())):
                return {}
            data = marshal.loads(f.read())
    except (OSError, ValueError, EOFError, TypeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, CodeType)}


def _own(st: os.stat_result) -> bool:
    """Whether a cache file is this user's alone: its code runs as ggufx's, so a file that someone else
    owns or may write (a shared ``GGUFX_CACHE_DIR``) is not read."""
    getuid = getattr(os, "getuid", None)
    return getuid is None or (st.st_uid == getuid() and not st.st_mode & 0o022)


def install(command: str | None = None) -> bool:
    """Give ``dataclasses`` the compiled code of the texts this interpreter compiled before for ``command``
    (its own file; the file is read at the first class made: a command that makes none, ``--help``, reads
    nothing); remember the new ones when the process ends. False (nothing done) where it is installed already or
    ``dataclasses`` has an ``exec`` of its own."""
    import dataclasses

    if _state or sys.implementation.name != "cpython" or "exec" in vars(dataclasses):
        return False
    used: dict[str, CodeType] = {}
    new: dict[str, CodeType] = {}
    _state.update(used=used, new=new)

    def known() -> dict[str, CodeType]:
        table = _state.get("known")
        if table is None:
            path = _state["path"] = cache_file(command)
            table = _state["known"] = load(path) if path is not None else {}
        return table

    def exec_(source: Any, globals: Any = None, locals: Any = None) -> None:
        """``dataclasses``' exec of a generated method's text."""
        if type(source) is str:
            code = known().get(source)
            if code is not None:
                used[source] = code
            else:
                code = new.get(source)
                if code is None:  # what exec of the text compiles (dataclasses.py has no __future__ flags)
                    code = new[source] = compile(source, "<string>", "exec", dont_inherit=True)
            source = code
        builtins.exec(source, globals, locals)

    dataclasses.exec = exec_  # type: ignore[attr-defined]
    import atexit

    atexit.register(save)
    return True


def save() -> None:
    """Write the texts this process compiled beside those known before (at exit; atomically)."""
    if not _state.get("new") or _state.get("path") is None:  # nothing new, or caching off
        return
    path, known, used, new = _state["path"], _state["known"], _state["used"], _state["new"]
    entries = {**known, **new} if len(known) + len(new) <= MAX_ENTRIES else {**used, **new}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(marshal.dumps(entries))
        os.replace(tmp, path)
    except (OSError, ValueError):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return
    known.update(new)
    new.clear()
