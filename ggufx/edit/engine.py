"""Metadata transactions: set, delete and rename keys without touching tensor data.

An edit is a list of operations applied in order to the first shard's metadata (where a split
model keeps it). Every untouched key keeps its position, type and exact bytes; tensor infos are
copied byte for byte, and tensor offsets (relative to the data section) never change. The new
header is parsed in memory and checked before anything is written.

Strategies, cheapest first:

``in-place``
    the new header fits before the current data section: the few changed bytes are written under
    an undo journal, and the slack is absorbed by the ``ggufx.padding`` key (an array of u8 zeros
    that llama.cpp ignores). Milliseconds, whatever the file size.
``insert-range``
    the filesystem can insert blocks (Linux ``FALLOC_FL_INSERT_RANGE``, e.g. ext4 and xfs):
    whole blocks are inserted before the data section; no tensor byte is copied.
``rewrite``
    a new file is streamed beside the old one (kernel-side copy) and atomically renamed over it.
    Always used with ``output=`` (the original is left untouched).
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ggufx.edit import safewrite
from ggufx.errors import EditError, GGUFError
from ggufx.format.encode import encode_kv
from ggufx.format.keys import (
    PADDING_KEY,
    coerce,
    expected_types,
    infer_scalar_type,
    known_key_types,
    parse_json_list,
    protected_reason,
)
from ggufx.format.reader import GGUFHeader, parse_header
from ggufx.format.spec import GGUF_MAGIC, align
from ggufx.format.values import GGUFArray, ValueType, f32_short
from ggufx.io.sources import FdSource, MemorySource, is_remote
from ggufx.model.shards import SHARD_RE, shard_path, split_info

STRATEGIES = ("auto", "in-place", "insert-range", "rewrite")
PAGE = 4096
PADDING_OVERHEAD = 8 + len(PADDING_KEY) + 4 + 4 + 8  # key length + key + type + elem type + count
PADDING_STR_OVERHEAD = 8 + len(PADDING_KEY) + 4 + 8  # key length + key + type + string length


@dataclass(frozen=True, slots=True)
class Set:
    """Set ``key`` to ``value``. ``type`` (and ``elem_type`` for arrays) as on the command line;
    by default the existing type, else the type gguf-py writes for this key, else inferred when
    unambiguous (text, booleans). A ``str`` value may be command-line text to be parsed."""

    key: str
    value: Any
    type: ValueType | None = None
    elem_type: ValueType | None = None
    from_text: bool = False  # value is command-line text: parse numbers, booleans, JSON lists


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class Rename:
    old: str
    new: str


Op = Set | Delete | Rename


@dataclass(frozen=True, slots=True)
class Change:
    """One line of the metadata diff."""

    op: str  # "add", "set", "delete", "rename"
    key: str
    new_key: str | None = None
    before_type: str | None = None
    before: Any = None
    after_type: str | None = None
    after: Any = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op, "key": self.key}
        if self.new_key is not None:
            d["new_key"] = self.new_key
        d.update(before_type=self.before_type, before=self.before, after_type=self.after_type, after=self.after)
        return d


@dataclass(slots=True)
class EditResult:
    """What an edit did (or, with ``dry_run``, would do). ``to_dict()`` is the ``--json`` output."""

    path: str
    target: str
    output: str | None
    strategy: str
    dry_run: bool
    bytes_written: int
    file_bytes_before: int
    file_bytes_after: int
    data_offset_before: int
    data_offset_after: int
    padding_bytes: int
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "target": self.target,
            "output": self.output,
            "strategy": self.strategy,
            "dry_run": self.dry_run,
            "bytes_written": self.bytes_written,
            "file_bytes_before": self.file_bytes_before,
            "file_bytes_after": self.file_bytes_after,
            "data_offset_before": self.data_offset_before,
            "data_offset_after": self.data_offset_after,
            "padding_bytes": self.padding_bytes,
            "changes": [c.to_dict() for c in self.changes],
            "notes": self.notes,
        }


@dataclass(slots=True)
class _Entry:
    key: str
    type: ValueType
    value: Any
    elem_type: ValueType | None
    raw: bytes | None  # the original record, reused byte for byte while untouched


# -- planning ----------------------------------------------------------------------------------


def _display(vtype: ValueType, value: Any) -> Any:
    if vtype is ValueType.FLOAT32:
        return f32_short(value)
    if vtype is ValueType.ARRAY:
        if isinstance(value, GGUFArray):
            return f"[{value.count:,} x {value.elem_type.short}]" if value.count > 16 else _jsonable(value.tolist())
        return value
    return value


def _jsonable(v: Any) -> Any:
    return [_jsonable(x) for x in v] if isinstance(v, list) else v


def _type_label(vtype: ValueType, elem: ValueType | None) -> str:
    return f"arr[{elem.short}]" if vtype is ValueType.ARRAY and elem is not None else vtype.short


def _resolve_set(op: Set, existing: _Entry | None, force: bool) -> tuple[ValueType, Any, ValueType | None]:
    """The (type, value, element type) a Set writes, with gguf-py's type rules checked."""
    key = op.key
    value = op.value
    listed = None
    if op.from_text and isinstance(value, str):
        try:
            listed = parse_json_list(value, key)
        except ValueError as e:  # '[1, 2' : an input error, not ggufx's
            raise EditError(None, None, str(e)) from None
    elif isinstance(value, (list, tuple)):
        listed = list(value)
    known = expected_types(key)
    vtype = op.type
    elem = op.elem_type
    if vtype is not None and vtype is not ValueType.ARRAY and listed is not None:
        vtype, elem = ValueType.ARRAY, vtype  # --type u32 with a JSON list: an array of u32
    if vtype is None:
        if listed is not None:
            vtype = ValueType.ARRAY
        elif existing is not None:
            vtype = existing.type
        elif known is not None and len(known - {ValueType.ARRAY}) == 1:
            vtype = next(iter(known - {ValueType.ARRAY}))
        elif op.from_text:
            vtype = _infer_text(value, key)
        else:
            vtype = infer_scalar_type(value)
            if vtype is None:
                raise EditError(
                    None,
                    None,
                    f"{key}: the value type of a new key that gguf-py does not know is ambiguous for {value!r}; give --type (u8, i32, u32, f32, str...)",
                )
    elif known is not None and vtype not in known and not force:
        allowed = ", ".join(sorted(t.short for t in known))
        raise EditError(
            None,
            None,
            f"{key} is written as {allowed} by llama.cpp's gguf-py, not {vtype.short} (--force to write it anyway)",
        )
    if vtype is ValueType.ARRAY:
        if listed is None:
            if isinstance(value, GGUFArray):
                return vtype, value, value.elem_type
            raise EditError(None, None, f"{key}: an array value must be a JSON list such as [1, 2, 3]")
        if elem is None and existing is not None and existing.type is ValueType.ARRAY:
            elem = existing.elem_type
        if elem is None:
            elem = _infer_elem(listed, key, known is not None)
        if elem is ValueType.ARRAY:
            raise EditError(None, None, f"{key}: writing nested arrays is not supported")
        try:
            items = [coerce(elem, v, f"{key}[{i}]") for i, v in enumerate(listed)]
        except ValueError as e:
            raise EditError(None, None, str(e)) from None
        return vtype, items, elem
    if op.from_text and vtype is not ValueType.STRING and isinstance(value, str):
        value = value.strip()
    try:
        return vtype, coerce(vtype, value, key), None
    except ValueError as e:
        raise EditError(None, None, str(e)) from None


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\Z|[-+]?0[xX][0-9a-fA-F]+\Z")


