"""The reader's fast walk over string arrays (``_Parser._skip_strings``, eight strings a turn) against
its strict walk (``_strict_walk``, every length checked): the same end, values and errors wherever the
buffer runs out, whatever the strings' lengths, and on every truncation of the array."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ggufx.errors import GGUFError
from ggufx.format import reader
from ggufx.format.reader import parse_header

from .fixtures.make_fixtures import ARR, STR, U8, U32, Raw


class _Source:
    """Bytes in memory, served in reads as small as the test wants (``growth`` is the reader's hook)."""

    def __init__(self, data: bytes, size: int | None = None):
        self.path = "walk.gguf"
        self.data = data
        self.size = len(data) if size is None else size
        self.growth = 1.01
        self.reads = 0

    def read(self, offset: int, n: int) -> bytes:
        self.reads += 1
        part = self.data[offset : offset + n]
        return part + bytes(n - len(part))


def _file(strings: list[bytes], lengths: dict[int, int] | None = None) -> bytes:
    """A file whose ``tok`` array holds ``strings``, with a key after it; ``lengths`` overrides the
    stored length of some strings (a hostile file)."""
    r = Raw()
    r.kv("general.architecture", STR, r.s("llama"))
    body = b"".join(r.s(s, (lengths or {}).get(i)) for i, s in enumerate(strings))
    r.kv("tok", ARR, r.p("iQ", STR, len(strings)) + body)
    # zeros after the array read as empty strings: a walk that loses count ends inside the file, wrong
    r.kv("zeros", ARR, r.p("iQ", U8, 4096) + bytes(4096))
    r.kv("after", U32, r.p("I", 7))
    r.tensor("a.weight", (8,), 0, 0)
    r.data = bytes(32)
    return r.build()


def _parse(data: bytes, strict: bool, monkeypatch: pytest.MonkeyPatch, first: int, size: int | None = None):
    """The header as parsed (or the error raised), with a first read of ``first`` bytes and the
    fast walk replaced by the strict one when ``strict``."""
    with monkeypatch.context() as m:
        m.setattr(reader, "FIRST_READ", first)
        m.setattr(reader, "HINT_CAP", 1)  # the estimate of the array's end reads (almost) nothing ahead
        if strict:
            m.setattr(reader._Parser, "_skip_strings", reader._Parser._strict_walk)
        try:
            h = parse_header(_Source(data, size))
        except GGUFError as e:
            return ("error", type(e).__name__, e.offset, e.message)
    kv = h.kvs["tok"]
    return ("ok", kv.value.tolist(), kv.end, h.kvs["after"].value, h.header_end)


STRINGS = st.lists(st.binary(max_size=300), max_size=70)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strings=STRINGS, first=st.integers(min_value=24, max_value=600))
def test_fast_walk_agrees_with_the_strict_walk(strings: list[bytes], first: int, monkeypatch) -> None:
    """Valid arrays of any lengths (empty strings, long ones past a byte), the buffer running out
    inside any block of eight: the same strings, end and next key as the strict walk."""
    data = _file(strings)
    fast = _parse(data, False, monkeypatch, first)
    assert fast == _parse(data, True, monkeypatch, first)
    assert fast[0] == "ok" and fast[1] == [s.decode("utf-8", "surrogateescape") for s in strings]
    assert fast[3] == 7


def test_every_truncation_of_the_array_is_the_strict_walks_error(monkeypatch) -> None:
    """Cut inside the array at every byte: the fast walk names the same string, offset and message
    as the strict walk (a string that runs past the end of the file)."""
    strings = [bytes([65 + i % 26]) * (i * 7 % 23) for i in range(40)]
    data = _file(strings)
    start = data.index(b"tok") + 3 + 12
    end = start + sum(8 + len(s) for s in strings)
    for cut in range(start, end + 1):
        for first in (24, 97, 1 << 20):
            fast = _parse(data[:cut], False, monkeypatch, first)
            assert fast[0] == "error", cut
            assert fast == _parse(data[:cut], True, monkeypatch, first), (cut, first)


@pytest.mark.parametrize("at", [0, 3, 7, 8, 13, 39])
@pytest.mark.parametrize("how", ["past-the-file", "over-llama-limit", "past-any-buffer"])
def test_a_hostile_length_is_named_as_the_strict_walk_names_it(at: int, how: str, monkeypatch) -> None:
    """One length that overruns the file, breaks llama.cpp's 2**30 limit inside a larger (virtual)
    file, or is near 2**64: the same one-line error as the strict walk, at the same offset."""
    strings = [b"tok%d" % i for i in range(40)]
    n = {"past-the-file": 10_000, "over-llama-limit": (1 << 30) + 1, "past-any-buffer": (1 << 64) - 9}[how]
    data = _file(strings, {at: n})
    size = 4 << 30 if how == "over-llama-limit" else None
    for first in (24, 200, 1 << 20):
        fast = _parse(data, False, monkeypatch, first, size)
        assert fast[0] == "error"
        assert fast == _parse(data, True, monkeypatch, first, size)
        assert f"string {at} of array 'tok'" in fast[3]
