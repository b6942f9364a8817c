"""Metadata edits: values and types, strategies, protected keys, where files live, real files."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

import ggufx
from ggufx.edit.engine import Delete, Rename, Set, edit
from ggufx.edit.safewrite import EditError, supports_insert_range
from ggufx.format.keys import PADDING_KEY
from ggufx.format.values import GGUFArray, ValueType
from tests.support import FIXTURES, CliRun

from .editing import data_hash
from .gguf_reference import assert_matches_gguf_reader


@pytest.fixture
def v3(tmp_path: Path) -> Path:
    p = tmp_path / "model.gguf"
    shutil.copy(FIXTURES / "all-types-v3.gguf", p)
    return p


def _value(m, key):
    v = m.metadata[key]
    return v.tolist() if isinstance(v, GGUFArray) else v


def _others_unchanged(before: Path, after: Path, changed: set[str]) -> None:
    a, b = ggufx.open(before), ggufx.open(after)
    for kv in a.metadata.kvs():
        if kv.key in changed:
            continue
        other = b.metadata.kv(kv.key)
        assert other.type is kv.type, kv.key
        assert bytes(a.header.buf[kv.offset : kv.end]) == bytes(b.header.buf[other.offset : other.end]), kv.key
    assert [(t.name, t.shape, t.type.id, t.offset, t.nbytes) for t in a.tensors] == [
        (t.name, t.shape, t.type.id, t.offset, t.nbytes) for t in b.tensors
    ]


SCALAR_CASES = [
    ("t.u8", "u8", "255", 255),
    ("t.i8", "i8", "-128", -128),
    ("t.u16", "u16", "65535", 65535),
    ("t.i16", "i16", "-32768", -32768),
    ("t.u32", "u32", "4294967295", 2**32 - 1),
    ("t.i32", "i32", "-2147483648", -(2**31)),
    ("t.u64", "u64", str(2**64 - 1), 2**64 - 1),
    ("t.i64", "i64", str(-(2**63)), -(2**63)),
    ("t.f32", "f32", "0.25", 0.25),
    ("t.f64", "f64", "1e-300", 1e-300),
    ("t.bool", "bool", "false", False),
    ("t.str", "str", "12", "12"),
]


@pytest.mark.parametrize("key,vtype,text,expected", SCALAR_CASES)
def test_set_every_scalar_type_roundtrips(cli: CliRun, v3: Path, tmp_path: Path, key, vtype, text, expected) -> None:
    before = tmp_path / "before.gguf"
    shutil.copy(v3, before)
    h0 = data_hash(v3)
    r = cli("set", str(v3), key, text, "--type", vtype)
    assert r.exit_code == 0, r.output
    m = ggufx.open(v3)
    assert m.metadata[key] == expected and m.metadata.type_of(key).short == vtype
    assert data_hash(v3) == h0
    assert_matches_gguf_reader(v3)
    _others_unchanged(before, v3, {key})


@pytest.mark.parametrize(
    "vtype,items",
    [
        ("u8", [1, 2]),
        ("i16", [-5, 5]),
        ("u32", [7]),
        ("i64", [-(2**63)]),
        ("f32", [0.5, 2.0]),
        ("f64", [1.5]),
        ("bool", [True, False]),
        ("str", ["a", "", "ü"]),
    ],
)
def test_set_arrays_from_json(cli: CliRun, v3: Path, vtype: str, items: list) -> None:
    r = cli("set", str(v3), "t.arr", json.dumps(items), "--type", vtype)
    assert r.exit_code == 0, r.output
    arr = ggufx.open(v3).metadata["t.arr"]
    assert arr.elem_type.short == vtype and arr.tolist() == items
    assert_matches_gguf_reader(v3)


def test_a_broken_json_list_is_an_input_error(cli: CliRun, v3: Path) -> None:
    """'[1, 2, 3' (a list not closed) was an internal error: now one line naming the key, exit 2, nothing written."""
    before = v3.read_bytes()
    for args in (("set", str(v3), "t.arr", "[1, 2, 3", "--type", "u32"), ("edit", str(v3), "--set", "t.arr:u32=[1,")):
        r = cli(*args)
        assert r.exit_code == 2 and not r.stdout, args
        assert r.stderr.startswith("ggufx: error: ") and "t.arr: invalid JSON list" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and "internal error" not in r.stderr
    assert v3.read_bytes() == before


def test_a_new_key_that_looks_like_a_typo_is_refused(cli: CliRun, v3: Path) -> None:
    """`set general.nmae Foo` added a key llama.cpp never reads and seemed to work: a new key gguf-py does not
    know, close to one the file has or gguf-py writes for its architecture, is refused naming that key
    (--force adds it); other new keys and named templates are added as before."""
    before = v3.read_bytes()
    for key, value, near in (
        ("general.nmae", "Foo", "general.name"),
        ("llama.context_lenght", "32768", "llama.context_length"),
        ("llama.rope.freq_bas", "1000", "llama.rope.freq_base"),
    ):
        r = cli("set", str(v3), key, value)
        assert r.exit_code == 2 and not r.stdout and r.stderr.count("\n") == 1, r.stderr
        assert f"{key} is neither a key of this file nor one gguf-py knows: did you mean {near}?" in r.stderr
        assert cli("edit", str(v3), "--set", f"{key}={value}").exit_code == 2
    assert v3.read_bytes() == before
    assert cli("set", str(v3), "general.nmae", "Foo", "--force").exit_code == 0
    assert ggufx.open(v3).metadata["general.nmae"] == "Foo"
    for key in ("my.note", "tokenizer.chat_template.tool_use"):
        assert cli("set", str(v3), key, "x").exit_code == 0, key


def test_known_key_types_are_checked(cli: CliRun, v3: Path) -> None:
    r = cli("set", str(v3), "llama.context_length", "8192")
    assert r.exit_code == 0 and ggufx.open(v3).metadata.type_of("llama.context_length") is ValueType.UINT32
    bad = cli("set", str(v3), "llama.context_length", "-1")
    assert bad.exit_code == 2 and "does not fit in u32" in bad.stderr
    wrong = cli("set", str(v3), "llama.context_length", "8192", "--type", "str")
    assert wrong.exit_code == 2 and "written as u32 by llama.cpp's gguf-py" in wrong.stderr
    assert cli("set", str(v3), "llama.context_length", "8192", "--type", "u64", "--force").exit_code == 0
    # a key gguf-py knows but the file lacks gets gguf-py's type
    assert cli("set", str(v3), "llama.rope.freq_base", "10000").exit_code == 0
    assert ggufx.open(v3).metadata.type_of("llama.rope.freq_base") is ValueType.FLOAT32
    assert cli("set", str(v3), "tokenizer.ggml.add_bos_token", "true").exit_code == 0
    assert ggufx.open(v3).metadata["tokenizer.ggml.add_bos_token"] is True


def test_unknown_keys_need_an_unambiguous_value(cli: CliRun, v3: Path) -> None:
    r = cli("set", str(v3), "my.number", "42")
    assert r.exit_code == 2 and "give --type" in r.stderr
    assert cli("set", str(v3), "my.text", "hello world").exit_code == 0
    assert cli("set", str(v3), "my.flag", "true").exit_code == 0
    m = ggufx.open(v3)
    assert m.metadata.type_of("my.text") is ValueType.STRING and m.metadata["my.flag"] is True
    assert cli("set", str(v3), "my.list", "[1, 2]").exit_code == 2
    assert cli("set", str(v3), "my.list", '["a", "b"]').exit_code == 0


def test_existing_key_keeps_type_and_position(cli: CliRun, v3: Path) -> None:
    keys = list(ggufx.open(v3).metadata)
    assert cli("set", str(v3), "test.u16", "7").exit_code == 0
    m = ggufx.open(v3)
    assert list(m.metadata)[: len(keys)] == keys
    assert m.metadata.type_of("test.u16") is ValueType.UINT16 and m.metadata["test.u16"] == 7


def test_delete_and_rename(cli: CliRun, v3: Path, tmp_path: Path) -> None:
    before = tmp_path / "b.gguf"
    shutil.copy(v3, before)
    h0 = data_hash(v3)
    r = cli("delete", str(v3), "test.u8", "test.arr.str")
    assert r.exit_code == 0
    r = cli("rename", str(v3), "test.i8", "test.renamed")
    assert r.exit_code == 0
    m = ggufx.open(v3)
    assert "test.u8" not in m.metadata and "test.arr.str" not in m.metadata
    assert (
        m.metadata["test.renamed"] == -100
        and list(m.metadata).index("test.renamed") == list(ggufx.open(before).metadata).index("test.i8") - 1
    )
    assert data_hash(v3) == h0
    assert cli("delete", str(v3), "no.such").exit_code == 2
    assert "that key exists" in cli("rename", str(v3), "test.u16", "test.i16").stderr
    _others_unchanged(before, v3, {"test.u8", "test.arr.str", "test.i8"})


def test_edit_is_one_transaction(cli: CliRun, v3: Path) -> None:
    before = v3.read_bytes()
    # the last change is invalid: nothing at all is written
    r = cli("edit", str(v3), "--set", "general.name=X", "--delete", "no.such.key")
    assert r.exit_code == 2 and v3.read_bytes() == before
    r = cli(
        "edit",
        str(v3),
        "--set",
        "general.name=X",
        "--set",
        "my.n:u32=7",
        "--delete",
        "test.u8",
        "--rename",
        "test.i8=test.j8",
        "--json",
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert [c["op"] for c in d["changes"]] == ["set", "add", "delete", "rename"]
    m = ggufx.open(v3)
    assert m.metadata["general.name"] == "X" and m.metadata["my.n"] == 7 and "test.j8" in m.metadata


def test_dry_run_writes_nothing(cli: CliRun, v3: Path) -> None:
    before = v3.read_bytes()
    st = v3.stat()
    r = cli("set", str(v3), "general.name", "Y", "--dry-run", "--json")
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["dry_run"] and d["strategy"] == "in-place" and d["bytes_written"] > 0
    assert d["changes"][0] == {
        "op": "set",
        "key": "general.name",
        "before_type": "str",
        "before": "ggufx all value types",
        "after_type": "str",
        "after": "Y",
    }
    assert v3.read_bytes() == before and v3.stat().st_mtime_ns == st.st_mtime_ns
    assert not Path(str(v3) + ".ggufx-journal").exists()
    text = cli("set", str(v3), "general.name", "Y", "--dry-run").output
    assert '- general.name (str) = "ggufx all value types"' in text and "would write" in text


def test_output_leaves_original_untouched(cli: CliRun, v3: Path, tmp_path: Path) -> None:
    before = v3.read_bytes()
    out = tmp_path / "out.gguf"
    os.chmod(v3, 0o640)
    r = cli("set", str(v3), "general.name", "Copy", "-o", str(out), "--reserve", "64K", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["strategy"] == "rewrite" and d["padding_bytes"] >= 64 * 1024
    assert v3.read_bytes() == before
    assert ggufx.open(out).metadata["general.name"] == "Copy"
    assert data_hash(out) == data_hash(v3)
    assert (out.stat().st_mode & 0o777) == 0o640
    assert_matches_gguf_reader(out)
    # the reserve keeps the next edit in place
    r = cli("set", str(out), "tokenizer.chat_template", "x" * 60000, "--json")
    assert json.loads(r.output)["strategy"] == "in-place"


def test_in_place_padding_absorbs_slack(cli: CliRun, v3: Path) -> None:
    size = v3.stat().st_size
    d = json.loads(cli("set", str(v3), "general.name", "n" * 3000, "--json").output)
    assert d["strategy"] in ("insert-range", "rewrite")
    # shrinking back is in place: the slack becomes ggufx.padding, the data section stays put
    d = json.loads(cli("set", str(v3), "general.name", "short", "--json").output)
    assert d["strategy"] == "in-place" and d["data_offset_after"] == d["data_offset_before"]
    m = ggufx.open(v3)
    assert m.metadata.type_of(PADDING_KEY) is ValueType.ARRAY and len(m.metadata[PADDING_KEY]) == d["padding_bytes"]
    assert list(m.metadata)[-1] == PADDING_KEY
    assert v3.stat().st_size == size + d["data_offset_after"] - 2528
    assert_matches_gguf_reader(v3)


@pytest.mark.parametrize("strategy", ["in-place", "insert-range", "rewrite"])
def test_each_strategy_preserves_data(v3: Path, tmp_path: Path, strategy: str) -> None:
    if strategy == "insert-range" and not supports_insert_range(str(v3)):
        pytest.skip("filesystem without FALLOC_FL_INSERT_RANGE")
    # make room first so that in-place is possible for the same edit
    edit(v3, [Set("general.name", "x")], reserve=8192, strategy="rewrite")
    h0 = data_hash(v3)
    before = tmp_path / "before.gguf"
    shutil.copy(v3, before)
    r = edit(v3, [Set("tokenizer.chat_template", "{{ messages }}" * 100)], strategy=strategy)
    assert r.strategy == strategy
    assert data_hash(v3) == h0
    assert ggufx.open(v3).metadata["tokenizer.chat_template"] == "{{ messages }}" * 100
    assert_matches_gguf_reader(v3)
    _others_unchanged(before, v3, {"tokenizer.chat_template", PADDING_KEY})
    if strategy == "insert-range":
        assert r.data_offset_after > r.data_offset_before and (r.data_offset_after - r.data_offset_before) % 4096 == 0


def test_in_place_writes_milliseconds_worth_of_bytes(v3: Path) -> None:
    edit(v3, [Set("general.name", "x")], reserve=4096, strategy="rewrite")
    r = edit(v3, [Set("tokenizer.chat_template", "abc")])
    assert r.strategy == "in-place" and r.bytes_written < 2 * 4096 + 512


def test_big_endian_edit(tmp_path: Path) -> None:
    p = tmp_path / "be.gguf"
    shutil.copy(FIXTURES / "big-endian.gguf", p)
    h0 = data_hash(p)
    edit(
        p,
        [
            Set("general.name", "BE"),
            Set("my.v", 513, ValueType.UINT32),
            Set("my.a", [1, 2], ValueType.ARRAY, ValueType.INT16),
        ],
    )
    m = ggufx.open(p)
    assert m.header.endianness == "big" and m.metadata["my.v"] == 513 and m.metadata["my.a"].tolist() == [1, 2]
    raw = p.read_bytes()
    assert struct.pack(">I", 513) in raw
    assert data_hash(p) == h0
    assert_matches_gguf_reader(p)


def test_protected_keys(cli: CliRun, v3: Path) -> None:
    for args in (
        ["set", str(v3), "general.alignment", "64"],
        ["delete", str(v3), "split.count"],
        ["rename", str(v3), "general.name", "split.no"],
        ["set", str(v3), PADDING_KEY, "[1]", "--type", "u8"],
    ):
        r = cli(*args)
        assert r.exit_code == 2
    assert "misplaces all tensors" in cli("set", str(v3), "general.alignment", "64").stderr


def test_split_model_edits_first_shard(cli: CliRun, tmp_path: Path) -> None:
    for i in (1, 2, 3):
        shutil.copy(FIXTURES / f"split-0000{i}-of-00003.gguf", tmp_path)
    second = tmp_path / "split-00002-of-00003.gguf"
    others = {i: (tmp_path / f"split-0000{i}-of-00003.gguf").read_bytes() for i in (2, 3)}
    r = cli("set", str(second), "general.name", "Split edit", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["target"] == str(tmp_path / "split-00001-of-00003.gguf")
    assert any("first shard" in n for n in d["notes"])
    assert {i: (tmp_path / f"split-0000{i}-of-00003.gguf").read_bytes() for i in (2, 3)} == others
    m = ggufx.open(second)
    assert m.metadata["general.name"] == "Split edit" and len(m.tensors) == 9 and m.metadata["split.count"] == 3
    assert cli("set", str(second), "split.count", "2").exit_code == 2


def test_symlink_edits_target(cli: CliRun, v3: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.gguf"
    link.symlink_to(v3)
    r = cli("set", str(link), "general.name", "via link")
    assert r.exit_code == 0 and "symlink" in r.stderr
    assert link.is_symlink() and ggufx.open(v3).metadata["general.name"] == "via link"
    # a rewrite keeps the link and replaces its target
    edit(link, [Set("general.name", "L" * 5000)], strategy="rewrite")
    assert link.is_symlink() and ggufx.open(v3).metadata["general.name"] == "L" * 5000


def test_content_addressed_stores_are_refused(cli: CliRun, tmp_path: Path) -> None:
    blobs = tmp_path / "ollama" / "blobs"
    blobs.mkdir(parents=True)
    blob = blobs / ("sha256-" + "a" * 64)
    shutil.copy(FIXTURES / "all-types-v3.gguf", blob)
    r = cli("set", str(blob), "general.name", "x")
    assert r.exit_code == 2 and "Ollama blob" in r.stderr and "-o OUT" in r.stderr
    assert cli("set", str(blob), "general.name", "x", "-o", str(tmp_path / "copy.gguf")).exit_code == 0
    hf = tmp_path / "hub" / "models--org--name"
    (hf / "blobs").mkdir(parents=True)
    (hf / "snapshots" / "abc123").mkdir(parents=True)
    target = hf / "blobs" / ("f" * 64)
    shutil.copy(FIXTURES / "all-types-v3.gguf", target)
    snap = hf / "snapshots" / "abc123" / "model.gguf"
    snap.symlink_to(Path("../../blobs") / target.name)
    r = cli("set", str(snap), "general.name", "x")
    assert r.exit_code == 2 and "Hugging Face cache" in r.stderr
    assert cli("set", str(snap), "general.name", "x", "--force").exit_code == 0


def test_read_only_file_is_a_clear_error(cli: CliRun, v3: Path) -> None:
    import subprocess

    before = v3.read_bytes()
    if subprocess.run(["chattr", "+i", str(v3)], capture_output=True).returncode != 0:
        os.chmod(v3, 0o444)
        if os.access(v3, os.W_OK):
            pytest.skip("cannot make a file read-only here (root without chattr)")
    try:
        r = cli("set", str(v3), "general.name", "x")
        assert r.exit_code == 2 and "read-only" in r.stderr
        assert v3.read_bytes() == before
    finally:
        subprocess.run(["chattr", "-i", str(v3)], capture_output=True)
        os.chmod(v3, 0o644)


def test_disk_full_leaves_original(v3: Path, monkeypatch) -> None:
    before = v3.read_bytes()
    for phase, strategy in (("journal-write", "in-place"), ("header-write", "in-place"), ("tmp-write", "rewrite")):
        monkeypatch.setenv("GGUFX_FAULT", f"enospc:{phase}")
        with pytest.raises(EditError, match="No space left on device"):
            edit(v3, [Set("general.name", "full")], strategy=strategy)
        monkeypatch.delenv("GGUFX_FAULT")
        assert v3.read_bytes() == before, phase
        assert not Path(str(v3) + ".ggufx-journal").exists()
        assert not list(v3.parent.glob(".*ggufx-tmp*"))


def test_real_tmpfs_disk_full(cli: CliRun, tmp_path: Path) -> None:
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        p = mnt / "m.gguf"
        shutil.copy(FIXTURES / "all-types-v3.gguf", p)
        before = p.read_bytes()
        r = cli("set", str(p), "general.name", "x" * 10000)
        assert r.exit_code == 2 and "No space left" in r.stderr
        assert p.read_bytes() == before and sorted(os.listdir(mnt)) == ["m.gguf"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_file_changing_size_is_detected(v3: Path, monkeypatch) -> None:
    import ggufx.edit.safewrite as sw

    before = v3.read_bytes()
    real = sw.write_journal

    def grow_then_journal(path, *a, **k):
        with open(path, "ab") as f:
            f.write(b"\0" * 100)
        return real(path, *a, **k)

    monkeypatch.setattr(sw, "write_journal", grow_then_journal)
    with pytest.raises(EditError, match="changed size during the edit"):
        edit(v3, [Set("general.name", "z")])
    assert v3.read_bytes() == before + b"\0" * 100  # ours untouched; only the other writer's bytes
    assert not Path(str(v3) + ".ggufx-journal").exists()


CHATML_TOOLS = FIXTURES / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja"  # ChatML with tool calls, 2.5 KB


def test_real_files_survive_edits(real_models, tmp_path: Path) -> None:
    if not CHATML_TOOLS.is_file():
        pytest.fail(f"the template fixture {CHATML_TOOLS} is missing", pytrace=False)
    for name, src in real_models.items():
        p = tmp_path / f"{name}.gguf"
        shutil.copy(src, p)
        h0 = data_hash(p)
        tokens_before = ggufx.open(p).metadata["tokenizer.ggml.tokens"].raw()
        tmpl = CHATML_TOOLS.read_text(encoding="utf-8")
        r = edit(p, [Set("tokenizer.chat_template", tmpl), Set("general.name", f"{name} edited")])
        assert r.strategy in ("in-place", "insert-range", "rewrite")
        m = ggufx.open(p)
        assert m.metadata["tokenizer.chat_template"] == tmpl and m.metadata["general.name"] == f"{name} edited"
        assert m.metadata["tokenizer.ggml.tokens"].raw() == tokens_before
        assert data_hash(p) == h0
        assert_matches_gguf_reader(p)
        r = edit(p, [Delete("general.name"), Rename("tokenizer.chat_template", "tokenizer.chat_template.default")])
        assert data_hash(p) == h0 and "tokenizer.chat_template.default" in ggufx.open(p).metadata


def test_read_only_directory_blocks_rewrite_cleanly(cli: CliRun, v3: Path) -> None:
    import subprocess

    before = v3.read_bytes()
    if subprocess.run(["chattr", "+i", str(v3.parent)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a directory read-only here (chattr unavailable)")
    try:
        r = cli("set", str(v3), "general.name", "x", "--strategy", "rewrite")
        assert r.exit_code == 2 and "left as it was" in r.stderr
        assert v3.read_bytes() == before
    finally:
        subprocess.run(["chattr", "-i", str(v3.parent)], capture_output=True)
    assert [p.name for p in v3.parent.iterdir() if "ggufx" in p.name] == []


def test_source_growing_during_rewrite_is_detected(v3: Path, monkeypatch) -> None:
    import ggufx.edit.safewrite as sw

    before = v3.read_bytes()
    real = sw._copy_range

    def copy_then_grow(src, dst, *a, **k):
        n = real(src, dst, *a, **k)
        with open(v3, "ab") as f:
            f.write(b"\0" * 64)
        return n

    monkeypatch.setattr(sw, "_copy_range", copy_then_grow)
    with pytest.raises(EditError, match="changed size during the edit"):
        edit(v3, [Set("general.name", "z")], strategy="rewrite")
    assert v3.read_bytes() == before + b"\0" * 64
    assert [p.name for p in v3.parent.iterdir() if "ggufx-tmp" in p.name] == []


@pytest.mark.parametrize("name", ["no-tensors.gguf", "unknown-type.gguf", "edge-values.gguf", "all-types-v2.gguf"])
def test_edit_unusual_files(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    shutil.copy(FIXTURES / name, p)
    before = ggufx.open(p)
    r = edit(p, [Set("general.name", "a longer name than any of these files had")])
    m = ggufx.open(p)
    assert m.metadata["general.name"] == "a longer name than any of these files had"
    assert m.header.version == before.header.version
    assert [(t.name, t.type.name, t.shape, t.nbytes) for t in m.tensors] == [
        (t.name, t.type.name, t.shape, t.nbytes) for t in before.tensors
    ]
    if not before.tensors:  # a vocabulary-only file is rewritten to its natural size, no page padding
        assert r.strategy == "rewrite" and p.stat().st_size < 4096
    else:
        assert data_hash(p) == data_hash(FIXTURES / name)
