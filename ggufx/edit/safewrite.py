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

Editors hold an exclusive ``flock`` on the file for the whole edit. The journal's format and its
replay live in :mod:`ggufx.io.journal` (every reader recovers before reading).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from ggufx.errors import EditError
from ggufx.io import faults
from ggufx.io.journal import (
    fsync_dir,
    insert_range,
    journal_path,
    lock,
    recover,
    remove_journal,
    replay,
    tmp_pattern,
    unlink_quietly,
    write_journal,
)

__all__ = [
    "EditError",
    "fsync_dir",
    "journal_path",
    "lock",
    "recover",
    "remove_journal",
    "tmp_pattern",
    "write_journal",
    "supports_insert_range",
    "patch_in_place",
    "insert_and_patch",
    "rewrite",
]


def supports_insert_range(path: str) -> bool:
    """Probe the filesystem holding ``path`` (ext4 and xfs say yes, tmpfs and btrfs no).

    The probe is an unnamed ``O_TMPFILE`` in the same directory: it has no name to leave behind,
    even if the process is killed during the probe."""
    import sys

    if not sys.platform.startswith("linux") or not hasattr(os, "O_TMPFILE"):
        return False
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError:  # no O_TMPFILE on this filesystem, or no write permission
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


def patch_in_place(fd: int, path: str, old_size: int, ranges: list[tuple[int, bytes, bytes]]) -> int:
    """Overwrite each (offset, new bytes, old bytes) range in place, under one journal."""

    def write() -> int:
        n = 0
        for off, new, old in ranges:
            assert len(new) == len(old)
            n += faults.write_at(fd, new, off, "header-write")
        return n

    return _journaled(fd, path, old_size, [(off, old) for off, _, old in ranges], write)


def insert_and_patch(
    fd: int, path: str, old_size: int, insert_at: int, insert_len: int, old_header: bytes, new_header: bytes
) -> int:
    """Insert ``insert_len`` bytes at ``insert_at`` (no data copied) and write the new header."""

    def write() -> int:
        insert_range(fd, insert_at, insert_len)
        os.fsync(fd)
        faults.point("insert-range")
        return faults.write_at(fd, new_header, 0, "header-write")

    return _journaled(fd, path, old_size, [(0, old_header)], write, insert_at, insert_len)


def _journaled(
    fd: int,
    path: str,
    old_size: int,
    saved: list[tuple[int, bytes]],
    write: Callable[[], int],
    insert_at: int | None = None,
    insert_len: int = 0,
) -> int:
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
        raise EditError(
            path, None, f"the file changed size during the edit ({expected:,} -> {size:,} bytes); nothing was written"
        )


def _check_size_or_drop_journal(fd: int, path: str, expected: int) -> None:
    try:
        _check_size(fd, path, expected)
    except EditError:
        remove_journal(path)  # nothing was written yet
        raise


def _rollback(fd: int, path: str) -> None:
    """Undo a failed (not crashed) in-place write at once, from the journal just written."""
    try:
        replay(fd, path)
    except OSError:
        pass  # the journal stays; the next ggufx command replays it


def rewrite(
    src_path: str,
    dst_path: str,
    header: bytes,
    data_from: int,
    data_len: int,
    mode: int,
    progress: Callable[[int, int], None] | None = None,
    expected_size: int | None = None,
) -> int:
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
        unlink_quietly(tmp)
        raise
    finally:
        os.close(src)
    fsync_dir(dst_path)
    faults.point("renamed")
    return len(header) + copied


COPY_CHUNK = 64 << 20


def _copy_range(
    src: int, dst: int, src_off: int, dst_off: int, length: int, progress: Callable[[int, int], None] | None
) -> int:
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