def _infer_text(text: str, key: str) -> ValueType:
    t = text.strip()
    if t.lower() in ("true", "false"):
        return ValueType.BOOL
    if _NUMBER.match(t):
        raise EditError(
            None, None, f"{key}: a number for a key gguf-py does not know is ambiguous (u32? i64? f32?); give --type"
        )
    return ValueType.STRING


def _infer_elem(items: list[Any], key: str, known: bool) -> ValueType:
    if not items:
        raise EditError(None, None, f"{key}: an empty list needs --type for its elements")
    if all(isinstance(v, bool) for v in items):
        return ValueType.BOOL
    if all(isinstance(v, str) for v in items):
        return ValueType.STRING
    if known and all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        return ValueType.INT32  # as gguf-py's GGUFWriter writes a list of ints
    if known and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        return ValueType.FLOAT32
    raise EditError(None, None, f"{key}: the element type of this list is ambiguous; give --type (e.g. u32, f32)")


def _near_key(key: str, entries: dict[str, _Entry]) -> str | None:
    """The key of the file, or one gguf-py writes for its architecture, that a new ``key`` gguf-py does not
    know looks like a typo of (``general.nmae``: ``general.name``), else None: a typo would otherwise be
    added as a key llama.cpp never reads, and the edit would seem to have worked."""
    import difflib

    if expected_types(key) is not None or key.startswith("tokenizer.chat_template."):  # known; a named template
        return None
    arch = entries.get("general.architecture")
    candidates = set(entries)
    for _, _, template in known_key_types():
        if template.count("{") == 1 and "{arch}" in template and arch is not None and isinstance(arch.value, str):
            template = template.replace("{arch}", arch.value)
        if "{" not in template:
            candidates.add(template)
    near = difflib.get_close_matches(key, candidates, n=1, cutoff=0.85)
    return near[0] if near else None


