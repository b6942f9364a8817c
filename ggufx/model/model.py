"""An opened model: metadata, tensors and the shards they come from.

:class:`GGUFModel` is built by :func:`ggufx.model.open_model` from parsed headers
(:mod:`ggufx.format.reader`); split models are assembled by :mod:`ggufx.model.shards`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ggufx.format.reader import KV, GGUFHeader, TensorInfo
from ggufx.format.values import ValueType


class Metadata(Mapping[str, Any]):
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

    def __repr__(self) -> str:
        return f"GGUFModel({self.path!r}, {len(self.shards)} shard(s), {len(self.tensors)} tensors)"
