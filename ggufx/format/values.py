"""GGUF metadata value types and lazily decoded arrays.

Scalars are decoded when the header is parsed. Arrays are only *indexed*: the reader records where
their elements start and how many bytes they span, and :class:`GGUFArray` decodes elements when
someone asks for them. A 262,144-entry token list therefore costs one pass over its length
prefixes at open time and no Python objects until it is used.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator, Sequence
from enum import IntEnum
from typing import Any, overload


class ValueType(IntEnum):
    """The 13 GGUF metadata value types (ids as in ``gguf.h``)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12

    @property
    def short(self) -> str:
        """Short name as used on the command line: ``u32``, ``f32``, ``str``, ``arr``..."""
        return _SHORT[self]


_SHORT = {
    ValueType.UINT8: "u8",
    ValueType.INT8: "i8",
    ValueType.UINT16: "u16",
    ValueType.INT16: "i16",
    ValueType.UINT32: "u32",
    ValueType.INT32: "i32",
    ValueType.FLOAT32: "f32",
    ValueType.BOOL: "bool",
    ValueType.STRING: "str",
    ValueType.ARRAY: "arr",
    ValueType.UINT64: "u64",
    ValueType.INT64: "i64",
    ValueType.FLOAT64: "f64",
}
SHORT_NAMES = {v: k for k, v in _SHORT.items()}

# struct format character and size in bytes of each fixed-size type
SCALAR_FORMAT: dict[ValueType, str] = {
    ValueType.UINT8: "B",
    ValueType.INT8: "b",
    ValueType.UINT16: "H",
    ValueType.INT16: "h",
    ValueType.UINT32: "I",
    ValueType.INT32: "i",
    ValueType.FLOAT32: "f",
    ValueType.BOOL: "?",
    ValueType.UINT64: "Q",
    ValueType.INT64: "q",
    ValueType.FLOAT64: "d",
}
SCALAR_SIZE: dict[ValueType, int] = {t: struct.calcsize(f) for t, f in SCALAR_FORMAT.items()}


def decode_str(raw: bytes | bytearray | memoryview) -> str:
    """A GGUF string as Python text; invalid UTF-8 survives as surrogate escapes (lossless)."""
    return bytes(raw).decode("utf-8", "surrogateescape")


def encode_str(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def f32_short(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (1e-06, not 9.99999997e-07)."""
    if value != value or value in (float("inf"), float("-inf")):
        return value
    target = struct.pack("<f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == target:
            return candidate
    return value


class GGUFArray(Sequence[Any]):
    """A metadata array whose elements are decoded on demand.

    ``buf`` is the header buffer; ``offset`` is where the first element starts in it (which is also
    its offset in the file), ``nbytes`` how many bytes the elements span. For string arrays the
    per-element offsets are built on first access (one pass over the length prefixes).
    """

    __slots__ = ("elem_type", "count", "offset", "nbytes", "_buf", "_bo", "_index", "_items")

    # the number of elements (= len()): a public attribute that hides Sequence.count(value) on purpose
    count: int  # type: ignore[assignment]

    def __init__(
        self,
        buf: bytes | bytearray,
        byte_order: str,
        elem_type: ValueType,
        count: int,
        offset: int,
        nbytes: int,
        items: list[GGUFArray] | None = None,
    ):
        self._buf = buf
        self._bo = byte_order
        self.elem_type = elem_type
        self.count = count
        self.offset = offset
        self.nbytes = nbytes
        self._index: array[int] | None = None
        self._items = items  # nested arrays are decoded eagerly (they are rare and small)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"GGUFArray({self.elem_type.name}, {self.count})"

    def raw(self) -> bytes:
        """The elements' bytes exactly as stored in the file."""
        return bytes(self._buf[self.offset : self.offset + self.nbytes])

    def _string_index(self) -> array[int]:
        """Where each string starts, and where the last ends (``count + 1`` offsets), built on first
        use; eight strings a turn (the reader has checked every length: no bound checks here)."""
        if self._index is None:
            idx = array("Q")
            app = idx.append
            unpack = struct.Struct(self._bo + "Q").unpack_from
            buf = self._buf
            pos = self.offset
            for _ in range(self.count >> 3):
                app(pos)
                pos += 8 + unpack(buf, pos)[0]
                app(pos)
                pos += 8 + unpack(buf, pos)[0]
                app(pos)
                pos += 8 + unpack(buf, pos)[0]
                app(pos)
                pos += 8 + unpack(buf, pos)[0]
                app(pos)
                pos += 8 + unpack(buf, pos)[0]
                app(pos)
                pos += 8 + unpack(buf, pos)[0]
                app(pos)
                pos += 8 + unpack(buf, pos)[0]
                app(pos)
                pos += 8 + unpack(buf, pos)[0]
            for _ in range(self.count & 7):
                app(pos)
                pos += 8 + unpack(buf, pos)[0]
            app(pos)
            self._index = idx
        return self._index

    def raw_item(self, i: int) -> bytes:
        """Element ``i`` of a string array as raw bytes (tokens may not be valid UTF-8)."""
        if self.elem_type is not ValueType.STRING:
            raise TypeError("raw_item() is for string arrays")
        idx = self._string_index()
        return bytes(self._buf[idx[i] + 8 : idx[i + 1]])

    def _get(self, i: int) -> Any:
        t = self.elem_type
        if t is ValueType.STRING:
            return decode_str(self.raw_item(i))
        if t is ValueType.ARRAY:
            return self._items[i]  # type: ignore[index]
        size = SCALAR_SIZE[t]
        (v,) = struct.unpack_from(self._bo + SCALAR_FORMAT[t], self._buf, self.offset + i * size)
        return v

    @overload
    def __getitem__(self, i: int) -> Any: ...

    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(self.count))]
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError("GGUFArray index out of range")
        return self._get(i)

    def __iter__(self) -> Iterator[Any]:
        if self.elem_type is ValueType.ARRAY:
            return iter(self._items)  # type: ignore[arg-type]
        return iter(self.tolist())

    def tolist(self) -> list[Any]:
        """All elements as Python values (nested arrays become nested lists)."""
        t = self.elem_type
        if t is ValueType.STRING:
            idx = self._string_index()
            buf = self._buf
            return [decode_str(buf[idx[i] + 8 : idx[i + 1]]) for i in range(self.count)]
        if t is ValueType.ARRAY:
            return [a.tolist() for a in self._items]  # type: ignore[union-attr]
        fmt = f"{self._bo}{self.count}{SCALAR_FORMAT[t]}"
        return list(struct.unpack_from(fmt, self._buf, self.offset))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GGUFArray):
            return self.elem_type == other.elem_type and self.tolist() == other.tolist()
        if isinstance(other, (list, tuple)):
            return self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
