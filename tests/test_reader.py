"""The header reader on synthetic fixtures: every value type, v2/v3, big-endian, shards,
unknown types, and every malformed file with its exact error class, offset and message."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.summary import summarize
from ggufx.errors import FormatError, GGUFError, ShardError, SourceError
from ggufx.format.reader import parse_header
from ggufx.format.values import GGUFArray, ValueType
from ggufx.io.sources import FileSource
from tests.support import FIXTURES

from .gguf_reference import assert_matches_gguf_reader

VALID = [
    "all-types-v3.gguf",
    "all-types-v2.gguf",
    "big-endian.gguf",
    "edge-values.gguf",
    "unknown-type.gguf",
    "no-tensors.gguf",
    "raw-base.gguf",
    "split-00001-of-00003.gguf",
    "split-00002-of-00003.gguf",
    "split-00003-of-00003.gguf",
]
EXPECTED_MALFORMED = json.loads((FIXTURES / "malformed" / "expected.json").read_text())


@pytest.mark.parametrize("name", [n for n in VALID if n != "unknown-type.gguf"])
def test_matches_gguf_reader(name: str) -> None:
    assert assert_matches_gguf_reader(FIXTURES / name) > 0


def test_every_value_type_decodes() -> None:
    md = ggufx.open(FIXTURES / "all-types-v3.gguf").metadata
    expected = {
        "test.u8": (ValueType.UINT8, 200),
        "test.i8": (ValueType.INT8, -100),
        "test.u16": (ValueType.UINT16, 60000),
        "test.i16": (ValueType.INT16, -30000),
        "test.u32": (ValueType.UINT32, 4_000_000_000),
        "test.i32": (ValueType.INT32, -2_000_000_000),
        "test.bool": (ValueType.BOOL, True),
        "test.str": (ValueType.STRING, "héllo ✓ 世界"),
        "test.u64": (ValueType.UINT64, 2**63 + 5),
        "test.i64": (ValueType.INT64, -(2**62)),
        "test.f64": (ValueType.FLOAT64, 3.141592653589793),
    }
    for key, (vt, value) in expected.items():
        assert md.type_of(key) is vt
        assert md[key] == value
    assert md.type_of("test.f32") is ValueType.FLOAT32
    assert md["test.f32"] == struct.unpack("<f", struct.pack("<f", 0.1))[0]
    arrays = {
        "test.arr.u8": [1, 2, 255],
        "test.arr.i8": [-1, 2, -128],
        "test.arr.u16": [1, 65535],
        "test.arr.i16": [-32768, 7],
        "test.arr.u32": [1, 2, 3],
        "test.arr.i32": [-1, 0, 1],
        "test.arr.bool": [True, False, True],
        "test.arr.str": ["a", "", "ünï", "<|im_start|>"],
        "test.arr.u64": [2**64 - 1, 0],
        "test.arr.i64": [-(2**63), 2**63 - 1],
        "test.arr.f64": [2.5, -0.0],
        "test.arr.nested": [[1, 2], [3], [4, 5, 6]],
        "test.arr.nested_str": [["x", "y"], ["z"]],
    }
    for key, value in arrays.items():
        arr = md[key]
        assert isinstance(arr, GGUFArray)
        assert arr.tolist() == value, key
        assert len(arr) == len(value)
        assert arr[-1] == (value[-1] if not isinstance(value[-1], list) else arr[-1])
    assert md["test.arr.nested"].elem_type is ValueType.ARRAY
    assert md["test.arr.nested"][2].tolist() == [4, 5, 6]
    assert md["test.arr.str"][1:3] == ["", "ünï"]


def test_v2_v3_and_big_endian_agree() -> None:
    models = [ggufx.open(FIXTURES / n) for n in ("all-types-v3.gguf", "all-types-v2.gguf", "big-endian.gguf")]
    assert [m.header.version for m in models] == [3, 2, 3]
    assert [m.header.endianness for m in models] == ["little", "little", "big"]
    ref = models[0]
    for m in models[1:]:
        assert list(m.metadata) == list(ref.metadata)
        for k in ref.metadata:
            a, b = ref.metadata[k], m.metadata[k]
            assert (a.tolist() if isinstance(a, GGUFArray) else a) == (b.tolist() if isinstance(b, GGUFArray) else b), k
        assert [(t.name, t.shape, t.type, t.offset, t.nbytes) for t in m.tensors] == [
            (t.name, t.shape, t.type, t.offset, t.nbytes) for t in ref.tensors
        ]


def test_edge_values() -> None:
    md = ggufx.open(FIXTURES / "edge-values.gguf").metadata
    assert md["edge.empty_str"] == ""
    assert md["edge.empty_arr_u32"].tolist() == [] and md["edge.empty_arr_str"].tolist() == []
    assert md["edge.arr_empty_strs"].tolist() == ["", "", ""]
    # invalid UTF-8 in a value is kept losslessly
    assert md["edge.bad_utf8_value"].encode("utf-8", "surrogateescape") == b"ok\xff\xfe"
    assert md["edge.u64_max"] == 2**64 - 1
    assert math.isnan(md["edge.f32_nan"]) and md["edge.f64_inf"] == -math.inf
    assert md["edge.bool_false"] is False
    assert md["edge.nested_empty"].tolist() == [[], [-5]]
    m = ggufx.open(FIXTURES / "edge-values.gguf")
    assert m.header.alignment == 64 and m.header.data_offset % 64 == 0


def test_lazy_string_array_is_indexed_not_decoded() -> None:
    m = ggufx.open(FIXTURES / "all-types-v3.gguf")
    tokens = m.metadata["tokenizer.ggml.tokens"]
    assert tokens._index is None  # nothing decoded at open
    assert tokens[3] == "hello"
    assert tokens.raw_item(4) == b" world"
    assert tokens._index is not None and len(tokens._index) == 6


def test_tensor_sizes_from_type_table() -> None:
    m = ggufx.open(FIXTURES / "all-types-v3.gguf")
    t = {t.name: t for t in m.tensors}
    assert t["token_embd.weight"].nbytes == 64 * 16 // 32 * 34  # Q8_0: 32 elements in 34 bytes
    assert t["blk.0.attn_q.weight"].nbytes == 256 * 4 // 256 * 144  # Q4_K: 256 in 144 bytes
    assert t["blk.0.attn_v.weight"].nbytes == 256 * 2 // 256 * 210  # Q6_K
    assert t["blk.0.attn_k.weight"].nbytes == 64 * 4 // 32 * 22  # Q5_0
    assert t["blk.0.ffn_down.weight"].nbytes == 64 * 4 * 2  # F16
    assert t["blk.0.attn_norm.weight"].nbytes == 64 * 4  # F32
    assert t["blk.0.attn_q.weight"].bpw == 4.5
    assert m.header.data_offset % 32 == 0
    for a, b in zip(m.tensors, m.tensors[1:]):
        assert b.offset == a.offset + -(-a.nbytes // 32) * 32


def test_unknown_type_is_reported_with_derived_size() -> None:
    m = ggufx.open(FIXTURES / "unknown-type.gguf")
    t = m.tensor("mystery.weight")
    assert t.type.name == "UNKNOWN(250)" and not t.type.known
    assert t.size_derived and t.nbytes == 96 - 32
    s = summarize(m)
    assert s.unknown_types == ("UNKNOWN(250)",)
    hist = {row.type: row for row in s.types}
    assert hist["UNKNOWN(250)"].bytes == 64 and hist["UNKNOWN(250)"].parameters == 30
    assert s.tensor_bytes == 32 + 64 + 32


def test_zero_element_tensor_is_read_as_llama_cpp_reads_it(tmp_path: Path) -> None:
    """gguf.cpp refuses negative dimensions only (test-gguf's TENSORS_ZERO_DIM loads): a dimension
    of 0 is an empty tensor of 0 bytes, and the next tensor starts at the same offset."""
    from tests.fixtures.make_fixtures import STR, Raw

    r = Raw()
    r.kv("general.architecture", STR, r.s("llama"))
    r.tensor("empty.weight", (256, 0), 12, 0)  # Q4_K
    r.tensor("b.weight", (8,), 0, 0)
    r.data = bytes(32)
    path = tmp_path / "zero-dim.gguf"
    path.write_bytes(r.build())
    m = ggufx.open(path)
    empty, b = m.tensors
    assert (empty.shape, empty.n_elements, empty.nbytes, empty.offset) == ((256, 0), 0, 0, 0)
    assert (b.n_elements, b.nbytes, b.offset) == (8, 32, 0)
    s = summarize(m)
    assert s.parameters == 8 and s.tensor_bytes == 32


def test_newer_type_id_is_sized_by_the_next_tensor_only(tmp_path: Path) -> None:
    """An id past llama.cpp's table is carried with its size derived from the next tensor's offset;
    as the last tensor it has nothing to bound it (the bytes up to the end of the file may be
    anything) and is refused, naming the pinned llama.cpp."""
    from tests.fixtures.make_fixtures import STR, Raw

    r = Raw()
    r.kv("general.architecture", STR, r.s("llama"))
    r.tensor("a.weight", (8,), 0, 0)
    r.tensor("new.weight", (64,), 43, 32)
    r.data = bytes(32 + 64)
    path = tmp_path / "newer-last.gguf"
    path.write_bytes(r.build())
    with pytest.raises(GGUFError, match=r"type id 43, which llama.cpp 11434.0.0 does not know .* last tensor"):
        ggufx.open(path)
    r.tensor("c.weight", (8,), 0, 96)
    r.data = bytes(32 + 64 + 32)
    path.write_bytes(r.build())
    t = ggufx.open(path).tensor("new.weight")
    assert (t.type.name, t.size_derived, t.nbytes) == ("UNKNOWN(43)", True, 64)


def test_no_tensors_file() -> None:
    m = ggufx.open(FIXTURES / "no-tensors.gguf")
    assert m.tensors == [] and m.metadata["tokenizer.ggml.tokens"].tolist() == ["<s>", "</s>", "▁hi"]
    s = summarize(m)
    assert s.parameters == 0 and s.bpw == 0.0 and s.vocab_size == 3


@pytest.mark.parametrize("name", sorted(EXPECTED_MALFORMED))
def test_malformed_file_is_a_precise_error(name: str) -> None:
    exp = EXPECTED_MALFORMED[name]
    path = FIXTURES / "malformed" / f"{name}.gguf"
    with pytest.raises(GGUFError) as info:
        ggufx.open(path)
    err = info.value
    assert exp["error"] in [c.__name__ for c in type(err).__mro__], (type(err).__name__, err.message)
    assert isinstance(err, FormatError)
    if exp["offset"] is not None:
        assert err.offset == exp["offset"], err.message
    assert exp["phrase"] in err.message
    assert err.path == str(path)
    line = err.one_line()
    assert "\n" not in line and line.startswith(str(path))


# -- split models -------------------------------------------------------------------------------


def test_any_shard_opens_the_whole_model() -> None:
    whole = ggufx.open(FIXTURES / "all-types-v3.gguf")
    for i in (1, 2, 3):
        m = ggufx.open(FIXTURES / f"split-0000{i}-of-00003.gguf")
        assert len(m.shards) == 3 and m.is_split
        assert [t.name for t in m.tensors] == [t.name for t in whole.tensors]
        assert [t.shard for t in m.tensors] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
        assert m.metadata["general.name"] == "ggufx all value types"
        assert m.metadata["split.count"] == 3
        s, w = summarize(m), summarize(whole)
        assert (s.parameters, s.tensor_bytes, s.bpw) == (w.parameters, w.tensor_bytes, w.bpw)
        assert s.file_bytes == sum((FIXTURES / f"split-0000{j}-of-00003.gguf").stat().st_size for j in (1, 2, 3))


def test_missing_shard_is_a_clear_error(tmp_path: Path) -> None:
    for i in (1, 3):
        shutil.copy(FIXTURES / f"split-0000{i}-of-00003.gguf", tmp_path)
    with pytest.raises(ShardError, match=r"shard 2 of 3 is missing"):
        ggufx.open(tmp_path / "split-00001-of-00003.gguf")


def test_renamed_shard_is_a_clear_error(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "split-00002-of-00003.gguf", tmp_path / "renamed.gguf")
    with pytest.raises(ShardError, match="does not follow PREFIX"):
        ggufx.open(tmp_path / "renamed.gguf")


def test_shard_with_wrong_split_no(tmp_path: Path) -> None:
    for i in (1, 2, 3):
        shutil.copy(FIXTURES / f"split-0000{i}-of-00003.gguf", tmp_path)
    # put shard 3's bytes where shard 2 should be
    shutil.copy(FIXTURES / "split-00003-of-00003.gguf", tmp_path / "split-00002-of-00003.gguf")
    with pytest.raises(ShardError, match="expected shard 2 of 3"):
        ggufx.open(tmp_path / "split-00001-of-00003.gguf")


def test_missing_file_and_directory() -> None:
    with pytest.raises(SourceError, match="no such file"):
        ggufx.open(FIXTURES / "nope.gguf")
    with pytest.raises(SourceError, match="directory"):
        ggufx.open(FIXTURES)


def test_open_reads_only_the_header(tmp_path: Path) -> None:
    """A file with 64 MiB of tensor data: opening it reads a small prefix, never the data."""
    src_bytes = (FIXTURES / "raw-base.gguf").read_bytes()
    # rewrite base so its second tensor is 64 MiB of F32
    from tests.fixtures.make_fixtures import STR, Raw

    r = Raw()
    r.kv("general.architecture", STR, r.s("llama"))
    r.tensor("big.weight", (4096, 4096), 0, 0)
    path = tmp_path / "big.gguf"
    with open(path, "wb") as f:
        f.write(r.build())
        f.truncate(r.offsets()["data"] + 4096 * 4096 * 4)
    assert src_bytes  # fixture exists
    with FileSource(path) as src:
        h = parse_header(src)
        assert src.bytes_read <= 1 << 20 and src.reads <= 2
    assert h.tensors[0].nbytes == 64 << 20


def test_truncated_anywhere_is_an_error_not_a_crash() -> None:
    good = (FIXTURES / "all-types-v3.gguf").read_bytes()
    header_end = ggufx.open(FIXTURES / "all-types-v3.gguf").header.header_end
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for cut in range(0, header_end + 40, 7):
            p = Path(d) / "cut.gguf"
            p.write_bytes(good[:cut])
            with pytest.raises(GGUFError):
                ggufx.open(p)


def test_committed_fixtures_are_what_the_generator_writes(tmp_path: Path) -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, str(FIXTURES / "make_fixtures.py"), str(tmp_path)], check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    # tests/fixtures/test-gguf/ is written by llama.cpp's own tests/test-gguf.cpp, not by this script:
    # tests/test_gguf_differential.py checks those files against it
    committed = sorted(
        p.relative_to(FIXTURES)
        for p in FIXTURES.rglob("*")
        if p.is_file() and (p.suffix == ".gguf" or p.name == "expected.json") and p.parent.name != "test-gguf"
    )
    assert generated == committed
    for rel in generated:
        assert (tmp_path / rel).read_bytes() == (FIXTURES / rel).read_bytes(), rel


def test_the_readers_tensor_infos_are_the_dataclasses_own() -> None:
    """The reader makes its TensorInfo objects through the slots (reader._tensor_info): each equal to
    TensorInfo(...) of the same values, field for field, in equality, hash and repr, and as frozen."""
    import dataclasses

    import pytest

    from ggufx.format.ggmltypes import ggml_type
    from ggufx.format.reader import TensorInfo, _tensor_info

    for values in (
        ("blk.0.attn_q.weight", (4096, 4096), ggml_type(12), 0, 6349952, 4096 * 4096, 9437184, 0, 6349000, False),
        ("x", (), ggml_type(0), 32, 64, 1, 4, 2, 24, True),
    ):
        made, own = _tensor_info(*values), TensorInfo(*values)
        assert type(made) is TensorInfo and made == own and hash(made) == hash(own) and repr(made) == repr(own)
        assert tuple(getattr(made, f.name) for f in dataclasses.fields(own)) == values
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.name = "y"  # type: ignore[misc]
