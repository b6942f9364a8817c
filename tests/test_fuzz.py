"""Property tests: random files written by gguf-py read back identically; mutated files only
ever raise GGUFError, with bounded memory."""

from __future__ import annotations

import random
import struct
import sys
import tracemalloc
from collections import Counter
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
from ggufx.format.reader import parse_header
from ggufx.format.values import GGUFArray
from tests.support import FIXTURES, model_cache

TOOLS = Path(__file__).resolve().parent.parent / "tools"

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
            "tensor-name-length-lies",
        ):
            with pytest.raises(GGUFError):
                ggufx.open(FIXTURES / "malformed" / f"{name}.gguf")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


# -- lengths llama.cpp bounds are checked before the bytes they cover are read ---------------------


class _HoleSource:
    """A header in memory in front of a (virtual) hole of zeros: a sparse file of any size."""

    def __init__(self, header: bytes, size: int):
        self.path = "hole.gguf"
        self.header = header
        self.size = size
        self.bytes_read = 0

    def read(self, offset: int, n: int) -> bytes:
        self.bytes_read += n
        part = self.header[offset : offset + n]
        return part + bytes(n - len(part))


def _raw_with(kv: tuple[str, int, bytes] | None = None, tensor_name_len: int | None = None):
    from .fixtures.make_fixtures import ARR, STR, U8, Raw

    r = Raw()
    r.kv("general.architecture", STR, r.s("llama"))
    if kv is not None:
        r.kv(*kv)
    r.tensor("a.weight", (8,), 0, 0)
    if tensor_name_len is not None:
        r.tinfos[0] = r.s("a.weight", tensor_name_len) + r.tinfos[0][16:]
    return r, (ARR, STR, U8)


GIB = 1 << 30


@pytest.mark.parametrize(
    "case",
    ["tensor-name-231MB", "key-over-1GiB", "string-over-1GiB", "array-over-1Gi-elements", "string-in-array-over-1GiB"],
)
def test_lengths_pointing_into_the_hole_are_refused_before_reading(case: str) -> None:
    """Issue #14: a length that stays inside a large file but breaks llama.cpp's limit (tensor names
    under 64 bytes, strings and arrays up to 2**30) is refused without reading what it covers."""
    from .fixtures.make_fixtures import ARR, STR, U8, Raw

    r = Raw()
    size = 4 * GIB
    if case == "tensor-name-231MB":
        r, _ = _raw_with(tensor_name_len=231_000_000)
        size = 300_000_000
        phrase = "is 231,000,000 bytes, llama.cpp allows 63"
    elif case == "key-over-1GiB":
        r.kvs.append(r.s("general.architecture", GIB + 1) + b"general.architecture")
        phrase = "metadata key claims 1,073,741,825 bytes, llama.cpp allows at most 1,073,741,824"
    elif case == "string-over-1GiB":
        r.kv("general.name", STR, r.p("Q", GIB + 1) + b"x")
        phrase = "claims 1,073,741,825 bytes, llama.cpp allows at most 1,073,741,824"
    elif case == "array-over-1Gi-elements":
        r.kv("my.bytes", ARR, r.p("iQ", U8, GIB + 1))
        phrase = "claims 1,073,741,825 elements, llama.cpp allows at most 1,073,741,824"
    else:
        r.kv("my.strs", ARR, r.p("iQ", STR, 3) + r.s("ok") + r.p("Q", GIB + 1) + b"x")
        phrase = "string 1 of array 'my.strs' claims 1,073,741,825 bytes, llama.cpp allows at most"
    src = _HoleSource(r.build(), size)
    tracemalloc.start()
    try:
        with pytest.raises(GGUFError) as info:
            parse_header(src)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert phrase in info.value.message
    assert "\n" not in info.value.one_line()
    assert src.bytes_read <= 1 << 20  # the first read, nothing more
    assert peak < 4 << 20


def test_a_header_larger_than_memory_is_a_gguf_error() -> None:
    """An array of 2**30 - 1 u64 (8 GiB) is within llama.cpp's limits in a large enough file; when
    the machine cannot hold it, the reader says so in one line instead of raising MemoryError."""
    from .fixtures.make_fixtures import ARR, U64, Raw

    class Starved(_HoleSource):
        def read(self, offset: int, n: int) -> bytes:
            if n > 64 << 20:
                raise MemoryError
            return super().read(offset, n)

    r = Raw()
    r.kv("my.u64s", ARR, r.p("iQ", U64, GIB - 1))
    with pytest.raises(GGUFError, match=r"array 'my.u64s' needs 8,589,934,6\d\d bytes of header in memory, more than"):
        parse_header(Starved(r.build(), 16 * GIB))


def test_nested_arrays_are_bounded() -> None:
    """llama.cpp refuses nested arrays; ggufx reads them (gguf-py writes them) but not millions."""
    from .fixtures.make_fixtures import ARR, U8, Raw

    r = Raw()
    n = 65_537
    r.kv("nest", ARR, r.p("iQ", ARR, n) + r.p("iQ", U8, 0) * n)
    with pytest.raises(GGUFError, match="more than 65,536 nested arrays"):
        parse_header(_HoleSource(r.build(), len(r.build())))
    r = Raw()
    r.kv("nest", ARR, r.p("iQ", ARR, 3) + r.p("iQ", U8, 0) * 3)
    assert parse_header(_HoleSource(r.build(), len(r.build()))).kvs["nest"].value.tolist() == [[], [], []]


# -- a fast sample of tools/fuzz_gguf.py (the long run: python tools/fuzz_gguf.py) -----------------

SAMPLE_MUTANTS = 100
SAMPLE_RUN_SEED = 14


@pytest.fixture(scope="module")
def fuzz_sample(real_models) -> list[dict]:
    import signal

    sys.path.insert(0, str(TOOLS))
    import fuzz_gguf

    seeds = fuzz_gguf.load_seeds(model_cache(), [fuzz_gguf.HANDCRAFTED_DIR])
    assert {s.kind for s in seeds} == {"real", "handcrafted"}
    previous = signal.signal(signal.SIGALRM, fuzz_gguf._on_alarm)
    try:
        out = []
        for i in range(SAMPLE_MUTANTS):
            seed, m = fuzz_gguf.make_mutant(i, SAMPLE_RUN_SEED, seeds)
            out.append(fuzz_gguf.run_mutant(i, seed, m, timeout=30.0))
        return out
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_fuzz_sample_mutants_open_or_are_refused_with_one_line(fuzz_sample: list[dict]) -> None:
    """Structure-aware mutants of the real files' headers (full size, data as a hole) and of
    llama.cpp's handcrafted files: opening one gives a model or a one-line GGUFError."""
    assert [(r["i"], r["findings"]) for r in fuzz_sample if any(f[0] == "open" for f in r["findings"])] == []
    assert all(r["open"] in ("opened", "rejected") for r in fuzz_sample)
    outcomes = Counter(r["open"] for r in fuzz_sample)
    assert outcomes["rejected"] >= 20 and outcomes["opened"] >= 10, outcomes
    assert all("\n" not in r["message"] for r in fuzz_sample if r["open"] == "rejected")


def test_fuzz_sample_read_only_commands_raise_only_gguf_errors(fuzz_sample: list[dict]) -> None:
    """Every mutant that opens goes through info, tensors, meta, roles, layers, recipe, memory, fit,
    report and template info (rendered as the CLI renders them): nothing but GGUFError comes out."""
    findings = [(r["i"], r["seed"], r["ops"], f) for r in fuzz_sample for f in r["findings"] if f[0] != "open"]
    assert findings == []
