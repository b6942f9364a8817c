"""An opened model: one GGUF file, or every shard of a split model presented as one.

``ggufx.open(path)`` parses the header of the file it is given; if that file is a shard of a split
model (``split.count`` > 1), it finds the siblings by llama.cpp's naming
``PREFIX-00001-of-00003.gguf``, parses their headers too and checks that they agree. Metadata comes
from the first shard (where ``llama-gguf-split`` puts it); tensors come from all shards, each
saying which shard holds it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable

from ggufx.errors import GGUFError, ShardError
from ggufx.format.reader import KV, GGUFHeader, TensorInfo, parse_header
from ggufx.io.sources import FileSource, is_remote
from ggufx.format.values import ValueType

SHARD_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def shard_path(prefix: str, no: int, count: int) -> str:
    """llama.cpp's ``llama_split_path``: ``PREFIX-%05d-of-%05d.gguf`` with 1-based ``no``."""
    return f"{prefix}-{no:05d}-of-{count:05d}.gguf"


class Metadata(Mapping):
    """Metadata of a model: a read-only mapping from key to Python value.

    Arrays are :class:`~ggufx.format.values.GGUFArray` objects, decoded on demand. ``kv(key)`` gives the
    full record (value type, byte range in the file).
    """

    __slots__ = ("_kvs",)

    def __init__(self, kvs: dict[str, KV]):
        self._kvs = kvs

    def __getitem__(self, key: str) -> Any:
        return self._kvs[key].value

    def __iter__(self) -> Iterator[str]:
        return iter(self._kvs)

    def __len__(self) -> int:
        return len(self._kvs)

    def __contains__(self, key: object) -> bool:
        return key in self._kvs

    def kv(self, key: str) -> KV:
        return self._kvs[key]

    def kvs(self) -> list[KV]:
        return list(self._kvs.values())

    def type_of(self, key: str) -> ValueType:
        return self._kvs[key].type

    def get_int(self, key: str) -> int | None:
        v = self._kvs.get(key)
        if v is None or v.type in (ValueType.STRING, ValueType.ARRAY, ValueType.FLOAT32, ValueType.FLOAT64):
            return None
        return int(v.value)

    def get_str(self, key: str) -> str | None:
        v = self._kvs.get(key)
        return v.value if v is not None and v.type is ValueType.STRING else None


@dataclass(frozen=True, slots=True)
class Shard:
    """One file of a model."""

    index: int  # 0-based
    path: str
    header: GGUFHeader

    @property
    def file_size(self) -> int:
        return self.header.file_size


class GGUFModel:
    """A parsed model. Cheap to create: only headers are read."""

    def __init__(self, shards: list[Shard]):
        self.shards = shards
        first = shards[0].header
        self.header = first
        self.path = first.path
        self.metadata = Metadata(first.kvs)
        self.tensors: list[TensorInfo] = [t for s in shards for t in s.header.tensors]

    # -- convenience -------------------------------------------------------------------------
    @property
    def architecture(self) -> str | None:
        return self.metadata.get_str("general.architecture")

    def arch_key(self, suffix: str) -> str:
        """``{architecture}.{suffix}``, e.g. ``arch_key('context_length')``."""
        return f"{self.architecture}.{suffix}"

    @property
    def file_size(self) -> int:
        return sum(s.file_size for s in self.shards)

    @property
    def is_split(self) -> bool:
        return len(self.shards) > 1

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def summary(self):
        """The :class:`~ggufx.analysis.summary.ModelSummary` that ``ggufx info`` prints."""
        from ggufx.analysis.summary import summarize

        return summarize(self)

    def __repr__(self) -> str:
        return f"GGUFModel({self.path!r}, {len(self.shards)} shard(s), {len(self.tensors)} tensors)"


SourceOpener = Callable[[str], Any]


def split_info(h: GGUFHeader) -> tuple[int, int, int | None] | None:
    """(no, count, tensors_total) from ``split.*`` keys, or None for an unsplit file."""
    count_kv = h.kvs.get("split.count")
    if count_kv is None:
        return None
    no_kv = h.kvs.get("split.no")
    total_kv = h.kvs.get("split.tensors.count")
    for kv in (count_kv, no_kv, total_kv):
        if kv is not None and kv.type in (ValueType.STRING, ValueType.ARRAY, ValueType.FLOAT32, ValueType.FLOAT64, ValueType.BOOL):
            raise ShardError(h.path, kv.offset, f"{kv.key} must be an integer, not {kv.type.short}")
    count = int(count_kv.value)
    no = int(no_kv.value) if no_kv is not None else 0
    total = int(total_kv.value) if total_kv is not None else None
    if count <= 1:
        return None
    if not 0 <= no < count:
        raise ShardError(h.path, no_kv.offset if no_kv else None, f"split.no = {no} is outside 0..{count - 1}")
    return no, count, total


