"""Per-tensor hashes, a model fingerprint, and manifests to verify files against.

Construction (stable, documented in docs/integrity.md):

* a tensor's hash is xxh3-128 (or sha256) of exactly its ``nbytes`` data bytes (no padding);
* the **fingerprint** is xxh3-128 over the tensors sorted by name (UTF-8 bytes), each contributing
  ``name || 0x00 || ggml type id (u32 LE) || n_dims (u32 LE) || dims (u64 LE each) || tensor hash``.
  It ignores metadata (a fixed chat template keeps the fingerprint) and where tensors sit (shards,
  order, alignment), and changes when any tensor byte, type, shape or name changes;
* the **metadata hash** is xxh3-128 over the keys sorted by name, each ``key || 0x00 || xxh3-128 of
  the value's canonical bytes`` (type tag and little-endian value as GGUF stores it; nested arrays
  as their JSON text), leaving out ``ggufx.padding`` and ``split.*``.

Data is read with large positional reads and hashed on a small thread pool (xxhash and hashlib
release the GIL on large buffers).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from ggufx.analysis.summary import summarize
from ggufx.format.encode import encode_value
from ggufx.format.keys import PADDING_KEY
from ggufx.format.reader import TensorInfo
from ggufx.io.sources import is_remote
from ggufx.model import GGUFModel

ALGOS = ("xxh3-128", "sha256")
CHUNK = 16 << 20


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def _hasher(algo: str) -> _Hasher:
    if algo == "xxh3-128":
        import xxhash

        return xxhash.xxh3_128()
    if algo == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown hash algorithm {algo!r} (one of {', '.join(ALGOS)})")


def hash_tensor(fd: int, t: TensorInfo, algo: str = "xxh3-128") -> str:
    h = _hasher(algo)
    pos, end = t.file_offset, t.file_offset + t.nbytes
    while pos < end:
        chunk = os.pread(fd, min(CHUNK, end - pos), pos)
        if not chunk:
            raise OSError(f"unexpected end of file at {pos} while hashing {t.name}")
        h.update(chunk)
        pos += len(chunk)
    return h.hexdigest()


def fingerprint(tensors: list[tuple[str, int, tuple[int, ...], str]]) -> str:
    """(name, type id, shape, hex hash) for every tensor -> the model fingerprint (xxh3-128)."""
    import xxhash

    h = xxhash.xxh3_128()
    for name, type_id, shape, digest in sorted(tensors, key=lambda x: x[0].encode("utf-8", "surrogateescape")):
        h.update(name.encode("utf-8", "surrogateescape") + b"\0")
        h.update(struct.pack("<II", type_id, len(shape)) + struct.pack(f"<{len(shape)}Q", *shape))
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


def metadata_hashes(model: GGUFModel) -> dict[str, str]:
    """Per key: xxh3-128 of its canonical (little-endian) value, padding and split.* left out."""
    import json

    import xxhash

    from ggufx.format.values import ValueType

    little = model.header.byte_order == "<"
    out = {}
    for kv in model.metadata.kvs():
        if kv.key == PADDING_KEY or kv.key.startswith("split."):
            continue
        value = kv.value
        if kv.elem_type is ValueType.ARRAY:  # nested arrays: their JSON text is the canonical form
            body = json.dumps(value.tolist()).encode()
            out[kv.key] = xxhash.xxh3_128(struct.pack("<i", int(kv.type)) + body).hexdigest()
            continue
        if kv.type is ValueType.ARRAY and not little:
            value = value.tolist()  # a big-endian array's raw bytes are not canonical: re-encode them
        raw = struct.pack("<i", int(kv.type)) + encode_value("<", kv.type, value, kv.elem_type)
        out[kv.key] = xxhash.xxh3_128(raw).hexdigest()
    return out


def metadata_hash(per_key: dict[str, str]) -> str:
    import xxhash

    h = xxhash.xxh3_128()
    for key in sorted(per_key):
        h.update(key.encode() + b"\0" + bytes.fromhex(per_key[key]))
    return h.hexdigest()


@dataclass(slots=True)
class ModelHashes:
    path: str
    algo: str
    fingerprint: str
    metadata_hash: str
    tensors: dict[str, dict[str, Any]]  # name -> {type, shape, hash}
    metadata: dict[str, str]  # key -> hash
    facts: dict[str, Any] = field(default_factory=dict)
    bytes_hashed: int = 0

    def to_dict(self, per_tensor: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "algo": self.algo,
            "fingerprint": self.fingerprint,
            "metadata_hash": self.metadata_hash,
            "bytes_hashed": self.bytes_hashed,
            "facts": self.facts,
        }
        if per_tensor:
            d["tensors"] = self.tensors
            d["metadata"] = self.metadata
        return d


def hash_model(
    model: GGUFModel,
    algo: str = "xxh3-128",
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ModelHashes:
    """Hash every tensor's data (all shards) and derive the fingerprint."""
    if algo not in ALGOS:
        raise ValueError(f"unknown hash algorithm {algo!r} (one of {', '.join(ALGOS)})")
    if is_remote(model.path):
        from ggufx.errors import SourceError

        raise SourceError(
            model.path,
            None,
            "hashing reads every tensor's data, which a remote source does not download; download the file and hash it locally",
        )
    fds = {s.index: os.open(s.path, os.O_RDONLY) for s in model.shards}
    total = sum(t.nbytes for t in model.tensors)
    done = 0
    try:
        for fd in fds.values():
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        # the largest tensors first, so the pool stays busy to the end
        order = sorted(model.tensors, key=lambda t: -t.nbytes)
        with ThreadPoolExecutor(max_workers=threads or min(4, os.cpu_count() or 1)) as pool:
            futures = {t.name: pool.submit(hash_tensor, fds[t.shard], t, algo) for t in order}
            digests = {}
            for t in order:
                digests[t.name] = futures[t.name].result()
                done += t.nbytes
                if progress:
                    progress(done, total)
    finally:
        for fd in fds.values():
            os.close(fd)
    tensors = {t.name: {"type": t.type.name, "shape": list(t.shape), "hash": digests[t.name]} for t in model.tensors}
    fp = fingerprint([(t.name, t.type.id, t.shape, digests[t.name]) for t in model.tensors])
    md = metadata_hashes(model)
    s = summarize(model)
    tmpl = model.metadata.get_str("tokenizer.chat_template")
    facts = {
        "architecture": s.architecture,
        "name": s.name,
        "file_type": s.file_type_label,
        "parameters": s.parameters,
        "bpw": round(s.bpw, 4),
        "tensor_count": s.tensor_count,
        "file_bytes": s.file_bytes,
        "chat_template_sha256": hashlib.sha256(tmpl.encode("utf-8", "surrogateescape")).hexdigest()
        if tmpl is not None
        else None,
    }
    return ModelHashes(model.path, algo, fp, metadata_hash(md), tensors, md, facts, total)


# -- manifests -------------------------------------------------------------------------------------

MANIFEST_VERSION = 1


def manifest(hashes: list[ModelHashes]) -> dict[str, Any]:
    return {"ggufx_manifest": MANIFEST_VERSION, "models": [h.to_dict() for h in hashes]}


@dataclass(slots=True)
class Verification:
    path: str
    expected_path: str
    fingerprint_ok: bool
    tensors_changed: list[str]
    tensors_added: list[str]
    tensors_removed: list[str]
    metadata_changed: list[str]
    metadata_added: list[str]
    metadata_removed: list[str]

    @property
    def ok(self) -> bool:
        return self.fingerprint_ok and not (
            self.tensors_changed
            or self.tensors_added
            or self.tensors_removed
            or self.metadata_changed
            or self.metadata_added
            or self.metadata_removed
        )

    @property
    def verdict(self) -> str:
        if self.ok:
            return "identical weights and metadata"
        if self.fingerprint_ok:
            return "same weights; metadata differs (e.g. a re-upload with a fixed template)"
        return "different weights"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "manifest_path": self.expected_path,
            "ok": self.ok,
            "verdict": self.verdict,
            "fingerprint_ok": self.fingerprint_ok,
            "tensors_changed": self.tensors_changed,
            "tensors_added": self.tensors_added,
            "tensors_removed": self.tensors_removed,
            "metadata_changed": self.metadata_changed,
            "metadata_added": self.metadata_added,
            "metadata_removed": self.metadata_removed,
        }


def verify(expected: dict[str, Any], actual: ModelHashes) -> Verification:
    et, at = expected["tensors"], actual.tensors
    em, am = expected["metadata"], actual.metadata
    changed = sorted(n for n in et.keys() & at.keys() if et[n] != at[n])
    return Verification(
        actual.path,
        expected["path"],
        expected["fingerprint"] == actual.fingerprint,
        changed,
        sorted(at.keys() - et.keys()),
        sorted(et.keys() - at.keys()),
        sorted(k for k in em.keys() & am.keys() if em[k] != am[k]),
        sorted(am.keys() - em.keys()),
        sorted(em.keys() - am.keys()),
    )
