"""Tensor hashes, the fingerprint's invariants, manifests and verify."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import xxhash

import ggufx
from ggufx.analysis.hashing import hash_model
from ggufx.edit.engine import Set, edit
from tests.support import FIXTURES, CliRun

from .gguf_reference import gguf_reader


def test_tensor_hashes_are_of_the_tensor_bytes(smollm2_path: Path) -> None:
    ref = gguf_reader(smollm2_path)
    x = hash_model(ggufx.open(smollm2_path))
    s = hash_model(ggufx.open(smollm2_path), "sha256")
    for t in ref.tensors[:40]:
        data = bytes(t.data.tobytes())
        assert x.tensors[t.name]["hash"] == xxhash.xxh3_128(data).hexdigest()
        assert s.tensors[t.name]["hash"] == hashlib.sha256(data).hexdigest()
    assert x.fingerprint == s.fingerprint or s.algo == "sha256"
    assert x.bytes_hashed == ggufx.info(smollm2_path).tensor_bytes


def test_fingerprint_ignores_metadata_edits_and_sharding(tmp_path: Path) -> None:
    whole = hash_model(ggufx.open(FIXTURES / "all-types-v3.gguf"))
    for i in (1, 2, 3):
        assert hash_model(ggufx.open(FIXTURES / f"split-0000{i}-of-00003.gguf")).fingerprint == whole.fingerprint
    for strategy in ("in-place", "insert-range", "rewrite"):
        p = tmp_path / f"{strategy}.gguf"
        shutil.copy(FIXTURES / "all-types-v3.gguf", p)
        edit(p, [Set("general.name", "x")], reserve=8192, strategy="rewrite")
        edit(p, [Set("tokenizer.chat_template", "{{ messages }}" * 50)], strategy=strategy)
        h = hash_model(ggufx.open(p))
        assert h.fingerprint == whole.fingerprint and h.metadata_hash != whole.metadata_hash
    # the big-endian fixture stores the same raw (u8) tensor bytes: same weights, same fingerprint
    be = hash_model(ggufx.open(FIXTURES / "big-endian.gguf"))
    assert be.fingerprint == whole.fingerprint and be.metadata_hash == whole.metadata_hash


def test_fingerprint_changes_with_one_tensor_byte(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    shutil.copy(FIXTURES / "all-types-v3.gguf", p)
    before = hash_model(ggufx.open(p))
    t = ggufx.open(p).tensor("blk.0.ffn_down.weight")
    data = bytearray(p.read_bytes())
    data[t.file_offset + 7] ^= 0x01
    p.write_bytes(bytes(data))
    after = hash_model(ggufx.open(p))
    assert after.fingerprint != before.fingerprint
    assert [n for n in before.tensors if before.tensors[n] != after.tensors[n]] == ["blk.0.ffn_down.weight"]


def test_manifest_and_verify(cli: CliRun, tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    shutil.copy(FIXTURES / "all-types-v3.gguf", p)
    man = tmp_path / "manifest.json"
    assert cli("manifest", str(p), "-o", str(man)).exit_code == 0
    doc = json.loads(man.read_text())
    assert doc["ggufx_manifest"] == 1 and doc["models"][0]["facts"]["architecture"] == "llama"
    ok = cli("verify", str(man), "--json")
    assert ok.exit_code == 0 and json.loads(ok.output)["ok"] is True
    # a fixed template: same weights, metadata differs
    assert cli("set", str(p), "tokenizer.chat_template", "{{ messages }}").exit_code == 0
    r = cli("verify", str(man), "--json")
    res = json.loads(r.output)["results"][0]
    assert r.exit_code == 1 and res["fingerprint_ok"] and res["metadata_changed"] == ["tokenizer.chat_template"]
    assert res["verdict"].startswith("same weights") and res["tensors_changed"] == []
    # one weight byte: different weights, named
    t = ggufx.open(p).tensor("output.weight")
    data = bytearray(p.read_bytes())
    data[t.file_offset] ^= 0xFF
    p.write_bytes(bytes(data))
    r = cli("verify", str(man))
    assert r.exit_code == 1 and "different weights" in r.output and "tensors changed: output.weight" in r.output
    # the manifest of the unsplit original verifies its split copy (split.* keys are left out)
    r = cli("verify", str(man), str(FIXTURES / "split-00001-of-00003.gguf"))
    assert r.exit_code == 0 and "identical weights and metadata" in r.output
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert cli("verify", str(bad)).exit_code == 2


def test_hash_cli(cli: CliRun, tmp_path: Path) -> None:
    r = cli("hash", str(FIXTURES / "all-types-v3.gguf"), "--per-tensor", "--json")
    d = json.loads(r.output)
    assert r.exit_code == 0 and len(d["tensors"]) == 9 and len(d["fingerprint"]) == 32
    text = cli("hash", str(FIXTURES / "all-types-v3.gguf")).output
    assert f"fingerprint    {d['fingerprint']}" in text