def open_model(path: str | os.PathLike[str], opener: SourceOpener = FileSource, recover: bool = True) -> GGUFModel:
    """Open a GGUF file (or every shard of the split model it belongs to).

    ``path`` may also be an ``http(s)://`` URL or an ``hf://ORG/REPO[@REV]/FILE`` reference: then
    only the headers are fetched, with range requests (:mod:`ggufx.io.remote`).

    A local file that an interrupted ggufx edit left with an undo journal is first restored
    (``recover=False`` skips that; the edit engine does it under its own lock)."""
    path = os.fspath(path)
    if opener is FileSource and is_remote(path):
        from ggufx.io.remote import open_remote

        return open_remote(path)
    if recover and opener is FileSource:
        _recover_if_journal(path)

    def parse(p: str) -> GGUFHeader:
        src = opener(p)
        try:
            return parse_header(src)
        finally:
            _close(src)

    head = parse(path)
    return assemble_shards(path, head, os.path.basename(path), lambda name: os.path.join(os.path.dirname(path), name),
                           lambda paths: [parse(p) for p in paths])


def assemble_shards(path: str, head: GGUFHeader, name: str, sibling: Callable[[str], str],
                    parse_many: Callable[[list[str]], list[GGUFHeader]]) -> GGUFModel:
    """The model ``head`` belongs to: itself, or all shards of its split model.

    ``name`` is the file name of ``path``, ``sibling(name)`` the location of another file in the
    same folder, ``parse_many`` parses several locations (a remote source does it in parallel)."""
    info = split_info(head)
    if info is None:
        return GGUFModel([Shard(0, path, head)])
    no, count, total = info
    m = SHARD_RE.match(name)
    if m is None:
        raise ShardError(path, None, f"file is shard {no + 1} of {count} but its name does not follow PREFIX-0000N-of-0000M.gguf, so its siblings cannot be found")
    if int(m["count"]) != count or int(m["no"]) != no + 1:
        raise ShardError(path, None, f"file name says shard {int(m['no'])} of {int(m['count'])} but split.no/split.count say {no + 1} of {count}")
    locations = [sibling(shard_path(m["prefix"], i + 1, count)) for i in range(count)]
    others = [p for i, p in enumerate(locations) if i != no]
    try:
        parsed = iter(parse_many(others))
    except GGUFError as e:
        bad = e.path if e.path in others else None
        where = f"shard {locations.index(bad) + 1} of {count}" if bad else f"a shard of {count}"
        raise ShardError(bad or path, None, f"{where} is missing or unreadable ({e.message})") from None
    shards: list[Shard] = []
    for i, p in enumerate(locations):
        h = head if i == no else next(parsed)
        if i != no:
            sinfo = split_info(h)
            if sinfo is None or sinfo[0] != i or sinfo[1] != count:
                raise ShardError(p, None, f"expected shard {i + 1} of {count}, but its split.* keys say {'not split' if sinfo is None else f'{sinfo[0] + 1} of {sinfo[1]}'}")
        shards.append(Shard(i, p, h))
    # re-label tensors with their shard index
    for s in shards:
        if s.index:
            s.header.tensors[:] = [_with_shard(t, s.index) for t in s.header.tensors]
    model = GGUFModel(shards)
    seen: set[str] = set()
    for s in shards:
        for t in s.header.tensors:
            if t.name in seen:
                raise ShardError(s.path, t.info_offset, f"tensor {t.name!r} appears in more than one shard")
            seen.add(t.name)
    if total is not None and total != len(model.tensors):
        raise ShardError(shards[0].path, None, f"split.tensors.count = {total} but the {count} shards hold {len(model.tensors)} tensors")
    return model


def _recover_if_journal(path: str) -> None:
    # one stat on the hot path; the journal machinery (safewrite, ~4 ms of imports) is loaded only
    # when a journal exists. The suffix is safewrite.JOURNAL_SUFFIX; the crash tests recover
    # through this function, so the two cannot drift apart unnoticed.
    if os.path.exists(path + ".ggufx-journal"):
        from ggufx.edit.safewrite import recover

        recover(path)


def _with_shard(t: TensorInfo, index: int) -> TensorInfo:
    return TensorInfo(t.name, t.shape, t.type, t.offset, t.file_offset, t.n_elements, t.nbytes, index,
                      t.info_offset, t.size_derived)


def _close(src: Any) -> None:
    close = getattr(src, "close", None)
    if close is not None:
        close()
