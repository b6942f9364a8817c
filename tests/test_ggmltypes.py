"""The ggml type API over llama.cpp's own table (ggufx.format.ggml_type_table).

Where that table differs from gguf-py's and how it is generated from the llama.cpp source:
tests/test_ggml_type_table.py."""

from __future__ import annotations

import pytest

from ggufx.format import ggml_type_table, ggmltypes


def test_every_table_entry_is_served_by_id_and_name() -> None:
    for tid, name, block, size in ggml_type_table.GGML_TYPES:
        t = ggmltypes.ggml_type(tid)
        assert (t.id, t.name, t.block_size, t.type_size, t.known, t.removed) == (tid, name, block, size, True, None)
        assert ggmltypes.ggml_type_by_name(name.lower()) is t
    assert len(ggmltypes.all_types()) == len(ggml_type_table.GGML_TYPES)


def test_ggml_wins_where_gguf_py_is_stale() -> None:
    q8_1 = ggmltypes.ggml_type_by_name("Q8_1")
    assert (q8_1.id, q8_1.block_size, q8_1.type_size) == (9, 32, 36)  # block_q8_1: 2 halves + 32 int8
    q2_0 = ggmltypes.ggml_type(42)
    assert (q2_0.name, q2_0.block_size, q2_0.type_size) == ("Q2_0", 64, 18)
    assert ggmltypes.ggml_type_by_name("Q6_K").bits_per_weight == 6.5625
    assert ggmltypes.ggml_type_by_name("Q6_K").nbytes(4096 * 256) == 4096 * 210


def test_unknown_and_removed_ids() -> None:
    unknown = ggmltypes.ggml_type(4242)
    assert unknown.name == "UNKNOWN(4242)" and not unknown.known and unknown.removed is None
    with pytest.raises(ValueError):
        unknown.nbytes(32)
    removed = ggmltypes.ggml_type(31)
    assert removed.name == "Q4_0_4_4" and not removed.known
    assert removed.removed == "TYPE_Q4_0_4_4 REMOVED, use Q4_0 with runtime repacking"
    with pytest.raises(ValueError):
        ggmltypes.ggml_type_by_name("Q9_Z")
    with pytest.raises(ValueError):  # removed types are not offered by name
        ggmltypes.ggml_type_by_name("Q4_0_4_4")


def test_quantized_flags_and_ordering() -> None:
    assert not ggmltypes.ggml_type_by_name("F16").is_quantized
    assert not ggmltypes.ggml_type_by_name("I32").is_quantized
    assert ggmltypes.ggml_type_by_name("IQ4_XS").is_quantized
    assert ggmltypes.ggml_type_by_name("MXFP4").is_quantized
    bpws = [t.bits_per_weight for t in ggmltypes.all_types()]
    assert bpws == sorted(bpws)


def test_file_types() -> None:
    assert ggmltypes.file_type_label(15) == "Q4_K_M"
    assert ggmltypes.file_type_label(0) == "F32"
    assert ggmltypes.file_type_label(4) == "Q4_1_SOME_F16"  # removed from llama.cpp, still named
    assert ggmltypes.file_type_label(41) == "Q2_0"
    assert ggmltypes.file_type_label(999) == "UNKNOWN(999)"
    assert ggmltypes.file_type_label(None) is None
    assert ggmltypes.file_type_for_ggml_type("Q4_K") == 15  # MOSTLY_Q4_K_M
    assert ggmltypes.file_type_for_ggml_type("Q3_K") == 12  # MOSTLY_Q3_K_M
    assert ggmltypes.file_type_for_ggml_type("UNKNOWN(77)") is None


def test_kv_cache_types_are_ggml_types() -> None:
    for name in ggmltypes.CACHE_TYPES:
        assert ggmltypes.ggml_type_by_name(name).known
