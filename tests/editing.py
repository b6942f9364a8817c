"""Helpers for edit tests: hashes of the data section and byte-exact file snapshots."""

from __future__ import annotations

from pathlib import Path

import xxhash

import ggufx


def data_hash(path: Path) -> str:
    """xxh3-128 of everything from the data section start to the end of the file."""
    m = ggufx.open(path)
    h = xxhash.xxh3_128()
    with open(m.shards[0].path, "rb") as f:
        f.seek(m.header.data_offset)
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
