"""Parse one GGUF file's header: metadata and tensor infos, never tensor data.

The checks follow llama.cpp's ``ggml/src/gguf.cpp`` (the limits are in :mod:`ggufx.format.spec`,
each with its source line): every length and count is bounded by what is left of the file *and* by
llama.cpp's own limit before the bytes it covers are read or anything is allocated (strings and
arrays up to 2**30, tensor names under 64 bytes), keys are non-empty and unique, tensor names
unique, shapes non-negative with element counts and byte sizes that fit int64/size_t, ggml type ids
known to llama.cpp (a removed one is refused with ggml's note), and the data section - every tensor
padded to the alignment, in order - must be inside the file, as gguf.cpp reads it. Anything else is
a :class:`~ggufx.errors.GGUFError` naming the file and offset.

Two deliberate differences, both documented in docs/hostile-input.md: a tensor whose type id is newer than the
pinned llama.cpp (``>= GGML_TYPE_COUNT``) is read with its size derived from the next tensor's
offset (a *last* tensor of such a type is refused: nothing bounds its size), and, as gguf-py
writes them, big-endian files and nested arrays are read.

The parser reads through a byte source (``read(offset, n)``): it asks for a first block and grows
it geometrically as the header demands, so a local file and an HTTP range source cost the same
few reads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from math import prod
from typing import Any, Protocol

from ggufx.errors import FormatError, TruncatedError, UnsupportedVersionError, ValidationError
from ggufx.format.ggmltypes import GGMLType, ggml_type
from ggufx.format.spec import (
    GGML_MAX_DIMS,
    GGML_MAX_NAME,
    GGML_TYPE_COUNT,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_MAX_ARRAY_ELEMENTS,
    GGUF_MAX_STRING_LENGTH,
    INT64_MAX,
    LLAMA_CPP_VERSION,
    SIZE_MAX,
    align,
)
from ggufx.format.values import SCALAR_FORMAT, SCALAR_SIZE, GGUFArray, ValueType

# nested arrays are a gguf-py extension that llama.cpp refuses outright (gguf.cpp:609); ggufx reads
# them, eagerly, so it bounds how deep they go and how many one key may hold (a Python object each)
MAX_ARRAY_DEPTH = 8
MAX_NESTED_ARRAYS = 1 << 16
FIRST_READ = 1 << 20
STRING_ESTIMATE_MARGIN = 1.2
# how much a local file's buffer grows when it runs out: every byte read costs two page faults of
# fresh memory (the bytes read and their copy in the buffer), about a millisecond per MB on a small
# VM, far more than another read, so little overshoot (1.25: Gemma 3's 6.5 MB header is read as
# 7.5 MB in four reads, against 9.6 MB in three when the buffer doubled)
LOCAL_GROWTH = 1.25
HINT_CAP = 16 << 20  # how far past the buffer an estimate of a vocabulary's end may read at once
PREAMBLE_SIZE = 24  # magic, version, tensor count, metadata count
MIN_TENSOR_INFO = 24  # bytes of the smallest tensor info: empty name, no dimensions, type, offset
MIN_KV = 13  # bytes of the smallest metadata record: empty key, type, a one-byte value

# a tensor info as read, before the layout step sizes and places it (a plain tuple: a model has
# thousands): name, shape, type, data offset, element count, offset of the info in the file
# name, shape, type, data offset, elements, where its info starts, ggml_nbytes (-1: a type newer than the table)
_RawTensor = tuple[str, tuple[int, ...], GGMLType, int, int, int, int]
_uncached_type = ggml_type.__wrapped__  # for ids past the table: ggml_type caches every id it sees
MetaValue = int | float | bool | str | GGUFArray


class ByteSource(Protocol):
    path: str
    size: int

    def read(self, offset: int, n: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class KV:
    """One metadata entry. ``offset``/``end`` delimit its whole record (key, type, value) in the file."""

    key: str
    type: ValueType
    value: Any
    offset: int
    end: int

    @property
    def elem_type(self) -> ValueType | None:
        """Element type of an array value, else ``None``."""
        return self.value.elem_type if self.type is ValueType.ARRAY else None


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A tensor as the header describes it.

    ``shape`` is in ggml order (``ne[0]`` first, the contiguous dimension). ``offset`` is relative
    to the data section as stored in the file; ``file_offset`` is absolute within its shard.
    ``nbytes`` is ``ggml_nbytes``; for a type missing from the ggml type table it is derived from
    the next tensor's offset (``size_derived`` is then true).
    """

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    offset: int
    file_offset: int
    n_elements: int
    nbytes: int
    shard: int = 0
    info_offset: int = 0
    size_derived: bool = False

    @property
    def bpw(self) -> float:
        """Bits per weight of this tensor: 8 x bytes / elements."""
        return 8.0 * self.nbytes / self.n_elements if self.n_elements else 0.0


