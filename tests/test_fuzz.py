"""Property tests: random files written by gguf-py read back identically; mutated files only
ever raise GGUFError, with bounded memory."""

from __future__ import annotations

import random
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFEndian, GGUFValueType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ggufx
from ggufx.analysis.summary import summarize
from ggufx.errors import GGUFError
from ggufx.format.values import GGUFArray

from .conftest import FIXTURES

KEY = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=24)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)

SCALARS = {
    GGUFValueType.UINT8: st.integers(0, 2**8 - 1),
    GGUFValueType.INT8: st.integers(-(2**7), 2**7 - 1),
    GGUFValueType.UINT16: st.integers(0, 2**16 - 1),
    GGUFValueType.INT16: st.integers(-(2**15), 2**15 - 1),
    GGUFValueType.UINT32: st.integers(0, 2**32 - 1),
    GGUFValueType.INT32: st.integers(-(2**31), 2**31 - 1),
    GGUFValueType.UINT64: st.integers(0, 2**64 - 1),
    GGUFValueType.INT64: st.integers(-(2**63), 2**63 - 1),
    GGUFValueType.FLOAT32: st.floats(width=32, allow_nan=False),
    GGUFValueType.FLOAT64: st.floats(allow_nan=False),
    GGUFValueType.BOOL: st.booleans(),
    GGUFValueType.STRING: TEXT,
}


@st.composite
def kv_entries(draw):
    vtype = draw(st.sampled_from(list(SCALARS)))
    if draw(st.booleans()):
        values = draw(st.lists(SCALARS[vtype], min_size=1, max_size=12))
        return GGUFValueType.ARRAY, vtype, values
    return vtype, None, draw(SCALARS[vtype])


QTYPES = [
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q4_K,
    GGMLQuantizationType.Q6_K,
    GGMLQuantizationType.IQ4_XS,
    GGMLQuantizationType.Q5_1,
    GGMLQuantizationType.BF16,
]


@st.composite
def tensor_specs(draw):
    qtype = draw(st.sampled_from(QTYPES))
    block, _ = GGML_QUANT_SIZES[qtype]
    ne0 = block * draw(st.integers(1, 3))
    rest = draw(st.lists(st.integers(1, 3), max_size=2))
    return qtype, (ne0, *rest)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kvs=st.dictionaries(
        KEY.filter(lambda k: k not in ("general.architecture", "general.alignment") and not k.startswith("split.")),
        kv_entries(),
        max_size=8,
    ),
    tensors=st.lists(tensor_specs(), max_size=5),
    big_endian=st.booleans(),
)
def test_roundtrip_against_gguf_writer(tmp_path_factory, kvs, tensors, big_endian) -> None:
    path = tmp_path_factory.mktemp("rt") / "random.gguf"
    w = GGUFWriter(path, "llama", endianess=GGUFEndian.BIG if big_endian else GGUFEndian.LITTLE)
    for key, (vtype, sub, value) in kvs.items():
        w.add_key_value(key, value, vtype, sub_type=sub)
    for i, (qtype, shape) in enumerate(tensors):
        block, size = GGML_QUANT_SIZES[qtype]
        n = int(np.prod(shape))
        data = np.full(n // block * size, i, dtype=np.uint8)
        byte_shape = tuple(reversed(shape[1:])) + (data.size // int(np.prod(shape[1:], dtype=np.int64)),)
        w.add_tensor(f"t{i}.weight", data.reshape(byte_shape), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    m = ggufx.open(path)
    assert m.header.endianness == ("big" if big_endian else "little")
    assert list(m.metadata) == ["general.architecture", *kvs]
    for key, (vtype, sub, value) in kvs.items():
        got = m.metadata[key]
        if isinstance(got, GGUFArray):
            assert int(got.elem_type) == int(sub)
            got = got.tolist()
        if (sub or vtype) == GGUFValueType.FLOAT32:
            f32 = lambda v: struct.unpack("<f", struct.pack("<f", v))[0]  # noqa: E731
            value = [f32(v) for v in value] if isinstance(value, list) else f32(value)
        assert got == value, key
    assert [(t.name, t.type.id, t.shape) for t in m.tensors] == [
        (f"t{i}.weight", int(q), tuple(s)) for i, (q, s) in enumerate(tensors)
    ]
    s = summarize(m)
    assert s.parameters == sum(int(np.prod(s_)) for _, s_ in tensors)


SEEDS = {
    "all-types-v3.gguf": 1,
    "big-endian.gguf": 2,
    "edge-values.gguf": 3,
    "split-00001-of-00003.gguf": 4,
    "raw-base.gguf": 5,
}


def _mutations(data: bytes, rng: random.Random, n: int):
    for _ in range(n):
        b = bytearray(data)
        kind = rng.randrange(4)
        if kind == 0:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate
            del b[rng.randrange(len(b)) :]
        elif kind == 2:  # extend with junk
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        else:  # overwrite a length-like u64 with a huge value
            pos = rng.randrange(0, max(1, len(b) - 8))
            b[pos : pos + 8] = struct.pack("<Q", rng.choice([2**63, 2**32, 2**64 - 1, len(b) * 3]))
        yield bytes(b)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_mutated_files_only_raise_gguf_error(tmp_path: Path, name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    rng = random.Random(SEEDS[name])
    path = tmp_path / name  # keep the shard name so siblings are looked for (and missing)
    outcomes = {"ok": 0, "error": 0}
    for mutated in _mutations(data, rng, 400):
        path.write_bytes(mutated)
        try:
            m = ggufx.open(path)
            summarize(m)
            for v in m.metadata.values():
                if isinstance(v, GGUFArray):
                    v.tolist()
            outcomes["ok"] += 1
        except GGUFError as e:
            assert "\n" not in e.one_line()
            outcomes["error"] += 1
    assert outcomes["error"] > 50  # the mutations really did break files


def test_lying_lengths_allocate_nothing_big() -> None:
    tracemalloc.start()
    try:
        for name in (
            "huge-array-count",
            "huge-string-array-count",
            "lying-string-length",
            "lying-key-length",
            "huge-tensor-count",
            "huge-kv-count",
            "nesting-bomb",
        ):
            with pytest.raises(GGUFError):
                ggufx.open(FIXTURES / "malformed" / f"{name}.gguf")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
