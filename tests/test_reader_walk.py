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


# -- tensor infos: the loop asks the buffer to grow only at its edge, and multiplies shapes out at once --


def _tensors_file(shapes: list[tuple[int, ...]]) -> tuple[bytes, Raw]:
    r = Raw()
    r.kv("general.architecture", STR, r.s("llama"))
    offset = 0
    for i, shape in enumerate(shapes):
        r.tensor(f"t{i}.weight", shape, 0, offset)  # F32
        n = 1
        for d in shape:
            n *= d
        offset += -(-n * 4 // 32) * 32
    r.data = bytes(offset)
    return r.build(), r


@pytest.mark.parametrize("first", [24, 61, 130, 1 << 20])
def test_tensor_infos_read_the_same_wherever_the_buffer_ends(first: int, monkeypatch) -> None:
    shapes = [(8,), (16, 3), (0, 5), (32, 2, 1, 4), ()]
    data, _ = _tensors_file(shapes)
    with monkeypatch.context() as m:
        m.setattr(reader, "FIRST_READ", first)
        h = parse_header(_Source(data))
    assert [t.shape for t in h.tensors] == shapes
    assert [t.n_elements for t in h.tensors] == [8, 48, 0, 256, 1]
    assert [t.nbytes for t in h.tensors] == [32, 192, 0, 1024, 4]


@pytest.mark.parametrize(
    "shape, d, phrase",
    [
        ((1 << 32, 1 << 32), 1, "element count overflows int64 (shape [4294967296, 4294967296])"),
        ((1 << 40, 1 << 40, 0), 1, "element count overflows int64"),  # the whole product is 0: refused all the same
        ((4, -1), 1, "has dimension 1 = -1, must not be negative"),
        ((-4, 1 << 62, 1 << 62), 0, "has dimension 0 = -4, must not be negative"),
        ((1 << 62, 2, -1), 1, "element count overflows int64 (shape [4611686018427387904, 2, -1])"),
    ],
)
def test_a_bad_shape_is_named_at_its_dimension(shape: tuple[int, ...], d: int, phrase: str) -> None:
    data, r = _tensors_file([(8,)])
    r.tinfos.append(r.s("bad.weight") + r.p("I", len(shape)) + b"".join(r.p("q", x) for x in shape) + r.p("iQ", 0, 32))
    data = r.build() + bytes(64)
    with pytest.raises(GGUFError) as e:
        parse_header(_Source(data))
    dims_at = r.offsets()["tinfo1"] + 8 + len("bad.weight") + 4
    assert e.value.offset == dims_at + 8 * d
    assert e.value.message.startswith(f"tensor 'bad.weight' {phrase}")


def test_every_truncation_of_a_tensor_info_names_its_field() -> None:
    """Cut at every byte of the second tensor info: the error names the field the cut falls in, at
    the offset gguf.cpp would stop at."""
    data, r = _tensors_file([(8,), (16, 3)])
    s = r.offsets()["tinfo1"]
    name = b"t1.weight"
    fields = [
        (s + 8, "length of tensor name", s),
        (s + 8 + len(name), "tensor name", s),
        (s + 8 + len(name) + 4, "tensor 't1.weight'", s + 8 + len(name)),
        (s + 8 + len(name) + 4 + 16 + 12, "tensor 't1.weight'", s + 8 + len(name) + 4),
    ]
    for cut in range(s, fields[-1][0]):
        end, what, at = next(f for f in fields if cut < f[0])
        with pytest.raises(GGUFError) as e:
            parse_header(_Source(data[:cut]))
        assert (e.value.offset, e.value.message.split(" runs past")[0]) == (at, what), cut


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 23, 64])
def test_string_index_of_any_count(n: int) -> None:
    """The lazy index of a string array (eight strings a turn, then the rest): every item, raw and
    decoded, and ``count + 1`` offsets, for counts around the block size."""
    strings = [bytes([97 + i % 26]) * (i % 11) + b"\xff" * (i % 3 == 0) for i in range(n)]
    h = parse_header(_Source(_file(strings)))
    arr = h.kvs["tok"].value
    assert [arr.raw_item(i) for i in range(n)] == strings
    assert arr.tolist() == [s.decode("utf-8", "surrogateescape") for s in strings]
    assert arr._index is not None and len(arr._index) == n + 1 and arr._index[-1] == h.kvs["tok"].end