def _tensor_info_maker() -> Callable[..., TensorInfo]:
    """``TensorInfo(...)`` for the reader's loop: the same object (fields, equality, hash, repr), its
    fields set through their slots; the frozen dataclass's ``__init__`` sets each with
    ``object.__setattr__`` (1.4 µs a tensor, 0.7 this way: 3 M instructions of the 27B replica's 851)."""
    new = object.__new__
    sets = [getattr(TensorInfo, f.name).__set__ for f in fields(TensorInfo)]
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 = sets

    def make(
        name: str,
        shape: tuple[int, ...],
        gt: GGMLType,
        offset: int,
        file_offset: int,
        n_elements: int,
        nbytes: int,
        shard: int,
        info_offset: int,
        size_derived: bool,
    ) -> TensorInfo:
        t = new(TensorInfo)
        s0(t, name)
        s1(t, shape)
        s2(t, gt)
        s3(t, offset)
        s4(t, file_offset)
        s5(t, n_elements)
        s6(t, nbytes)
        s7(t, shard)
        s8(t, info_offset)
        s9(t, size_derived)
        return t

    return make


_tensor_info = _tensor_info_maker()


@dataclass(slots=True)
class GGUFHeader:
    """Everything before the data section of one file."""

    path: str
    file_size: int
    version: int
    byte_order: str  # '<' little-endian, '>' big-endian
    kvs: dict[str, KV]
    tensors: list[TensorInfo]
    alignment: int
    kv_offset: int  # where the first KV record starts (24)
    tensor_info_offset: int  # where the first tensor info starts
    header_end: int  # end of the last tensor info, before alignment padding
    data_offset: int  # aligned start of the data section
    buf: bytes | bytearray = field(repr=False)

    @property
    def endianness(self) -> str:
        return "little" if self.byte_order == "<" else "big"

    @property
    def tensor_data_end(self) -> int:
        """Absolute end of the last tensor's bytes (the data section may be padded after it)."""
        if not self.tensors:
            return self.data_offset
        return max(t.file_offset + t.nbytes for t in self.tensors)


class _Cursor:
    """A growing prefix of the file, with bound checks that name the offset."""

    __slots__ = ("src", "path", "size", "data", "growth", "first")

    def __init__(self, src: ByteSource, first: int = 0):
        self.src = src
        self.path = src.path
        self.size = src.size
        self.data: bytes | bytearray = bytearray()
        # how much the buffer grows when it runs out (a remote source sets its own)
        self.growth = getattr(src, "growth", LOCAL_GROWTH)
        self.first = first  # the first read's size at least (where an earlier parse found the header's end)

    def need(self, end: int, at: int, what: str, hint: int = 0) -> None:
        """Make sure bytes [0, end) are buffered, or raise a truncation error for ``what`` at ``at``.

        ``hint`` is the parser's estimate of where the structure it is in ends (a vocabulary whose
        strings it has only partly seen), so that one read can cover it."""
        have = len(self.data)
        if end <= have:
            return
        if end > self.size:
            raise TruncatedError(self.path, at, f"{what} runs past the end of the file ({end:,} > {self.size:,} bytes)")
        want = min(self.size, max(end, int(have * self.growth), FIRST_READ, hint, self.first))
        # a source holding only a prefix (a cached header) serves reads within it
        available = getattr(self.src, "available", None)
        if available is not None and end <= available:
            want = min(want, available)
        try:
            more = self.src.read(have, want - have)
            if not have:  # the first read is the buffer, no copy of it (a known header's only read)
                self.data = more
            else:  # a buffer that grows, in place from its first growth on
                if type(self.data) is not bytearray:
                    self.data = bytearray(self.data)
                self.data += more
        except MemoryError:  # a length within llama.cpp's limits and the file, but not this machine's
            raise FormatError(
                self.path, at, f"{what} needs {end:,} bytes of header in memory, more than can be allocated"
            ) from None

    def fail(self, at: int, what: str, cls: type = FormatError) -> None:
        raise cls(self.path, at, what)


