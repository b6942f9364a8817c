"""Parse one GGUF file's header: metadata and tensor infos, never tensor data.

The checks follow llama.cpp's ``ggml/src/gguf.cpp``: every length and count is bounded by what is
left of the file before anything is read or allocated, element counts may not overflow int64,
tensor data must be aligned, in order, non-overlapping and inside the file, keys and tensor names
must be unique. Anything else is a :class:`~ggufx.errors.GGUFError` naming the file and offset.

The parser reads through a byte source (``read(offset, n)``): it asks for a first block and grows
it geometrically as the header demands, so a local file and an HTTP range source cost the same
few reads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

from ggufx.errors import FormatError, TruncatedError, UnsupportedVersionError, ValidationError
from ggufx.format.ggmltypes import GGMLType, ggml_type
from ggufx.format.values import SCALAR_FORMAT, SCALAR_SIZE, GGUFArray, ValueType, decode_str

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME, including the terminating NUL
MAX_ARRAY_DEPTH = 8
INT64_MAX = (1 << 63) - 1
FIRST_READ = 1 << 20
STRING_ESTIMATE_MARGIN = 1.2
PREAMBLE_SIZE = 24  # magic, version, tensor count, metadata count
MIN_TENSOR_INFO = 24  # bytes of the smallest tensor info: empty name, no dimensions, type, offset
MIN_KV = 13  # bytes of the smallest metadata record: empty key, type, a one-byte value

# a tensor info as read, before the layout step sizes and places it (a plain tuple: a model has
# thousands): name, shape, type, data offset, element count, offset of the info in the file
_RawTensor = tuple[str, tuple[int, ...], GGMLType, int, int, int]
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

    __slots__ = ("src", "path", "size", "data", "growth")

    def __init__(self, src: ByteSource):
        self.src = src
        self.path = src.path
        self.size = src.size
        self.data = bytearray()
        # how much the buffer grows when it runs out: doubling for files (reads are cheap, fewer
        # syscalls); a remote source asks for less overshoot, since every byte crosses the network
        self.growth = getattr(src, "growth", 2.0)

    def need(self, end: int, at: int, what: str, hint: int = 0) -> None:
        """Make sure bytes [0, end) are buffered, or raise a truncation error for ``what`` at ``at``.

        ``hint`` is the parser's estimate of where the structure it is in ends (a vocabulary whose
        strings it has only partly seen), so that one read can cover it."""
        have = len(self.data)
        if end <= have:
            return
        if end > self.size:
            raise TruncatedError(self.path, at, f"{what} runs past the end of the file ({end:,} > {self.size:,} bytes)")
        want = min(self.size, max(end, int(have * self.growth), FIRST_READ, hint))
        # a source holding only a prefix (a cached header) serves reads within it
        available = getattr(self.src, "available", None)
        if available is not None and end <= available:
            want = min(want, available)
        self.data += self.src.read(have, want - have)

    def fail(self, at: int, what: str, cls: type = FormatError) -> None:
        raise cls(self.path, at, what)


def parse_header(src: ByteSource) -> GGUFHeader:
    """Parse and validate the header of ``src``. Costs O(header) reads, never O(file).

    Four steps, each needing the one before: the preamble (magic, version, counts), the metadata
    (which sets the alignment), the tensor infos, and the layout of their data."""
    cur = _Cursor(src)
    version, bo = _read_version(cur)
    n_tensors, n_kv = _read_counts(cur, bo)
    p = _Parser(cur, bo)
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
    """The data alignment in bytes: ``general.alignment`` (a u32 power of two), else 32."""
    akv = kvs.get("general.alignment")
    if akv is None:
        return DEFAULT_ALIGNMENT
    if akv.type is not ValueType.UINT32:
        raise ValidationError(path, akv.offset, f"general.alignment must be u32, not {akv.type.short}")
    alignment: int = akv.value
    if alignment == 0 or alignment & (alignment - 1):
        raise ValidationError(path, akv.offset, f"general.alignment {alignment} is not a power of two")
    return alignment


def _data_offset(cur: _Cursor, header_end: int, alignment: int, has_tensors: bool) -> int:
    """Where the data section starts: the end of the header rounded up to the alignment."""
    data_offset = -(-header_end // alignment) * alignment
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

    ``data_size`` is the bytes from ``data_offset`` to the end of the file. A tensor of a type
    missing from the ggml type table is sized by the next tensor's offset (or the end of the file)."""
    tensors: list[TensorInfo] = []
    expected = 0
    for i, (name, shape, gt, offset, n_elements, info_at) in enumerate(infos):
        derived = not gt.known
        if derived:
            nxt = infos[i + 1][3] if i + 1 < len(infos) else data_size
            nbytes = nxt - offset
            if nbytes <= 0:
                raise ValidationError(path, info_at, f"tensor {name!r} of {gt.name} has no room before the next tensor")
        else:
            nbytes = gt.nbytes(n_elements)
        if offset != expected:
            how = "overlaps the previous tensor" if offset < expected else "leaves a gap after the previous tensor"
            raise ValidationError(
                path,
                info_at,
                f"tensor {name!r} has data offset {offset:,}, expected {expected:,} "
                f"(it {how}; llama.cpp requires tensors packed in order)",
            )
        if offset + nbytes > data_size:
            raise TruncatedError(
                path,
                data_offset + offset,
                f"tensor {name!r} data ({nbytes:,} bytes at data offset {offset:,}) runs past the end of the file",
            )
        expected = offset + -(-nbytes // alignment) * alignment
        tensors.append(
            TensorInfo(name, shape, gt, offset, data_offset + offset, n_elements, nbytes, 0, info_at, derived)
        )
    return tensors


class _Parser:
    __slots__ = ("cur", "bo", "u64", "i32")

    def __init__(self, cur: _Cursor, bo: str):
        self.cur = cur
        self.bo = bo
        self.u64 = struct.Struct(bo + "Q")
        self.i32 = struct.Struct(bo + "i")

    def metadata(self, pos: int, n_kv: int) -> tuple[dict[str, KV], int]:
        """Read ``n_kv`` metadata records from ``pos``: ``(records by key, end offset)``."""
        path = self.cur.path
        kvs: dict[str, KV] = {}
        for _ in range(n_kv):
            start = pos
            raw_key, pos = self.string(pos, "metadata key")
            try:
                key = bytes(raw_key).decode("utf-8")
            except UnicodeDecodeError as e:
                why = f"metadata key is not valid UTF-8 ({e.reason} at byte {e.start})"
                raise ValidationError(path, start, why) from None
            if key in kvs:
                raise ValidationError(path, start, f"duplicate metadata key {key!r}")
            vtype, pos = self.value_type(pos, key)
            value, pos = self.value(vtype, pos, key, 0)
            kvs[key] = KV(key, vtype, value, start, pos)
        return kvs, pos

    def tensor_infos(self, pos: int, n_tensors: int, alignment: int) -> tuple[list[_RawTensor], int]:
        """Read ``n_tensors`` tensor infos from ``pos``: ``(infos in file order, end offset)``.

        Each is a name, the number of dimensions, the shape, the ggml type and the data offset. The
        loop has no helper calls: a model has thousands of tensors."""
        cur = self.cur
        path = cur.path
        bo = self.bo
        infos: list[_RawTensor] = []
        names: set[str] = set()
        for _ in range(n_tensors):
            start = pos
            raw_name, pos = self.string(pos, "tensor name")
            name = decode_str(raw_name)
            if len(raw_name) >= MAX_NAME:
                raise ValidationError(
                    path,
                    start,
                    f"tensor name {name[:40]!r}... is {len(raw_name)} bytes, llama.cpp allows {MAX_NAME - 1}",
                )
            if name in names:
                raise ValidationError(path, start, f"duplicate tensor name {name!r}")
            names.add(name)
            cur.need(pos + 4, pos, f"tensor {name!r}")
            (n_dims,) = struct.unpack_from(bo + "I", cur.data, pos)
            if n_dims > MAX_DIMS:
                raise ValidationError(
                    path, pos, f"tensor {name!r} has {n_dims} dimensions, ggml allows at most {MAX_DIMS}"
                )
            pos += 4
            cur.need(pos + 8 * n_dims + 12, pos, f"tensor {name!r}")
            shape = struct.unpack_from(f"{bo}{n_dims}q", cur.data, pos)
            n_elements = 1
            for d, ne in enumerate(shape):
                if ne <= 0:
                    raise ValidationError(
                        path, pos + 8 * d, f"tensor {name!r} has dimension {d} = {ne}, must be positive"
                    )
                n_elements *= ne
                if n_elements > INT64_MAX:
                    raise ValidationError(
                        path, pos + 8 * d, f"tensor {name!r} element count overflows int64 (shape {list(shape)})"
                    )
            pos += 8 * n_dims
            type_id, offset = struct.unpack_from(bo + "iQ", cur.data, pos)
            if type_id < 0:
                raise ValidationError(path, pos, f"tensor {name!r} has invalid ggml type {type_id}")
            gt = ggml_type(type_id)
            if gt.known and shape and shape[0] % gt.block_size:
                raise ValidationError(
                    path,
                    pos,
                    f"tensor {name!r}: ne[0] = {shape[0]} is not a multiple of the "
                    f"{gt.name} block size {gt.block_size}",
                )
            if offset % alignment:
                raise ValidationError(
                    path,
                    pos + 4,
                    f"tensor {name!r} data offset {offset} is not a multiple of the alignment {alignment}",
                )
            pos += 12
            infos.append((name, shape, gt, offset, n_elements, start))
        return infos, pos

    def string(self, pos: int, what: str) -> tuple[bytearray, int]:
        cur = self.cur
        cur.need(pos + 8, pos, f"length of {what}")
        (n,) = self.u64.unpack_from(cur.data, pos)
        if n > cur.size - pos - 8:
            raise TruncatedError(cur.path, pos, f"{what} claims {n:,} bytes, more than the file has left")
        cur.need(pos + 8 + n, pos, what)
        return cur.data[pos + 8 : pos + 8 + n], pos + 8 + n

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
            raw, pos = self.string(pos, f"string value of {key!r}")
            return decode_str(raw), pos
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
            end = self._skip_strings(pos, count, key)
            return GGUFArray(cur.data, self.bo, etype, count, pos, end - pos), end
        if etype is ValueType.ARRAY:
            if count > left // 12:
                raise TruncatedError(
                    path, pos - 8, f"array {key!r} claims {count:,} nested arrays, more than the file can hold"
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
        nbytes = count * size
        cur.need(pos + nbytes, pos, f"array {key!r}")
        return GGUFArray(cur.data, self.bo, etype, count, pos, nbytes), pos + nbytes

    def _skip_strings(self, pos: int, count: int, key: str) -> int:
        """Walk ``count`` length-prefixed strings; the hot loop of opening a big vocabulary.

        The inner loop has no bound checks: ``unpack_from`` past the buffer raises, and then the
        buffer grows (or the string that overran the file is found and named) before the walk
        resumes."""
        cur = self.cur
        unpack = self.u64.unpack_from
        start = pos
        i = 0
        while True:
            data = cur.data
            try:
                for i in range(i, count):  # noqa: B007, B020 - i is read after an exception
                    pos += 8 + unpack(data, pos)[0]
                i = count
            except (struct.error, OverflowError):  # past the buffer, or a length past any buffer
                if pos + 8 > cur.size:
                    self._name_overrun(start, count, key)
                # estimate the rest of the array from the strings seen so far (with a margin:
                # early vocabulary entries, such as byte tokens, are shorter than later ones)
                seen = max(i, 1)
                hint = pos + int((count - i) * (pos - start) / seen * STRING_ESTIMATE_MARGIN) + 64
                cur.need(pos + 8, pos, f"string {i} of array {key!r}", hint)
                continue
            if pos > len(data):
                if pos > cur.size:
                    self._name_overrun(start, count, key)
                cur.need(pos, pos, f"array {key!r}")
            return pos

    def _name_overrun(self, pos: int, count: int, key: str) -> None:
        """Walk again with every check, to raise for the exact string that overruns the file."""
        cur = self.cur
        unpack = self.u64.unpack_from
        for i in range(count):
            what = f"string {i} of array {key!r}"
            cur.need(pos + 8, pos, what)
            (n,) = unpack(cur.data, pos)
            if n > cur.size - pos - 8:
                raise TruncatedError(cur.path, pos, f"{what} claims {n:,} bytes, more than the file has left")
            pos += 8 + n
        raise TruncatedError(cur.path, pos, f"array {key!r} runs past the end of the file")  # pragma: no cover
