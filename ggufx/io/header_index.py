"""Where the string arrays of local headers end, remembered across processes.

Finding where a string array ends means reading every string's length: a 248K-token vocabulary
and its merges are about 19 ms of pure Python, four fifths of parsing the header of a 27B model.
That walk gives the same answer every time the same bytes are read, so the first parse of a file
records the end of each large string array here and later parses of that file skip the walk
(:func:`ggufx.format.reader.parse_header`'s ``string_arrays``). Everything else is parsed and
validated as before: the keys, values and tensor infos after the array, the layout, every limit.

An entry also gives where the header ends, as a row of offset 0 (where no array starts; a reader that
knows no such row skips it): the first read of the file then takes the whole header at once, and the
bytes read are the header's buffer.

An entry is keyed by the file's identity as ``stat`` gives it (device, inode, size, modification
and change times in nanoseconds): any write to the file, by ggufx or anything else, changes the
change time, so the entry of the old bytes is never used for the new ones. Entries are small text
files in ``<cache>/local/`` (the cache folder of :mod:`ggufx.io.remote`'s headers: ``GGUFX_CACHE_DIR``,
else ``$XDG_CACHE_HOME/ggufx/headers``, else ``~/.cache/ggufx/headers``), written to a temporary
name and renamed; the oldest are deleted past :data:`MAX_ENTRIES`. ``GGUFX_NO_CACHE=1`` turns the
index off. A folder that cannot be written only makes parsing slower, never fails it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ggufx.format.values import ValueType

if TYPE_CHECKING:
    from ggufx.format.reader import GGUFHeader

FORMAT = "ggufx-string-arrays 1"
MIN_STRINGS = 4096  # smaller arrays are walked in well under a millisecond: not worth an entry
MAX_ENTRIES = 2000  # one per file version seen; past this, the least recently written go
MAX_ENTRY_BYTES = 4096  # an entry holds a few lines; a larger file is not one of ours
HEADER_END = 0  # the offset of the row that gives where the header ends (no array starts at 0)


def default_cache_dir() -> str | None:
    """ggufx's header cache folder, or ``None`` where ``GGUFX_NO_CACHE`` turns caching off."""
    if os.environ.get("GGUFX_NO_CACHE"):
        return None
    if os.environ.get("GGUFX_CACHE_DIR"):
        return os.environ["GGUFX_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "ggufx", "headers")


def _entry_path(identity: tuple[int, ...]) -> str | None:
    root = default_cache_dir()
    if root is None:
        return None
    return os.path.join(root, "local", "-".join(f"{v:x}" for v in identity))


def load(identity: tuple[int, ...] | None) -> dict[int, tuple[int, int]] | None:
    """The string arrays recorded for the file of ``identity``: first element offset -> (count,
    end), and 0 -> (0, end of the header); ``None`` when there is no usable entry."""
    if identity is None:
        return None
    path = _entry_path(identity)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_ENTRY_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_ENTRY_BYTES:
        return None
    try:
        head, *rows = raw.decode("ascii").splitlines()
        if head != FORMAT:
            return None
        known: dict[int, tuple[int, int]] = {}
        for row in rows:
            offset, count, end = (int(x) for x in row.split())
            known[offset] = (count, end)
    except ValueError:  # not ascii, not three integers a line: someone else's file
        return None
    return known


def store(identity: tuple[int, ...] | None, header: GGUFHeader, known: Mapping[int, tuple[int, int]] | None) -> None:
    """Record the large string arrays of ``header`` (parsed from the file of ``identity``) unless
    ``known`` already holds them all."""
    if identity is None:
        return
    rows = {}
    for kv in header.kvs.values():
        arr = kv.value
        if kv.type is ValueType.ARRAY and arr.elem_type is ValueType.STRING and arr.count >= MIN_STRINGS:
            rows[arr.offset] = (arr.count, arr.offset + arr.nbytes)
    if not rows:
        return
    rows[HEADER_END] = (0, header.header_end)
    if known is not None and all(known.get(k) == v for k, v in rows.items()):
        return
    path = _entry_path(identity)
    if path is None:
        return
    text = FORMAT + "\n" + "".join(f"{o} {c} {e}\n" for o, (c, e) in sorted(rows.items()) if o != HEADER_END)
    text += f"{HEADER_END} 0 {header.header_end}\n"  # last: the arrays' rows first, as entries always had them
    folder = os.path.dirname(path)
    import threading  # only where an entry is written

    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "w", encoding="ascii") as f:
            f.write(text)
        os.replace(tmp, path)
        _prune(folder)
    except OSError:  # a cache that cannot be written is only slower
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _prune(folder: str) -> None:
    """Delete the least recently written entries past :data:`MAX_ENTRIES`."""
    names = os.listdir(folder)
    if len(names) <= MAX_ENTRIES:
        return
    entries = []
    for name in names:
        p = os.path.join(folder, name)
        try:
            entries.append((os.stat(p).st_mtime_ns, p))
        except OSError:
            continue
    entries.sort()
    for _, p in entries[: len(entries) - MAX_ENTRIES // 2]:
        try:
            os.unlink(p)
        except OSError:
            pass