def parse_header(src: ByteSource, string_arrays: Mapping[int, tuple[int, int]] | None = None) -> GGUFHeader:
    """Parse and validate the header of ``src``. Costs O(header) reads, never O(file).

    Four steps, each needing the one before: the preamble (magic, version, counts), the metadata
    (which sets the alignment), the tensor infos, and the layout of their data.

    ``string_arrays`` maps the offset of a string array's first element to ``(count, end)`` as an
    earlier parse of the same bytes found them (:mod:`ggufx.io.header_index`): such an array is not
    walked again (the walk is most of the parse of a large vocabulary). An entry whose count differs
    from the file's, or whose end the file cannot hold, is ignored. Offset 0 (no array starts there) maps
    to ``(0, end of the header)``: the first read then takes the whole header, and its bytes are the
    header's buffer (not copied into a growing one: one page fault per page of it, not two, a
    millisecond per MB on a small VM)."""
    cur = _Cursor(src, _known_end(string_arrays) if string_arrays else 0)
    version, bo = _read_version(cur)
    n_tensors, n_kv = _read_counts(cur, bo)
    p = _Parser(cur, bo, string_arrays or {})
    kvs, tensor_info_offset = p.metadata(PREAMBLE_SIZE, n_kv)
    alignment = _alignment(cur.path, kvs)
    infos, header_end = p.tensor_infos(tensor_info_offset, n_tensors, alignment)
    data_offset = _data_offset(cur, header_end, alignment, bool(infos))
    tensors = _place_tensors(cur.path, infos, data_offset, max(0, cur.size - data_offset), alignment)
    return GGUFHeader(
        cur.path,
        cur.size,
        version,
        bo,
        kvs,
        tensors,
        alignment,
        PREAMBLE_SIZE,
        tensor_info_offset,
        header_end,
        data_offset,
        cur.data,
    )


def _known_end(string_arrays: Mapping[int, tuple[int, int]]) -> int:
    """Where an earlier parse found the header to end (0: unknown, or past where its arrays allow)."""
    mark = string_arrays.get(0)
    ends = [end for at, (_, end) in string_arrays.items() if at]
    if mark is None or not ends or not max(ends) <= mark[1] <= max(ends) + HINT_CAP:
        return 0
    return mark[1]


def _read_version(cur: _Cursor) -> tuple[int, str]:
    """Check the magic and read the version, which also tells the byte order: ``(version, '<' or '>')``."""
    path = cur.path
    if cur.size < 4:
        raise TruncatedError(path, 0, f"file is {cur.size} bytes, too small to be GGUF")
    cur.need(min(cur.size, PREAMBLE_SIZE), 0, "header")
    data = cur.data
    if bytes(data[:4]) != GGUF_MAGIC:
        raise FormatError(path, 0, f"not a GGUF file (magic {bytes(data[:4])!r}, expected b'GGUF')")
    cur.need(8, 4, "version")
    (version,) = struct.unpack_from("<I", data, 4)
    bo = "<"
    # a big-endian file's small version number reads as a multiple of 65536 in little-endian
    if version & 0xFFFF == 0 and version != 0:
        bo = ">"
        (version,) = struct.unpack_from(">I", data, 4)
    if version == 1:
        raise UnsupportedVersionError(path, 4, "GGUF version 1 is not supported (llama.cpp reads v2 and v3 only)")
    if version not in (2, 3):
        raise UnsupportedVersionError(path, 4, f"unknown GGUF version {version} (this reader knows 2 and 3)")
    return version, bo