def plan_changes(header: GGUFHeader, ops: list[Op], force: bool = False) -> tuple[list[_Entry], list[Change]]:
    """Apply ``ops`` to the header's metadata; return the new entries and the diff."""
    entries: dict[str, _Entry] = {}
    for kv in header.kvs.values():
        if kv.key == PADDING_KEY:
            continue
        entries[kv.key] = _Entry(kv.key, kv.type, kv.value, kv.elem_type, bytes(header.buf[kv.offset : kv.end]))
    changes: list[Change] = []
    for op in ops:
        keys = [op.key] if not isinstance(op, Rename) else [op.old, op.new]
        for k in keys:
            if k == PADDING_KEY:
                raise EditError(
                    header.path, None, f"{PADDING_KEY} is managed by ggufx (use --reserve to change the padding)"
                )
            reason = protected_reason(k)
            if reason and not force:
                raise EditError(header.path, None, f"refusing to change {k}: {reason} (--force to do it anyway)")
            if not k or "\0" in k:
                raise EditError(header.path, None, f"invalid key {k!r}")
        if isinstance(op, Set):
            old = entries.get(op.key)
            if old is None and not force and (near := _near_key(op.key, entries)) is not None:
                raise EditError(
                    header.path,
                    None,
                    f"{op.key} is neither a key of this file nor one gguf-py knows: did you mean {near}? "
                    "(--force adds it as a new key)",
                )
            try:
                vtype, value, elem = _resolve_set(op, old, force)
            except EditError as e:
                raise EditError(header.path, None, e.message) from None
            changes.append(
                Change(
                    "set" if old else "add",
                    op.key,
                    None,
                    _type_label(old.type, old.elem_type) if old else None,
                    _display(old.type, old.value) if old else None,
                    _type_label(vtype, elem),
                    _display(vtype, value),
                )
            )
            entries[op.key] = _Entry(op.key, vtype, value, elem, None)  # an existing key keeps its position
        elif isinstance(op, Delete):
            old = entries.pop(op.key, None)
            if old is None:
                raise EditError(header.path, None, f"no metadata key {op.key!r} to delete")
            changes.append(
                Change("delete", op.key, None, _type_label(old.type, old.elem_type), _display(old.type, old.value))
            )
        else:
            old = entries.get(op.old)
            if old is None:
                raise EditError(header.path, None, f"no metadata key {op.old!r} to rename")
            if op.new in entries:
                raise EditError(
                    header.path, None, f"cannot rename {op.old!r} to {op.new!r}: that key exists (delete it first)"
                )
            known = expected_types(op.new)
            if known is not None and old.type not in known and not force:
                raise EditError(
                    header.path,
                    None,
                    f"{op.new} is written as {', '.join(sorted(t.short for t in known))} by gguf-py, but {op.old} is {old.type.short} (--force to rename anyway)",
                )
            entries = {
                (op.new if k == op.old else k): (
                    _Entry(op.new, e.type, e.value, e.elem_type, None) if k == op.old else e
                )
                for k, e in entries.items()
            }
            changes.append(
                Change(
                    "rename",
                    op.old,
                    op.new,
                    _type_label(old.type, old.elem_type),
                    _display(old.type, old.value),
                    _type_label(old.type, old.elem_type),
                    _display(old.type, old.value),
                )
            )
    return list(entries.values()), changes


# -- layout ------------------------------------------------------------------------------------


def _encoded(header: GGUFHeader, entries: list[_Entry]) -> list[bytes]:
    """Each entry's record: the original bytes while untouched, else freshly encoded."""
    bo = header.byte_order
    return [e.raw if e.raw is not None else encode_kv(bo, e.key, e.type, e.value, e.elem_type) for e in entries]


def _records(header: GGUFHeader, entries: list[_Entry]) -> bytes:
    return b"".join(_encoded(header, entries))


def _padding_fast(bo: str, n: int) -> bytes:
    """The padding record with ``n`` zero bytes (built without a Python list of n ints)."""
    head = encode_kv(bo, PADDING_KEY, ValueType.ARRAY, [], ValueType.UINT8)
    return head[:-8] + struct.pack(bo + "Q", n) + bytes(n)


@dataclass(frozen=True, slots=True)
class _Layout:
    """A new header and where its parts are."""

    data: bytes  # the whole header, exactly the new data section offset long
    padding: int  # bytes of padding in ggufx.padding
    n_kv: int
    records_end: int  # end of the metadata records (start of the padding record, if any)
    tinfo_start: int  # start of the tensor infos


def build_header(header: GGUFHeader, entries: list[_Entry], data_offset: int | None) -> _Layout | None:
    """The new header, exactly ``data_offset`` bytes long (padding absorbs the slack), or the
    smallest aligned one when ``data_offset`` is None; None when it cannot fit."""
    bo = header.byte_order
    kvs = _records(header, entries)
    tinfo = bytes(header.buf[header.tensor_info_offset : header.header_end])
    base = 24 + len(kvs) + len(tinfo)
    a = header.alignment
    if data_offset is None:
        data_offset = align(base, a)
    if data_offset - a < base <= data_offset:
        pad_rec, n = b"", 0
    elif base + PADDING_OVERHEAD <= data_offset:
        n = data_offset - base - PADDING_OVERHEAD
        pad_rec = _padding_fast(bo, n)
    elif base + PADDING_STR_OVERHEAD <= data_offset:
        # a slack of 33..36 bytes is too small for the array form: a short string of spaces
        n = data_offset - base - PADDING_STR_OVERHEAD
        pad_rec = encode_kv(bo, PADDING_KEY, ValueType.STRING, " " * n)
    else:
        return None
    n_kv = len(entries) + (1 if pad_rec else 0)
    body = GGUF_MAGIC + struct.pack(bo + "Iqq", header.version, len(header.tensors), n_kv) + kvs + pad_rec + tinfo
    records_end = 24 + len(kvs)
    return _Layout(body + bytes(data_offset - len(body)), n, n_kv, records_end, records_end + len(pad_rec))


def _verify(old: GGUFHeader, entries: list[_Entry], lay: _Layout, new_size: int, path: str) -> None:
    """Check a new header before writing it. The new records, the padding record and the tensor
    infos are parsed as a small file of their own (unchanged records, such as a 262K vocabulary,
    are byte copies and are not walked again), and the layout of the whole is checked."""
    bo = old.byte_order
    data = lay.data
    tinfo = bytes(old.buf[old.tensor_info_offset : old.header_end])
    parts = _encoded(old, entries)
    fresh = [p for p, e in zip(parts, entries) if e.raw is None]
    pad_rec = data[lay.records_end : lay.tinfo_start]
    problems = []
    if data[:8] != bytes(old.buf[:8]) or struct.unpack_from(bo + "qq", data, 8) != (len(old.tensors), lay.n_kv):
        problems.append("prefix or counts are wrong")
    if lay.n_kv != len(entries) + (1 if pad_rec else 0):
        problems.append("metadata count is wrong")
    if data[24 : lay.records_end] != b"".join(parts):
        problems.append("metadata records are not where the header says")
    infos_end = lay.tinfo_start + len(tinfo)
    if data[lay.tinfo_start : infos_end] != tinfo:
        problems.append("tensor infos are not where the header says")
    if len(data) % old.alignment or not len(data) - old.alignment < infos_end <= len(data) or any(data[infos_end:]):
        problems.append(
            f"the data section would not start at the aligned end of the header ({infos_end} -> {len(data)})"
        )
    mini = GGUF_MAGIC + struct.pack(bo + "Iqq", old.version, len(old.tensors), len(fresh) + (1 if pad_rec else 0))
    mini += b"".join(fresh) + pad_rec + tinfo
    mini += bytes(-len(mini) % old.alignment)
    try:
        h = parse_header(MemorySource(path, mini, len(mini) + new_size - len(data)))
    except GGUFError as e:
        raise EditError(
            path, None, f"internal error: the new header would not parse ({e.message}); nothing was written"
        ) from None
    if [(t.name, t.shape, t.type.id, t.offset, t.nbytes) for t in h.tensors] != [
        (t.name, t.shape, t.type.id, t.offset, t.nbytes) for t in old.tensors
    ]:
        problems.append("tensor infos differ")
    if problems:
        raise EditError(path, None, f"internal error: {'; '.join(problems)}; nothing was written")


