"""Crash-safe writes: an undo journal for in-place header rewrites, range insertion, atomic replace.

At every instant the file on disk is the old file or the new file, or a journal beside it lets the
next ggufx command restore the old one before doing anything else:

* In place (and insert-range): the bytes about to be overwritten are saved to ``FILE.ggufx-journal``
  and fsynced (with the directory) *before* the file is touched. The journal ends with an xxh3
  checksum; an incomplete journal means the file was never touched and is simply removed. A
  complete journal is replayed: a range inserted by ``fallocate(FALLOC_FL_INSERT_RANGE)`` is
  collapsed again, the saved bytes are written back, and the journal is removed.
* Rewrite: the new file is written beside the old one (``.FILE.ggufx-tmp-PID``), fsynced, given the
  old file's mode and renamed over it; the directory is fsynced. A crash leaves the old file and a
  stale temporary file, which the next edit removes.

Editors hold an exclusive ``flock`` on the file for the whole edit; recovery takes it too, so a
reader never replays the journal of an edit that is still running.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import struct
import time
from typing import Callable

from ggufx.edit import faults
from ggufx.errors import GGUFError

JOURNAL_SUFFIX = ".ggufx-journal"
JOURNAL_MAGIC = b"GGUFXJ02"
JOURNAL_TRAILER = b"END!"
_HEAD = struct.Struct("<QQQQ")  # old_size, insert_at, insert_len, number of ranges
_RANGE = struct.Struct("<QQ")  # offset, length
NO_INSERT = 2**64 - 1

FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_INSERT_RANGE = 0x20


class EditError(GGUFError):
    """An edit could not be done (and the file was left as it was)."""


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


def supports_insert_range(path: str) -> bool:
    """Probe the filesystem holding ``path`` (ext4 and xfs say yes, tmpfs and btrfs no)."""
    import sys
    import tempfile

    if not sys.platform.startswith("linux"):
        return False
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".ggufx-probe-")
    except OSError:
        return False
    try:
        bs = os.fstat(fd).st_blksize or 4096
        os.ftruncate(fd, 2 * bs)
        insert_range(fd, bs, bs)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(tmp)


# -- the journal -------------------------------------------------------------------------------
# layout: magic, head (old_size, insert_at, insert_len, n_ranges), n x (offset, length, bytes),
# xxh3-64 of everything before it, "END!"

def write_journal(path: str, old_size: int, ranges: list[tuple[int, bytes]], insert_at: int | None = None,
                  insert_len: int = 0) -> int:
    """Save ``ranges`` (offset, bytes about to be overwritten) durably. Returns bytes written."""
    import xxhash

    parts = [JOURNAL_MAGIC, _HEAD.pack(old_size, NO_INSERT if insert_at is None else insert_at, insert_len, len(ranges))]
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
        _unlink_quietly(jp)
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
        ranges.append((offset, body[pos:pos + length]))
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
            raise EditError(path, None, f"an interrupted ggufx edit left {jp} but the file cannot be opened for repair: {e.strerror}") from None
        return None
    try:
        lock(fd, path)
        done = []
        for tmp in glob.glob(tmp_pattern(path)):  # re-list under the lock
            _unlink_quietly(tmp)
            done.append(f"removed stale {os.path.basename(tmp)}")
        msg = _replay(fd, path)
        if msg:
            done.append(msg)
        return "; ".join(done) or None
    finally:
        os.close(fd)


def _replay(fd: int, path: str) -> str | None:
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
        raise EditError(path, None, f"cannot replay {jp}: the file is {size:,} bytes, the journal expects {old_size:,}; it was changed by something other than ggufx")
    for offset, saved in ranges:
        faults.write_at(fd, saved, offset, "recover-write")
    os.fsync(fd)
    os.unlink(jp)
    fsync_dir(path)
    return "restored the file as it was before an interrupted edit"


def _unlink_quietly(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


# -- writing -----------------------------------------------------------------------------------

def patch_in_place(fd: int, path: str, old_size: int, ranges: list[tuple[int, bytes, bytes]]) -> int:
    """Overwrite each (offset, new bytes, old bytes) range in place, under one journal."""
    def write() -> int:
        n = 0
        for off, new, old in ranges:
            assert len(new) == len(old)
            n += faults.write_at(fd, new, off, "header-write")
        return n

    return _journaled(fd, path, old_size, [(off, old) for off, _, old in ranges], write)


def insert_and_patch(fd: int, path: str, old_size: int, insert_at: int, insert_len: int, old_header: bytes,
                     new_header: bytes) -> int:
    """Insert ``insert_len`` bytes at ``insert_at`` (no data copied) and write the new header."""
    def write() -> int:
        insert_range(fd, insert_at, insert_len)
        os.fsync(fd)
        faults.point("insert-range")
        return faults.write_at(fd, new_header, 0, "header-write")

    return _journaled(fd, path, old_size, [(0, old_header)], write, insert_at, insert_len)


def _journaled(fd: int, path: str, old_size: int, saved: list[tuple[int, bytes]], write: Callable[[], int],
               insert_at: int | None = None, insert_len: int = 0) -> int:
    """Journal ``saved``, run ``write``, fsync, drop the journal; undo at once if ``write`` fails."""
    written = write_journal(path, old_size, saved, insert_at, insert_len)
    _check_size_or_drop_journal(fd, path, old_size)
    try:
        written += write()
        os.fsync(fd)
        faults.point("header-synced")
    except BaseException:
        _rollback(fd, path)
        raise
    remove_journal(path)
    return written


def _check_size(fd: int, path: str, expected: int) -> None:
    size = os.fstat(fd).st_size
    if size != expected:
        raise EditError(path, None, f"the file changed size during the edit ({expected:,} -> {size:,} bytes); nothing was written")


def _check_size_or_drop_journal(fd: int, path: str, expected: int) -> None:
    try:
        _check_size(fd, path, expected)
    except EditError:
        remove_journal(path)  # nothing was written yet
        raise


def _rollback(fd: int, path: str) -> None:
    """Undo a failed (not crashed) in-place write at once, from the journal just written."""
    try:
        _replay(fd, path)
    except OSError:
        pass  # the journal stays; the next ggufx command replays it


def rewrite(src_path: str, dst_path: str, header: bytes, data_from: int, data_len: int, mode: int,
            progress: Callable[[int, int], None] | None = None, expected_size: int | None = None) -> int:
    """Write ``header`` + the source's bytes [data_from, data_from + data_len) to a temporary file
    beside ``dst_path``, fsync it and rename it over ``dst_path``. Returns bytes written."""
    d, name = os.path.split(os.path.abspath(dst_path))
    tmp = os.path.join(d, f".{name}.ggufx-tmp-{os.getpid()}")
    src = os.open(src_path, os.O_RDONLY)
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        os.close(src)
        raise
    try:
        if hasattr(os, "posix_fadvise"):  # read-ahead for one long sequential read, as cp asks for
            os.posix_fadvise(src, data_from, data_len, os.POSIX_FADV_SEQUENTIAL)
        try:
            faults.write_at(out, header, 0, "tmp-write")
            copied = _copy_range(src, out, data_from, len(header), data_len, progress)
            if expected_size is not None:
                _check_size(src, src_path, expected_size)
            os.fsync(out)
            os.fchmod(out, mode & 0o7777)
        finally:
            os.close(out)
        faults.point("tmp-synced")
        os.replace(tmp, dst_path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    finally:
        os.close(src)
    fsync_dir(dst_path)
    faults.point("renamed")
    return len(header) + copied


COPY_CHUNK = 64 << 20


def _copy_range(src: int, dst: int, src_off: int, dst_off: int, length: int,
                progress: Callable[[int, int], None] | None) -> int:
    """Kernel-side copy (copy_file_range, else sendfile-like pread/pwrite with big buffers)."""
    done = 0
    use_cfr = hasattr(os, "copy_file_range")
    chunk = COPY_CHUNK if progress else 1 << 30  # big kernel-side copies unless a progress bar wants news
    # byte-counted fault injection needs the pwrite path, where every written byte is ours to count
    use_cfr = use_cfr and not os.environ.get("GGUFX_FAULT", "").startswith("tmp-write")
    while done < length:
        n = min(chunk, length - done)
        if use_cfr:
            try:
                k = os.copy_file_range(src, dst, n, src_off + done, dst_off + done)
            except OSError as e:
                if e.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    use_cfr = False
                    continue
                raise
        else:
            buf = os.pread(src, n, src_off + done)
            k = faults.write_at(dst, buf, dst_off + done, "tmp-write") if buf else 0
        if k == 0:
            raise EditError(None, src_off + done, "the source file ended early (it shrank during the edit)")
        done += k
        if progress:
            progress(done, length)
    return done
