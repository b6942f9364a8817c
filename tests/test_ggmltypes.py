"""The ggml type table taken from gguf-py, and its on-disk cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ggufx.format import ggmltypes


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ggmltypes.type_table.cache_clear()
    ggmltypes.ggml_type.cache_clear()
    ggmltypes.ggml_type_by_name.cache_clear()
    yield tmp_path / "ggufx"
    ggmltypes.type_table.cache_clear()
    ggmltypes.ggml_type.cache_clear()
    ggmltypes.ggml_type_by_name.cache_clear()


def test_table_equals_gguf_constants(fresh_cache: Path) -> None:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

    for qt, (block, size) in GGML_QUANT_SIZES.items():
        t = ggmltypes.ggml_type(int(qt))
        assert (t.name, t.block_size, t.type_size, t.known) == (qt.name, block, size, True)
        assert ggmltypes.ggml_type_by_name(qt.name.lower()) == t
    assert ggmltypes.file_type_label(int(LlamaFileType.MOSTLY_Q4_K_M)) == "Q4_K_M"
    assert ggmltypes.file_type_label(int(LlamaFileType.ALL_F32)) == "F32"
    assert ggmltypes.file_type_label(999) == "UNKNOWN(999)"
    assert ggmltypes.file_type_for_ggml_type("Q4_K") == int(LlamaFileType.MOSTLY_Q4_K_M)
    assert ggmltypes.file_type_for_ggml_type("Q3_K") == int(LlamaFileType.MOSTLY_Q3_K_M)
    assert ggmltypes.ggml_type(int(GGMLQuantizationType.Q6_K)).bits_per_weight == 6.5625
    assert not ggmltypes.ggml_type(int(GGMLQuantizationType.F16)).is_quantized
    assert ggmltypes.ggml_type(int(GGMLQuantizationType.IQ4_XS)).is_quantized
    unknown = ggmltypes.ggml_type(4242)
    assert unknown.name == "UNKNOWN(4242)" and not unknown.known
    with pytest.raises(ValueError):
        ggmltypes.ggml_type_by_name("Q9_Z")
    bpws = [t.bits_per_weight for t in ggmltypes.all_types()]
    assert bpws == sorted(bpws)


def test_cache_is_written_and_a_bad_one_is_rebuilt(fresh_cache: Path) -> None:
    first = ggmltypes.type_table()
    files = list(fresh_cache.glob("ggml-types-*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text())["types"] == first["types"]
    files[0].write_text("{not json")
    ggmltypes.type_table.cache_clear()
    assert ggmltypes.type_table()["types"] == first["types"]
    stale = json.loads(files[0].read_text())
    stale["key"] = "another gguf version"
    stale["types"] = {}
    files[0].write_text(json.dumps(stale))
    ggmltypes.type_table.cache_clear()
    assert ggmltypes.type_table()["types"] == first["types"]


def test_unwritable_cache_still_works(tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    ggmltypes.type_table.cache_clear()
    try:
        assert ggmltypes.type_table()["types"]
    finally:
        ggmltypes.type_table.cache_clear()