def _read_counts(cur: _Cursor, bo: str) -> tuple[int, int]:
    """Read ``(tensor count, metadata count)``, refusing counts the file is too small to hold."""
    path = cur.path
    cur.need(PREAMBLE_SIZE, 8, "tensor and metadata counts")
    n_tensors, n_kv = struct.unpack_from(bo + "qq", cur.data, 8)
    remaining = cur.size - PREAMBLE_SIZE
    if n_tensors < 0 or n_tensors * MIN_TENSOR_INFO > remaining:
        raise FormatError(path, 8, f"tensor count {n_tensors:,} is impossible for a {cur.size:,}-byte file")
    if n_kv < 0 or n_kv * MIN_KV > remaining:
        raise FormatError(path, 16, f"metadata count {n_kv:,} is impossible for a {cur.size:,}-byte file")
    return n_tensors, n_kv


def _alignment(path: str, kvs: dict[str, KV]) -> int:
    """The data alignment in bytes: ``general.alignment`` (a u32 power of two), else 32 (gguf.cpp:622-636)."""
    akv = kvs.get("general.alignment")
    if akv is None:
        return GGUF_DEFAULT_ALIGNMENT
    if akv.type is not ValueType.UINT32:
        raise ValidationError(path, akv.offset, f"general.alignment must be u32, not {akv.type.short}")
    alignment: int = akv.value
    if alignment == 0 or alignment & (alignment - 1):
        raise ValidationError(path, akv.offset, f"general.alignment {alignment} is not a power of two")
    return alignment


def _data_offset(cur: _Cursor, header_end: int, alignment: int, has_tensors: bool) -> int:
    """Where the data section starts: the end of the header rounded up to the alignment (gguf.cpp:780)."""
    data_offset = align(header_end, alignment)
    if has_tensors and data_offset > cur.size:
        raise TruncatedError(
            cur.path,
            header_end,
            f"data section would start at {data_offset:,}, past the end of the file ({cur.size:,} bytes)",
        )
    return data_offset


