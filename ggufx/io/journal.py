"""The undo journal that keeps a local GGUF consistent across crashes, and its replay.

Before ggufx overwrites bytes of a file in place (or inserts a range into it), it saves the bytes to
``FILE.ggufx-journal`` and fsyncs it with the directory. The journal ends with an xxh3 checksum: an
incomplete journal means the file was never touched and is simply removed; a complete one is
replayed (an inserted range collapsed again, the saved bytes written back) by the next ggufx command
that opens the file (:func:`recover`, called by :func:`ggufx.model.open_model`). Rewrites leave at
most a stale ``.FILE.ggufx-tmp-PID`` beside the file, which recovery removes too.

This is the *reading* side's half of crash safety, so it sits in the I/O layer; the write
strategies that create journals are :mod:`ggufx.edit.safewrite`. Recovery takes the same exclusive
``flock`` as an edit, so a reader never replays the journal of an edit that is still running.
"""

from __future__ import annotations

import fcntl
import glob
import os
import struct
import time

from ggufx.errors import EditError
from ggufx.io import faults

JOURNAL_SUFFIX = ".ggufx-journal"
JOURNAL_MAGIC = b"GGUFXJ02"
JOURNAL_TRAILER = b"END!"
_HEAD = struct.Struct("<QQQQ")  # old_size, insert_at, insert_len, number of ranges
_RANGE = struct.Struct("<QQ")  # offset, length
NO_INSERT = 2**64 - 1

FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_INSERT_RANGE = 0x20


def journal_path(path: str) -> str:
    return path + JOURNAL_SUFFIX


def tmp_pattern(path: str) -> str:
    d, name = os.path.split(path)
    return os.path.join(d, f".{glob.escape(name)}.ggufx-tmp-*")


def fsync_dir(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path)) or "."
    fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock(fd: int, path: str, timeout: float = 10.0) -> None:
    """Exclusive advisory lock on an open file, waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise EditError(path, None, "another process is editing this file (it holds the ggufx lock)") from None
            time.sleep(0.05)


# -- fallocate ---------------------------------------------------------------------------------

_libc = None


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    import ctypes  # only editors that insert ranges pay for it
    import ctypes.util

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if _libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def insert_range(fd: int, offset: int, length: int) -> None:
    _fallocate(fd, FALLOC_FL_INSERT_RANGE, offset, length)


def collapse_range(fd: int, offset: int, length: int) -> None:
    _fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, offset, length)


# -- the journal -------------------------------------------------------------------------------
# layout: magic, head (old_size, insert_at, insert_len, n_ranges), n x (offset, length, bytes),
# xxh3-64 of everything before it, "END!"


def write_journal(
    path: str, old_size: int, ranges: list[tuple[int, bytes]], insert_at: int | None = None, insert_len: int = 0
) -> int:
    """Save ``ranges`` (offset, bytes about to be overwritten) durably. Returns bytes written."""
    import xxhash

    parts = [
        JOURNAL_MAGIC,
        _HEAD.pack(old_size, NO_INSERT if insert_at is None else insert_at, insert_len, len(ranges)),
    ]
    for offset, saved in ranges:
        parts.append(_RANGE.pack(offset, len(saved)))
        parts.append(saved)
    body = b"".join(parts)
    blob = body + xxhash.xxh3_64(body).digest() + JOURNAL_TRAILER
    jp = journal_path(path)
    fd = os.open(jp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        faults.write_at(fd, blob, 0, "journal-write")
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(jp)
        raise
    os.close(fd)
    fsync_dir(jp)
    faults.point("journal-synced")
    return len(blob)


def remove_journal(path: str) -> None:
    os.unlink(journal_path(path))
    fsync_dir(path)
    faults.point("journal-removed")


def _read_journal(jp: str) -> tuple[int, list[tuple[int, bytes]], int | None, int] | None:
    """The journal's content, or None when it is incomplete (the file was never touched)."""
    import xxhash

    with open(jp, "rb") as f:
        blob = f.read()
    n = len(JOURNAL_MAGIC) + _HEAD.size
    if len(blob) < n + 12 or not blob.startswith(JOURNAL_MAGIC) or not blob.endswith(JOURNAL_TRAILER):
        return None
    body = blob[:-12]
    if xxhash.xxh3_64(body).digest() != blob[-12:-4]:
        return None
    old_size, insert_at, insert_len, n_ranges = _HEAD.unpack_from(body, len(JOURNAL_MAGIC))
    ranges = []
    pos = n
    for _ in range(n_ranges):
        offset, length = _RANGE.unpack_from(body, pos)
        pos += _RANGE.size
        ranges.append((offset, body[pos : pos + length]))
        pos += length
    if pos != len(body):
        return None
    return old_size, ranges, None if insert_at == NO_INSERT else insert_at, insert_len


def recover(path: str) -> str | None:
    """Finish what an interrupted edit left: replay a journal (restoring the old file) and remove
    stale temporary files. Returns a message when something was done, else None."""
    jp = journal_path(path)
    if not os.path.exists(jp) and not glob.glob(tmp_pattern(path)):
        return None
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        if os.path.exists(jp):
            raise EditError(
                path,
                None,
                f"an interrupted ggufx edit left {jp} but the file cannot be opened for repair: {e.strerror}",
            ) from None
        return None
    try:
        lock(fd, path)
        done = []
        for tmp in glob.glob(tmp_pattern(path)):  # re-list under the lock
            unlink_quietly(tmp)
            done.append(f"removed stale {os.path.basename(tmp)}")
        msg = replay(fd, path)
        if msg:
            done.append(msg)
        return "; ".join(done) or None
    finally:
        os.close(fd)


def replay(fd: int, path: str) -> str | None:
    """Restore the old bytes from the journal (the caller holds the lock on ``fd``)."""
    jp = journal_path(path)
    if not os.path.exists(jp):
        return None
    content = _read_journal(jp)
    if content is None:
        os.unlink(jp)
        fsync_dir(path)
        return "discarded an incomplete journal (the file had not been touched)"
    old_size, ranges, insert_at, insert_len = content
    size = os.fstat(fd).st_size
    if insert_at is not None and size == old_size + insert_len:
        collapse_range(fd, insert_at, insert_len)
        size = old_size
    if size != old_size:
        raise EditError(
            path,
            None,
            f"cannot replay {jp}: the file is {size:,} bytes, the journal expects {old_size:,}; it was changed by something other than ggufx",
        )
    for offset, saved in ranges:
        faults.write_at(fd, saved, offset, "recover-write")
    os.fsync(fd)
    os.unlink(jp)
    fsync_dir(path)
    return "restored the file as it was before an interrupted edit"


def unlink_quietly(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass
