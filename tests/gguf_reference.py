"""Cross-check ggufx's reader against gguf-py's ``GGUFReader`` (llama.cpp's own Python reader)."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

from ggufx.format.reader import parse_header
from ggufx.format.values import GGUFArray, ValueType
from ggufx.io.sources import FileSource


def _flatten(v):
    if isinstance(v, GGUFArray):
        v = v.tolist()
    if isinstance(v, list):
        out = []
        for x in v:
            out.extend(_flatten(x) if isinstance(x, list) else [x])
        return out
    return v


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@lru_cache(maxsize=4)
def gguf_reader(path: Path):
    """gguf-py's reader takes ~20 s on a 262K vocabulary: parse each real file once per session."""
    from gguf import GGUFReader

    return GGUFReader(path)


def assert_matches_gguf_reader(path: Path) -> int:
    """Same keys (in order), value types, values, tensor names, types, shapes and offsets."""
    ref = gguf_reader(path)
    with FileSource(path) as src:
        h = parse_header(src)
    ref_fields = [(k, f) for k, f in ref.fields.items() if not k.startswith("GGUF.")]
    assert [k for k, _ in ref_fields] == list(h.kvs), "key order differs"
    for key, f in ref_fields:
        kv = h.kvs[key]
        assert kv.offset == f.offset, key
        assert int(kv.type) == int(f.types[0]), key
        if kv.type is ValueType.ARRAY and len(f.types) > 1:
            assert int(kv.value.elem_type) == int(f.types[1]), key
        try:
            expected = f.contents()
        except UnicodeDecodeError:
            continue  # GGUFReader cannot decode invalid UTF-8; ggufx keeps it (checked elsewhere)
        got = _flatten(kv.value) if kv.type is ValueType.ARRAY else kv.value
        if kv.type is ValueType.FLOAT32:
            got = float(got)
        assert _same(got, expected), f"{key}: {got!r} != {expected!r}"
    assert [t.name for t in ref.tensors] == [t.name for t in h.tensors]
    for rt, t in zip(ref.tensors, h.tensors):
        assert int(rt.tensor_type) == t.type.id, t.name
        assert [int(x) for x in rt.shape] == list(t.shape), t.name
        assert int(rt.data_offset) == t.file_offset, t.name
        assert int(rt.n_elements) == t.n_elements, t.name
        assert int(rt.n_bytes) == t.nbytes, t.name
        assert int(rt.field.offset) == t.info_offset, t.name
    return len(h.kvs)