def _place_tensors(
    path: str, infos: list[_RawTensor], data_offset: int, data_size: int, alignment: int
) -> list[TensorInfo]:
    """Size each tensor and check that the tensors are packed in order inside the data section.

    ``data_size`` is the bytes from ``data_offset`` to the end of the file. Each tensor takes its
    ``ggml_nbytes`` padded to the alignment, and the whole padded section must be in the file: that
    is what gguf.cpp reads (gguf.cpp:795-818 sums it, :885 reads it; llama-model-loader.h:47 asks
    only for the unpadded bytes, but every GGUF writer pads the last tensor too). A tensor of a type
    newer than the type table is sized by the next tensor's offset; a last tensor of such a type has
    nothing to bound its size and is refused."""
    tensors: list[TensorInfo] = []
    append = tensors.append
    make = _tensor_info
    expected = 0
    last = len(infos) - 1
    for i, (name, shape, gt, offset, n_elements, info_at, nbytes) in enumerate(infos):
        derived = nbytes < 0  # a type newer than the table (gt.known is false): nbytes is ggml_nbytes else
        if derived:
            if i == last:
                raise ValidationError(
                    path,
                    info_at,
                    f"tensor {name!r} has ggml type id {gt.id}, which llama.cpp {LLAMA_CPP_VERSION} does not know "
                    f"(it refuses ids >= {GGML_TYPE_COUNT}), and is the last tensor: ggufx derives the size of a "
                    "newer type only from the next tensor's offset",
                )
            nbytes = infos[i + 1][3] - offset
            if nbytes <= 0:
                raise ValidationError(path, info_at, f"tensor {name!r} of {gt.name} has no room before the next tensor")
        if offset != expected:
            how = "overlaps the previous tensor" if offset < expected else "leaves a gap after the previous tensor"
            raise ValidationError(
                path,
                info_at,
                f"tensor {name!r} has data offset {offset:,}, expected {expected:,} "
                f"(it {how}; llama.cpp requires tensors packed in order)",
            )
        padded = -(-nbytes // alignment) * alignment  # align(nbytes, alignment), without the call
        if offset + padded > data_size:
            size = f"{nbytes:,} bytes" + (f", {padded:,} with its alignment padding" if padded != nbytes else "")
            raise TruncatedError(
                path,
                data_offset + offset,
                f"tensor {name!r} data ({size}, at data offset {offset:,}) runs past the end of the file",
            )
        expected = offset + padded
        append(make(name, shape, gt, offset, data_offset + offset, n_elements, nbytes, 0, info_at, derived))
    return tensors


def _text(path: str, data: bytes | bytearray, start: int, end: int, errors: str = "surrogateescape") -> str:
    """``data[start:end]`` decoded as UTF-8 without copying the bytes first (a string may be 1 GiB);
    invalid UTF-8 survives as surrogate escapes unless ``errors`` is ``'strict'``."""
    try:
        with memoryview(data) as view, view[start:end] as part:
            return str(part, "utf-8", errors)
    except MemoryError:
        raise FormatError(path, start - 8, f"a string of {end - start:,} bytes is more than can be decoded") from None


class _Parser:
    __slots__ = ("cur", "bo", "u64", "i32", "nested", "known")

    def __init__(self, cur: _Cursor, bo: str, known: Mapping[int, tuple[int, int]]):
        self.cur = cur
        self.bo = bo
        self.known = known  # string arrays walked before: first element -> (count, end)
        self.u64 = struct.Struct(bo + "Q")
        self.i32 = struct.Struct(bo + "i")
        self.nested = 0  # nested arrays read for the current key

    def metadata(self, pos: int, n_kv: int) -> tuple[dict[str, KV], int]:
        """Read ``n_kv`` metadata records from ``pos``: ``(records by key, end offset)``."""
        cur = self.cur
        path = cur.path
        kvs: dict[str, KV] = {}
        for _ in range(n_kv):
            start = pos
            a, pos = self.string(pos, "metadata key")
            if a == pos:
                raise ValidationError(path, start, "empty metadata key (llama.cpp refuses it)")
            try:
                key = _text(path, cur.data, a, pos, "strict")
            except UnicodeDecodeError as e:
                why = f"metadata key is not valid UTF-8 ({e.reason} at byte {e.start})"
                raise ValidationError(path, start, why) from None
            if key in kvs:
                raise ValidationError(path, start, f"duplicate metadata key {key!r}")
            vtype, pos = self.value_type(pos, key)
            self.nested = 0
            value, pos = self.value(vtype, pos, key, 0)
            kvs[key] = KV(key, vtype, value, start, pos)
        return kvs, pos

    def tensor_infos(self, pos: int, n_tensors: int, alignment: int) -> tuple[list[_RawTensor], int]:
        """Read ``n_tensors`` tensor infos from ``pos``: ``(infos in file order, end offset)``.

        Each is a name, the number of dimensions, the shape, the ggml type and the data offset,
        checked in gguf.cpp's order (gguf.cpp:645-770). The loop has no helper calls on the good
        path (a model has thousands of tensors): the buffer is asked to grow only when a field
        runs past what it holds, the structs are compiled once, and a shape of positive
        dimensions is multiplied out at once (its running product only grows, so the whole
        product is checked; any other shape goes dimension by dimension)."""
        cur = self.cur
        path = cur.path
        bo = self.bo
        u64 = self.u64.unpack_from
        u32 = struct.Struct(bo + "I").unpack_from
        type_offset = struct.Struct(bo + "iQ").unpack_from
        dims = [struct.Struct(f"{bo}{k}q").unpack_from for k in range(GGML_MAX_DIMS + 1)]
        infos: list[_RawTensor] = []
        names: set[str] = set()
        data = cur.data
        have = len(data)
        for _ in range(n_tensors):
            start = pos
            if pos + 8 > have:
                cur.need(pos + 8, pos, "length of tensor name")
                data, have = cur.data, len(cur.data)
            (n,) = u64(data, pos)
            if n >= GGML_MAX_NAME:  # before reading it: the length may be anything up to the file size
                raise ValidationError(path, start, self._long_name(pos, n))
            pos += 8
            if pos + n > have:
                cur.need(pos + n, start, "tensor name")
                data, have = cur.data, len(cur.data)
            name = data[pos : pos + n].decode("utf-8", "surrogateescape")
            pos += n
            if name in names:
                raise ValidationError(path, start, f"duplicate tensor name {name!r}")
            names.add(name)
            if pos + 4 > have:
                cur.need(pos + 4, pos, f"tensor {name!r}")
                data, have = cur.data, len(cur.data)
            (n_dims,) = u32(data, pos)
            if n_dims > GGML_MAX_DIMS:
                raise ValidationError(
                    path, pos, f"tensor {name!r} has {n_dims} dimensions, ggml allows at most {GGML_MAX_DIMS}"
                )
            pos += 4
            if pos + 8 * n_dims + 12 > have:
                cur.need(pos + 8 * n_dims + 12, pos, f"tensor {name!r}")
                data, have = cur.data, len(cur.data)
            shape = dims[n_dims](data, pos)
            # (min with a default parses its keywords: 0.4 us a tensor)
            if (not shape or min(shape) > 0) and (n_elements := prod(shape)) <= INT64_MAX:
                pass
            else:
                n_elements = self._elements(pos, name, shape)
            pos += 8 * n_dims
            type_id, offset = type_offset(data, pos)
            found: GGMLType | None
            if 0 <= type_id < GGML_TYPE_COUNT:
                found = ggml_type(type_id)
            else:  # not through ggml_type's cache: a hostile file may hold millions of distinct ids
                found = _uncached_type(type_id) if type_id >= 0 else None
            if found is None or not found.known:
                gt = self._unusual_type(pos, name, type_id, found)
                nbytes = -1  # sized by the next tensor's offset (_place_tensors)
            else:
                gt = found
                ne0 = shape[0] if shape else 1  # missing dimensions are 1
                if ne0 % gt.block_size:
                    raise ValidationError(
                        path,
                        pos,
                        f"tensor {name!r}: ne[0] = {ne0} is not a multiple of the {gt.name} block size {gt.block_size}",
                    )
                nbytes = n_elements // gt.block_size * gt.type_size
                if nbytes > SIZE_MAX - (alignment - 1):  # gguf.cpp:749 and :805
                    raise ValidationError(
                        path,
                        pos,
                        f"tensor {name!r} of {gt.name} with shape {list(shape)} has {nbytes:,} bytes, "
                        "more than a 64-bit size can hold once padded",
                    )
            if offset % alignment:
                raise ValidationError(
                    path,
                    pos + 4,
                    f"tensor {name!r} data offset {offset} is not a multiple of the alignment {alignment}",
                )
            pos += 12
            infos.append((name, shape, gt, offset, n_elements, start, nbytes))
        return infos, pos

    def _elements(self, pos: int, name: str, shape: tuple[int, ...]) -> int:
        """The element count of ``shape`` (at ``pos``), dimension by dimension: the first negative
        dimension, or the first running product past int64, is refused (gguf.cpp:692, :706)."""
        path = self.cur.path
        n_elements = 1
        for d, ne in enumerate(shape):
            if ne < 0:  # zero is allowed: an empty tensor (gguf.cpp:692)
                raise ValidationError(
                    path, pos + 8 * d, f"tensor {name!r} has dimension {d} = {ne}, must not be negative"
                )
            n_elements *= ne
            if n_elements > INT64_MAX:
                raise ValidationError(
                    path, pos + 8 * d, f"tensor {name!r} element count overflows int64 (shape {list(shape)})"
                )
        return n_elements

    def _long_name(self, pos: int, n: int) -> str:
        """The message for a tensor name of ``n >= 64`` bytes, reading at most 40 of them."""
        cur = self.cur
        k = max(0, min(n, 40, cur.size - pos - 8))
        cur.need(pos + 8 + k, pos, "tensor name")
        head = cur.data[pos + 8 : pos + 8 + k].decode("utf-8", "surrogateescape")
        return f"tensor name {head!r}... is {n:,} bytes, llama.cpp allows {GGML_MAX_NAME - 1}"

    def _unusual_type(self, pos: int, name: str, type_id: int, gt: GGMLType | None) -> GGMLType:
        """A negative or removed type id is refused (gguf.cpp:730, :740); a newer one is carried."""
        if gt is None:
            raise ValidationError(self.cur.path, pos, f"tensor {name!r} has invalid ggml type {type_id}")
        if gt.removed is not None:
            raise ValidationError(
                self.cur.path,
                pos,
                f"tensor {name!r} has ggml type {type_id} ({gt.name}), which ggml no longer supports: {gt.removed}",
            )
        return gt

    def string(self, pos: int, what: str) -> tuple[int, int]:
        """Bound the string at ``pos`` by the file and by llama.cpp's limit, then buffer it.

        Returns ``(start, end)`` of its bytes in the buffer (``end`` is also where the next field
        starts)."""
        cur = self.cur
        cur.need(pos + 8, pos, f"length of {what}")
        (n,) = self.u64.unpack_from(cur.data, pos)
        if n > cur.size - pos - 8:
            raise TruncatedError(cur.path, pos, f"{what} claims {n:,} bytes, more than the file has left")
        if n > GGUF_MAX_STRING_LENGTH:
            raise FormatError(
                cur.path, pos, f"{what} claims {n:,} bytes, llama.cpp allows at most {GGUF_MAX_STRING_LENGTH:,}"
            )
        cur.need(pos + 8 + n, pos, what)
        return pos + 8, pos + 8 + n

    def value_type(self, pos: int, key: str) -> tuple[ValueType, int]:
        cur = self.cur
        cur.need(pos + 4, pos, f"type of {key!r}")
        (t,) = self.i32.unpack_from(cur.data, pos)
        try:
            return ValueType(t), pos + 4
        except ValueError:
            raise FormatError(cur.path, pos, f"metadata {key!r} has invalid value type {t}") from None

    def value(self, vtype: ValueType, pos: int, key: str, depth: int) -> tuple[MetaValue, int]:
        cur = self.cur
        if vtype is ValueType.STRING:
            a, pos = self.string(pos, f"string value of {key!r}")
            return _text(cur.path, cur.data, a, pos), pos
        if vtype is ValueType.ARRAY:
            return self.array(pos, key, depth)
        size = SCALAR_SIZE[vtype]
        cur.need(pos + size, pos, f"value of {key!r}")
        (v,) = struct.unpack_from(self.bo + SCALAR_FORMAT[vtype], cur.data, pos)
        return v, pos + size

    def array(self, pos: int, key: str, depth: int) -> tuple[GGUFArray, int]:
        cur = self.cur
        path = cur.path
        if depth >= MAX_ARRAY_DEPTH:
            raise FormatError(path, pos, f"metadata {key!r} nests arrays more than {MAX_ARRAY_DEPTH} deep")
        etype, pos = self.value_type(pos, key)
        cur.need(pos + 8, pos, f"length of array {key!r}")
        (count,) = self.u64.unpack_from(cur.data, pos)
        pos += 8
        left = cur.size - pos
        if etype is ValueType.STRING:
            if count > left // 8:
                raise TruncatedError(
                    path, pos - 8, f"array {key!r} claims {count:,} strings, more than the file can hold"
                )
            self._count_limit(pos - 8, count, key)
            seen = self.known.get(pos)
            if seen is not None and seen[0] == count and pos + 8 * count <= seen[1] <= cur.size:
                end = seen[1]
                cur.need(end, pos, f"array {key!r}")
            else:
                end = self._skip_strings(pos, count, key)
            return GGUFArray(cur.data, self.bo, etype, count, pos, end - pos), end
        if etype is ValueType.ARRAY:
            if count > left // 12:
                raise TruncatedError(
                    path, pos - 8, f"array {key!r} claims {count:,} nested arrays, more than the file can hold"
                )
            self.nested += count
            if self.nested > MAX_NESTED_ARRAYS:
                raise FormatError(
                    path,
                    pos - 8,
                    f"metadata {key!r} holds more than {MAX_NESTED_ARRAYS:,} nested arrays "
                    "(llama.cpp refuses nested arrays altogether)",
                )
            items = []
            start = pos
            for _ in range(count):
                item, pos = self.array(pos, key, depth + 1)
                items.append(item)
            return GGUFArray(cur.data, self.bo, etype, count, start, pos - start, items), pos
        size = SCALAR_SIZE[etype]
        if count > left // size:
            raise TruncatedError(
                path,
                pos - 8,
                f"array {key!r} claims {count:,} x {etype.short} ({count * size:,} bytes), more than the file has left",
            )
        self._count_limit(pos - 8, count, key)
        nbytes = count * size
        cur.need(pos + nbytes, pos, f"array {key!r}")
        return GGUFArray(cur.data, self.bo, etype, count, pos, nbytes), pos + nbytes

    def _count_limit(self, at: int, count: int, key: str) -> None:
        if count > GGUF_MAX_ARRAY_ELEMENTS:  # gguf.cpp:280
            raise FormatError(
                self.cur.path,
                at,
                f"array {key!r} claims {count:,} elements, llama.cpp allows at most {GGUF_MAX_ARRAY_ELEMENTS:,}",
            )

    def _skip_strings(self, pos: int, count: int, key: str) -> int:
        """Walk ``count`` length-prefixed strings; the hot loop of opening a big vocabulary.

        The inner loop has no bound checks: ``unpack_from`` past the buffer raises, and then the
        buffer grows (or the string that overran the file is found and named) before the walk
        resumes. It steps eight strings per turn (a quarter less time than one per turn: 262K
        strings take about 17 ms instead of 22); a block that runs past the buffer is walked again
        one string at a time, to find the string that did. Only strings that add up to more than
        llama.cpp allows for one string can hold one that is too long: then the array is walked
        again with every check, each length checked before the buffer grows past it."""
        cur = self.cur
        unpack = self.u64.unpack_from
        start = pos
        i = 0
        while True:
            data = cur.data
            try:
                for _ in range((count - i) >> 3):
                    p = pos
                    p += 8 + unpack(data, p)[0]
                    p += 8 + unpack(data, p)[0]
                    p += 8 + unpack(data, p)[0]
                    p += 8 + unpack(data, p)[0]
                    p += 8 + unpack(data, p)[0]
                    p += 8 + unpack(data, p)[0]
                    p += 8 + unpack(data, p)[0]
                    p += 8 + unpack(data, p)[0]
                    pos = p
                    i += 8
            except (struct.error, OverflowError):
                pass  # pos and i are the start of the block that ran past: the loop below finds where
            try:
                for i in range(i, count):  # noqa: B007, B020 - i is read after an exception
                    pos += 8 + unpack(data, pos)[0]
                i = count
            except (struct.error, OverflowError):  # past the buffer, or a length past any buffer
                if pos + 8 > cur.size or pos - start - 8 * i > GGUF_MAX_STRING_LENGTH:
                    return self._strict_walk(start, count, key)
                # estimate the rest of the array from the strings seen so far (with a margin:
                # early vocabulary entries, such as byte tokens, are shorter than later ones), but
                # never read far ahead on an estimate: the count may be a lie
                seen = max(i, 1)
                hint = pos + int((count - i) * (pos - start) / seen * STRING_ESTIMATE_MARGIN) + 64
                hint = min(hint, pos + max(HINT_CAP, len(data)))
                cur.need(pos + 8, pos, f"string {i} of array {key!r}", hint)
                continue
            if pos > cur.size or pos - start - 8 * count > GGUF_MAX_STRING_LENGTH:
                return self._strict_walk(start, count, key)
            if pos > len(data):
                cur.need(pos, pos, f"array {key!r}")
            return pos

    def _strict_walk(self, pos: int, count: int, key: str) -> int:
        """Walk again with every check, to raise for the exact string that overruns the file or is
        longer than llama.cpp allows; returns the end when there is none."""
        cur = self.cur
        unpack = self.u64.unpack_from
        for i in range(count):
            if pos + 8 > len(cur.data):
                cur.need(pos + 8, pos, f"string {i} of array {key!r}")
            (n,) = unpack(cur.data, pos)
            if n > cur.size - pos - 8:
                raise TruncatedError(
                    cur.path, pos, f"string {i} of array {key!r} claims {n:,} bytes, more than the file has left"
                )
            if n > GGUF_MAX_STRING_LENGTH:
                raise FormatError(
                    cur.path,
                    pos,
                    f"string {i} of array {key!r} claims {n:,} bytes, llama.cpp allows at most {GGUF_MAX_STRING_LENGTH:,}",
                )
            pos += 8 + n
        cur.need(pos, pos, f"array {key!r}")
        return pos
