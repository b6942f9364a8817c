"""Split models: llama.cpp's shard names and ``split.*`` keys, and assembling shards into one model.

A shard of a split model (``split.count`` > 1) names its siblings by llama.cpp's
``llama_split_path``: ``PREFIX-00001-of-00003.gguf``. Metadata comes from the first shard (where
``llama-gguf-split`` puts it); tensors come from all shards, each saying which shard holds it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ggufx.errors import GGUFError, ShardError
from ggufx.format.reader import GGUFHeader, TensorInfo
from ggufx.format.values import ValueType
from ggufx.model.model import GGUFModel, Shard

SHARD_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def shard_path(prefix: str, no: int, count: int) -> str:
    """llama.cpp's ``llama_split_path``: ``PREFIX-%05d-of-%05d.gguf`` with 1-based ``no``."""
    return f"{prefix}-{no:05d}-of-{count:05d}.gguf"


def split_info(h: GGUFHeader) -> tuple[int, int, int | None] | None:
    """(no, count, tensors_total) from ``split.*`` keys, or None for an unsplit file."""
    count_kv = h.kvs.get("split.count")
    if count_kv is None:
        return None
    no_kv = h.kvs.get("split.no")
    total_kv = h.kvs.get("split.tensors.count")
    for kv in (count_kv, no_kv, total_kv):
        if kv is not None and kv.type in (
            ValueType.STRING,
            ValueType.ARRAY,
            ValueType.FLOAT32,
            ValueType.FLOAT64,
            ValueType.BOOL,
        ):
            raise ShardError(h.path, kv.offset, f"{kv.key} must be an integer, not {kv.type.short}")
    count = int(count_kv.value)
    no = int(no_kv.value) if no_kv is not None else 0
    total = int(total_kv.value) if total_kv is not None else None
    if count <= 1:
        return None
    if not 0 <= no < count:
        raise ShardError(h.path, no_kv.offset if no_kv else None, f"split.no = {no} is outside 0..{count - 1}")
    return no, count, total


def assemble_shards(
    path: str,
    head: GGUFHeader,
    name: str,
    sibling: Callable[[str], str],
    parse_many: Callable[[list[str]], list[GGUFHeader]],
) -> GGUFModel:
    """The model ``head`` belongs to: itself, or all shards of its split model.

    ``name`` is the file name of ``path``, ``sibling(name)`` the location of another file in the
    same folder, ``parse_many`` parses several locations (a remote source does it in parallel)."""
    info = split_info(head)
    if info is None:
        return GGUFModel([Shard(0, path, head)])
    no, count, total = info
    m = SHARD_RE.match(name)
    if m is None:
        raise ShardError(
            path,
            None,
            f"file is shard {no + 1} of {count} but its name does not follow PREFIX-0000N-of-0000M.gguf, so its siblings cannot be found",
        )
    if int(m["count"]) != count or int(m["no"]) != no + 1:
        raise ShardError(
            path,
            None,
            f"file name says shard {int(m['no'])} of {int(m['count'])} but split.no/split.count say {no + 1} of {count}",
        )
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
                raise ShardError(
                    p,
                    None,
                    f"expected shard {i + 1} of {count}, but its split.* keys say {'not split' if sinfo is None else f'{sinfo[0] + 1} of {sinfo[1]}'}",
                )
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
        raise ShardError(
            shards[0].path,
            None,
            f"split.tensors.count = {total} but the {count} shards hold {len(model.tensors)} tensors",
        )
    return model


def _with_shard(t: TensorInfo, index: int) -> TensorInfo:
    return TensorInfo(
        t.name, t.shape, t.type, t.offset, t.file_offset, t.n_elements, t.nbytes, index, t.info_offset, t.size_derived
    )
