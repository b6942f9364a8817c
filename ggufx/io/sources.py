"""Byte sources: where the reader gets its bytes from.

The reader asks a source for ``read(offset, n)`` and never for more than the header needs, so the
same parser serves local files (``os.pread``, no shared file position) and HTTP range requests
(:class:`ggufx.io.remote.HTTPSource`). A source knows its total ``size`` up front; every length in the file is checked against
it before anything is read or allocated.
"""

from __future__ import annotations

import os
import stat

from ggufx.errors import SourceError

REMOTE_PREFIXES = ("http://", "https://", "hf://")


def is_remote(location: str | os.PathLike[str]) -> bool:
    """A URL or hf:// reference (read by :mod:`ggufx.io.remote`), not a local path."""
    return isinstance(location, str) and location.startswith(REMOTE_PREFIXES)


class FileSource:
    """A local file read with positional reads."""

    __slots__ = ("path", "size", "identity", "_fd", "bytes_read", "reads")

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise SourceError(self.path, None, "no such file") from None
        except IsADirectoryError:
            raise SourceError(self.path, None, "is a directory, not a GGUF file") from None
        except PermissionError:
            raise SourceError(self.path, None, "permission denied") from None
        except OSError as e:
            raise SourceError(self.path, None, e.strerror or str(e)) from None
        st = os.fstat(self._fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(self._fd)
            raise SourceError(self.path, None, "is a directory, not a GGUF file")
        self.size = st.st_size
        # which version of which file this is (ggufx.io.header_index's key): any write changes it
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        self.bytes_read = 0
        self.reads = 0

    def read(self, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``offset`` (short only if the file shrank under us)."""
        chunks = []
        want = n
        while want > 0:
            try:
                b = os.pread(self._fd, want, offset)
            except OSError as e:
                raise SourceError(self.path, offset, f"read failed: {e.strerror or e}") from None
            if not b:
                break
            chunks.append(b)
            offset += len(b)
            want -= len(b)
        self.reads += 1
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.bytes_read += len(data)
        if len(data) != n:
            raise SourceError(self.path, offset, f"file shrank while reading (wanted {n} bytes, got {len(data)})")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class FdSource:
    """An already open file descriptor (the edit engine reads the header it holds locked)."""

    def __init__(self, path: str, fd: int, size: int):
        self.path, self._fd, self.size = path, fd, size

    def read(self, offset: int, n: int) -> bytes:
        data = os.pread(self._fd, n, offset)
        if len(data) != n:
            raise SourceError(self.path, offset, "the file shrank while reading")
        return data


class MemorySource:
    """Bytes in memory presented as a file of ``size`` bytes; reads past them give zeros (a header
    parsed before its data section exists)."""

    def __init__(self, path: str, data: bytes, size: int):
        self.path, self._data, self.size = path, data, size

    def read(self, offset: int, n: int) -> bytes:
        end = min(offset + n, len(self._data))
        chunk = self._data[offset:end]
        return chunk + bytes(n - len(chunk))


def close_source(src: object) -> None:
    """Close a byte source if it has anything to close."""
    close = getattr(src, "close", None)
    if close is not None:
        close()