# -- where files live --------------------------------------------------------------------------

_BLOB = re.compile(r"sha256[-:][0-9a-f]{64}\Z")


def content_addressed_reason(path: str) -> str | None:
    """Why editing ``path`` in place would corrupt a content-addressed store, or None."""
    real = os.path.realpath(path)
    parent = os.path.basename(os.path.dirname(real))
    if parent == "blobs" and _BLOB.match(os.path.basename(real)):
        return "it is an Ollama blob, named by the sha256 of its content; editing it in place breaks the store"
    if parent == "blobs" and os.path.basename(os.path.dirname(os.path.dirname(real))).startswith(
        ("models--", "datasets--")
    ):
        # a snapshot file is a link to such a blob, so this covers both
        return "it is a Hugging Face cache blob (named by its hash, shared by snapshots); editing it in place breaks the cache"
    return None


# -- doing it ----------------------------------------------------------------------------------


def edit(
    path: str | os.PathLike[str],
    ops: list[Op],
    *,
    output: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    reserve: int = 0,
    strategy: str = "auto",
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> EditResult:
    """Apply ``ops`` to the metadata of the GGUF at ``path`` (in place, or into ``output``)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}")
    if reserve < 0:
        raise ValueError("reserve must be >= 0")
    given = os.fspath(path)
    if is_remote(given):
        raise EditError(given, None, "a remote file cannot be edited; download it first and edit the local copy")
    notes: list[str] = []
    real = os.path.realpath(given)
    if os.path.islink(given):
        notes.append(f"{given} is a symlink: editing its target {real}")
    out = os.fspath(output) if output is not None else None
    writable = out is None and not dry_run
    fd, target, header = _open_locked(real, writable, notes)
    try:
        if out is not None and os.path.exists(out) and os.path.samefile(out, target):
            out = None
            if not dry_run:
                os.close(fd)
                fd, target, header = _open_locked(target, True, notes)
        if out is None and not force:
            reason = content_addressed_reason(given) or content_addressed_reason(target)
            if reason:
                raise EditError(
                    given, None, f"refusing to edit in place: {reason}; write a copy with -o OUT (or --force)"
                )
        st = os.fstat(fd)
        entries, changes = plan_changes(header, ops, force)
        result = EditResult(
            given,
            target,
            out,
            "unchanged",
            dry_run,
            0,
            st.st_size,
            st.st_size,
            header.data_offset,
            header.data_offset,
            0,
            changes,
            notes,
        )
        if not changes:
            return result
        data_len = st.st_size - header.data_offset
        kind, lay = _choose(header, entries, out, strategy, reserve, target)
        new_header, pad = lay.data, lay.padding
        new_size = len(new_header) + data_len
        _verify(header, entries, lay, new_size, out or target)
        result.strategy = kind
        result.data_offset_after = len(new_header)
        result.file_bytes_after = new_size
        result.padding_bytes = pad
        old_header = (
            bytes(header.buf[: header.data_offset])
            if len(header.buf) >= header.data_offset
            else os.pread(fd, header.data_offset, 0)
        )
        if kind == "in-place":
            ranges = [(lo, new_header[lo:hi], old_header[lo:hi]) for lo, hi in _changed_ranges(old_header, new_header)]
            result.bytes_written = 2 * sum(len(r[1]) for r in ranges)  # journal + header (estimate for dry runs)
            if not dry_run:
                result.bytes_written = safewrite.patch_in_place(fd, target, st.st_size, ranges)
        elif kind == "insert-range":
            bs = st.st_blksize or 4096
            insert_at = header.data_offset // bs * bs
            insert_len = len(new_header) - header.data_offset
            result.bytes_written = len(old_header) + len(new_header)
            if not dry_run:
                result.bytes_written = safewrite.insert_and_patch(
                    fd, target, st.st_size, insert_at, insert_len, old_header, new_header
                )
        else:
            dst = out or target
            result.bytes_written = new_size
            if not dry_run:
                mode = stat.S_IMODE(st.st_mode)
                result.bytes_written = safewrite.rewrite(
                    target, dst, new_header, header.data_offset, data_len, mode, progress, expected_size=st.st_size
                )
        return result
    except OSError as e:
        raise EditError(target, None, f"{e.strerror or e}; the file was left as it was") from None
    finally:
        os.close(fd)


def _choose(
    header: GGUFHeader, entries: list[_Entry], out: str | None, strategy: str, reserve: int, target: str
) -> tuple[str, _Layout]:
    a = header.alignment
    if out is not None or strategy == "rewrite":
        size = len(build_header(header, entries, None).data)  # type: ignore[union-attr]
        if reserve:
            size = align(size + PADDING_OVERHEAD + reserve, a)
        # keep tensor data at the same offset modulo the page size: the kernel then copies whole
        # pages (4x faster than a misaligned copy_file_range here, and reflinks on xfs/btrfs)
        if not header.tensors:  # nothing to copy, nothing to align
            return "rewrite", build_header(header, entries, size)  # type: ignore[return-value]
        unit = PAGE * a // math.gcd(PAGE, a)
        d = header.data_offset
        start = d + align(size - d, unit)  # where the data section will start
        lay = build_header(header, entries, start) or build_header(header, entries, start + unit)
        assert lay is not None
        return "rewrite", lay
    if strategy in ("auto", "in-place"):
        lay = build_header(header, entries, header.data_offset)
        if lay is not None and lay.padding >= reserve:
            return "in-place", lay
        if strategy == "in-place":
            raise EditError(target, None, "the new metadata does not fit before the data section (use --strategy auto)")
    if strategy in ("auto", "insert-range") and header.tensors:
        if safewrite.supports_insert_range(target):
            bs = os.stat(target).st_blksize or 4096
            unit = bs * a // math.gcd(bs, a)
            smallest = len(build_header(header, entries, None).data)  # type: ignore[union-attr]
            need = smallest + PADDING_OVERHEAD + reserve - header.data_offset
            lay = build_header(header, entries, header.data_offset + max(unit, align(need, unit)))
            if lay is not None:
                return "insert-range", lay
        elif strategy == "insert-range":
            raise EditError(
                target, None, "this filesystem cannot insert ranges (FALLOC_FL_INSERT_RANGE); use --strategy rewrite"
            )
    return _choose(header, entries, None, "rewrite", reserve, target)


def _changed_ranges(old: bytes, new: bytes, block: int = 4096) -> list[tuple[int, int]]:
    """The [lo, hi) ranges where ``old`` and ``new`` (same length) differ: compared in blocks,
    adjacent blocks merged, then trimmed to the first and last differing byte."""
    spans: list[list[int]] = []
    n = len(old)
    for i in range(0, n, block):
        j = min(n, i + block)
        if old[i:j] != new[i:j]:
            if spans and spans[-1][1] == i:
                spans[-1][1] = j
            else:
                spans.append([i, j])
    out = []
    for lo, hi in spans:
        while old[lo] == new[lo]:
            lo += 1
        while old[hi - 1] == new[hi - 1]:
            hi -= 1
        out.append((lo, hi))
    return out


def _open_locked(real: str, writable: bool, notes: list[str]) -> tuple[int, str, GGUFHeader]:
    """Open, lock and parse the file whose metadata an edit changes: for a split model, its first
    shard. Recovers an interrupted earlier edit first."""
    target = real
    for _ in range(2):
        msg = safewrite.recover(target) if os.path.exists(target) else None
        if msg:
            notes.append(f"{target}: {msg}")
        try:
            fd = os.open(target, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise EditError(target, None, "no such file") from None
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise EditError(
                    target,
                    None,
                    f"the file is read-only ({e.strerror}); nothing was written (write a copy with -o OUT)",
                ) from None
            raise EditError(target, None, e.strerror or str(e)) from None
        try:
            safewrite.lock(fd, target)
            header = parse_header(FdSource(target, fd, os.fstat(fd).st_size))
            first = _first_shard(header)
        except BaseException:
            os.close(fd)
            raise
        if first is None or first == target:
            return fd, target, header
        os.close(fd)
        notes.append(f"metadata of a split model lives in its first shard: editing {first}")
        target = first
    raise EditError(real, None, "the first shard of this split model says it is not the first shard")


def _first_shard(header: GGUFHeader) -> str | None:
    """The path of shard 1 when ``header`` belongs to a split model, else None."""
    info = split_info(header)
    if info is None:
        return None
    no, count, _ = info
    m = SHARD_RE.match(os.path.basename(header.path))
    if m is None:
        raise EditError(
            header.path,
            None,
            f"file is shard {no + 1} of {count} but its name does not follow PREFIX-0000N-of-0000M.gguf",
        )
    first = shard_path(os.path.join(os.path.dirname(header.path), m["prefix"]), 1, count)
    if not os.path.exists(first):
        raise EditError(first, None, f"shard 1 of {count}, which holds the metadata, is missing")
    return first
