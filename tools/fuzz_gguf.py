#!/usr/bin/env python3
"""Long-run, structure-aware fuzzing of ggufx's reader and every read-only result.

usage: fuzz_gguf.py [--mutants N] [--jobs J] [--run-seed S] [--handcrafted-seeds 1,2,3]
                    [--timeout SECONDS] [--mem-limit MIB] [--json OUT] [--replay I [--write PATH]]

Seeds ("corpus"):

* the real GGUFs of the test suite (``$GGUFX_MODEL_CACHE``, default ``~/.cache/ggufx-test-models``:
  SmolLM2-135M-Instruct Q4_1, Gemma 3 270M Q4_K_M): their *headers*, kept at the file's full size
  with the tensor data as a hole of zeros, so that a mutated length can point anywhere in a
  100-250 MB file and a walk into the hole reads zeros, as a sparse file would give;
* llama.cpp's handcrafted files (``tests/test-gguf.cpp``): the ones committed under
  ``tests/fixtures/test-gguf/`` and, with ``--handcrafted-seeds``, every kind for those seeds,
  written by ``tools/gguf_oracle.py`` (needs the llama.cpp source and libraries). A header-only
  file (the ``TENSORS_*`` kinds) gets the data section it describes, as a hole.

Mutants are structure-aware: a walker maps every field of a seed's header (counts, key and string
lengths, value and array element types, array counts, scalar values, tensor name lengths, n_dims,
each ne, ggml type ids, data offsets) and each mutant changes one to three of them to values chosen
to cross a bound (0, 1, 63/64, 2**30 +- 1, what is left of the file, into the hole, 2**63, 2**64 - 1,
removed and newer type ids...), flips bits, cuts the header, deletes, duplicates or swaps whole
metadata records and tensor infos, re-encodes a record with another type or value (the
architecture, ``{arch}.block_count`` and the other hyper-parameters the analyses read, per-layer
arrays, nested arrays), renames tensors or changes shapes and lays the data out again so that
the file stays valid. Mutant ``I`` depends only on ``--run-seed`` and ``I``: ``--replay I``
redoes one (``--write PATH`` saves it as a sparse file for ``ggufx`` itself).

Each mutant is opened from memory through ``ggufx.model.open_model`` (the real parser and shard
logic; only the byte source differs from a file) and, when it opens, goes through every read-only
result function of ``ggufx.results`` - info, tensors, meta, roles, layers, recipe, memory, fit,
report - and ``template info``, each rendered as the CLI would (JSON text, the text tables, the
report page). A :class:`~ggufx.errors.GGUFError` anywhere is the expected outcome for a bad file;
anything else (an exception, a mutant running past ``--timeout``, a ``MemoryError`` under the
worker's ``--mem-limit``) is a finding, reported by exception type and the innermost ggufx
module:line. Figures: mutants, seconds, rejections, opened files, findings, the slowest rejection,
the slowest mutant, and the workers' peak resident memory (``ru_maxrss``) with the mutant that
raised it most. Exit status 1 when there is a finding.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import signal
import struct
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ggufx.errors import GGUFError, SourceError  # noqa: E402

REAL_FILES = ("SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf")
HANDCRAFTED_DIR = ROOT / "tests" / "fixtures" / "test-gguf"
# how often each kind of seed is picked (the real files' headers are the expensive ones)
SEED_WEIGHTS = {"real": 0.6, "handcrafted": 0.4, "extra": 0.4}  # "extra": --seed-dir files

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR_FMT = {
    U8: "B",
    I8: "b",
    U16: "H",
    I16: "h",
    U32: "I",
    I32: "i",
    F32: "f",
    BOOL: "B",
    U64: "Q",
    I64: "q",
    F64: "d",
}
GGML_TYPE_COUNT = 43
MAX_HOLE = 1 << 40  # the largest file a seed stands for (1 TiB; ext4 files stop at 16 TiB)
REMOVED_TYPES = (4, 5, 31, 32, 33, 36, 37, 38)
BLOCK = {0: 1, 1: 1, 2: 32, 3: 32, 6: 32, 7: 32, 8: 32, 9: 32, 12: 256, 14: 256, 24: 1, 26: 1, 30: 1, 39: 32, 41: 128}
ARCHS = (
    "llama",
    "gemma3",
    "gemma2",
    "gemma3n",
    "qwen2",
    "qwen3",
    "qwen3moe",
    "qwen35",
    "qwen35moe",
    "qwen3next",
    "mamba",
    "mamba2",
    "jamba",
    "granitehybrid",
    "nemotron_h",
    "rwkv6",
    "rwkv7",
    "lfm2",
    "llama4",
    "cohere2",
    "phi3",
    "deepseek2",
    "gpt-oss",
    "falcon-h1",
    "plamo2",
    "bert",
    "t5",
    "nonexistent-arch",
    "",
)
ARCH_KEYS = (
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.key_length_swa",
    "attention.value_length_swa",
    "attention.sliding_window",
    "attention.sliding_window_pattern",
    "attention.recurrent_layers",
    "full_attention_interval",
    "expert_count",
    "expert_used_count",
    "expert_feed_forward_length",
    "ssm.conv_kernel",
    "ssm.inner_size",
    "ssm.state_size",
    "ssm.time_step_rank",
    "ssm.group_count",
    "rope.dimension_count",
    "vocab_size",
    "wkv.head_size",
    "shortconv.l_cache",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
)
GLOBAL_KEYS = (
    "general.architecture",
    "general.alignment",
    "general.file_type",
    "general.name",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
    "tokenizer.chat_template.tool_use",
    "split.count",
    "split.no",
    "split.tensors.count",
)
ROLES = (
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "attn_norm",
    "ffn_up",
    "ffn_down",
    "ffn_gate",
    "ffn_norm",
    "ffn_gate_exps",
    "ffn_down_exps",
    "ffn_up_exps",
    "ssm_conv1d",
    "ssm_out",
    "ssm_a",
    "time_mix_first",
)
TEMPLATES = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}",
    "{% for x in range(10) %}{{ x }}{% endfor %}{{ raise_exception('no') }}",
    "{{ messages[0]['content'] * 3 }}{% if add_generation_prompt %}assistant:{% endif %}",
    "{% set ns = namespace(a=1) %}{% for m in messages %}{% set ns.a = ns.a + 1 %}{% endfor %}{{ ns.a }}",
    "{{ ''.__class__ }}",
    "{% if %}",
    "",
)


def _u64_interesting(rng: random.Random, size: int, pos: int, header_len: int, current: int) -> int:
    left = max(0, size - pos - 8)
    choices = [
        0,
        1,
        2,
        7,
        8,
        63,
        64,
        65,
        255,
        4096,
        current + 1,
        max(0, current - 1),
        current * 2,
        left,
        left + 1,
        max(0, left - 1),
        left // 2,
        (1 << 30) - 1,
        1 << 30,
        (1 << 30) + 1,
        1 << 31,
        1 << 32,
        (1 << 32) - 1,
        rng.randrange(max(1, header_len)),
        rng.randrange(max(1, left + 1)),
        max(0, rng.randrange(max(1, size)) - pos),
        (1 << 62),
        (1 << 63) - 1,
        1 << 63,
        (1 << 64) - 1,
        (1 << 64) - 8,
        rng.getrandbits(64),
        rng.getrandbits(rng.randint(1, 40)),
    ]
    return rng.choice(choices) % (1 << 64)


def _i64_interesting(rng: random.Random, current: int) -> int:
    v = rng.choice(
        [
            0,
            1,
            -1,
            2,
            3,
            31,
            32,
            33,
            255,
            256,
            257,
            current,
            current + 1,
            current - 1,
            current * 2,
            current * 256,
            1 << 16,
            1 << 24,
            1 << 31,
            1 << 32,
            4 * ((1 << 31) - 1),
            (1 << 62),
            (1 << 63) - 1,
            -(1 << 63),
            (1 << 62) + 1,
            0x7FFFFFFFFFFFFFC0,
            rng.getrandbits(63),
            -rng.getrandbits(20),
        ]
    )
    return max(-(1 << 63), min((1 << 63) - 1, v))


def _type_interesting(rng: random.Random) -> int:
    return rng.choice(
        [
            *range(GGML_TYPE_COUNT),
            *REMOVED_TYPES,
            GGML_TYPE_COUNT,
            GGML_TYPE_COUNT + 1,
            250,
            255,
            1000,
            (1 << 31) - 1,
            -1,
            -(1 << 31),
            rng.getrandbits(31),
        ]
    )


# -- a tolerant map of a header's fields (independent of ggufx's reader) ---------------------------


@dataclass
class KVRec:
    start: int
    end: int
    key: str
    key_len_at: int
    vtype_at: int
    vtype: int
    value_at: int
    etype_at: int = -1
    count_at: int = -1
    count: int = 0


@dataclass
class TensorRec:
    start: int
    end: int
    name: bytes
    name_len_at: int
    ndims_at: int
    shape: tuple[int, ...]
    type_id: int
    offset: int


@dataclass
class Layout:
    bo: str = "<"
    n_tensors: int = 0
    n_kv: int = 0
    kvs: list[KVRec] = field(default_factory=list)
    tensors: list[TensorRec] = field(default_factory=list)
    string_lens: list[int] = field(default_factory=list)  # offsets of string length fields
    scalars: list[tuple[int, int]] = field(default_factory=list)  # (offset, value type)
    kv_end: int = -1  # where tensor infos start (-1: metadata not fully walked)
    header_end: int = -1  # end of the tensor infos (-1: not fully walked)
    alignment: int = 32
    complete: bool = False


def walk(buf: bytes) -> Layout:
    """Map the fields of a GGUF header as far as they make sense (never raises)."""
    lay = Layout()
    if len(buf) < 24 or buf[:4] != b"GGUF":
        return lay
    (v,) = struct.unpack_from("<I", buf, 4)
    lay.bo = ">" if v & 0xFFFF == 0 and v else "<"
    bo = lay.bo
    lay.n_tensors, lay.n_kv = struct.unpack_from(bo + "qq", buf, 8)
    pos = 24
    n = len(buf)

    def u64(p: int) -> int:
        return struct.unpack_from(bo + "Q", buf, p)[0]

    def i32(p: int) -> int:
        return struct.unpack_from(bo + "i", buf, p)[0]

    def value(p: int, t: int, depth: int) -> int:
        if t == STR:
            ln = u64(p)
            lay.string_lens.append(p)
            return p + 8 + ln
        if t == ARR:
            if depth > 3:
                raise ValueError
            et, cnt = i32(p), u64(p + 4)
            p += 12
            if et == STR:
                for i in range(cnt):
                    if p + 8 > n:
                        raise ValueError
                    if i < 64 or i % 4096 == 0:
                        lay.string_lens.append(p)
                    p += 8 + u64(p)
                return p
            if et == ARR:
                for _ in range(min(cnt, 1 << 16)):
                    p = value(p, ARR, depth + 1)
                return p
            return p + cnt * struct.calcsize(SCALAR_FMT[et])
        width = struct.calcsize(SCALAR_FMT[t])  # KeyError for a bad type: the walk stops here
        lay.scalars.append((p, t))
        return p + width

    try:
        for _ in range(max(0, min(lay.n_kv, 1 << 20))):
            start = pos
            kl = u64(pos)
            key = buf[pos + 8 : pos + 8 + kl].decode("utf-8", "replace")
            vt_at = pos + 8 + kl
            vt = i32(vt_at)
            rec = KVRec(start, -1, key, start, vt_at, vt, vt_at + 4)
            lay.string_lens.append(start)
            if vt == ARR:
                rec.etype_at, rec.count_at = vt_at + 4, vt_at + 8
                rec.count = u64(vt_at + 8)
            pos = value(vt_at + 4, vt, 0)
            if pos > n:
                raise ValueError
            rec.end = pos
            lay.kvs.append(rec)
            if key == "general.alignment" and vt == U32:
                lay.alignment = struct.unpack_from(bo + "I", buf, vt_at + 4)[0] or 32
        lay.kv_end = pos
        for _ in range(max(0, min(lay.n_tensors, 1 << 20))):
            start = pos
            nl = u64(pos)
            name = buf[pos + 8 : pos + 8 + nl]
            p = pos + 8 + nl
            nd = struct.unpack_from(bo + "I", buf, p)[0]
            if nd > 8:
                raise ValueError
            shape = struct.unpack_from(f"{bo}{nd}q", buf, p + 4)
            p += 4 + 8 * nd
            tid, off = struct.unpack_from(bo + "iQ", buf, p)
            pos = p + 12
            if pos > n:
                raise ValueError
            lay.tensors.append(TensorRec(start, pos, bytes(name), start, start + 8 + nl, shape, tid, off))
        lay.header_end = pos
        lay.complete = len(lay.kvs) == lay.n_kv and len(lay.tensors) == lay.n_tensors
    except (struct.error, ValueError, KeyError, OverflowError, MemoryError):
        pass
    return lay


def _pad(n: int, a: int) -> int:
    return -(-n // a) * a


def _nbytes(type_id: int, shape: tuple[int, ...]) -> int:
    from ggufx.format.ggmltypes import ggml_type

    gt = ggml_type(type_id)
    ne = 1
    for d in shape:
        ne *= d
    return gt.nbytes(ne) if gt.known else 32


@dataclass
class Seed:
    name: str
    kind: str  # "real", "handcrafted" or "extra"
    header: bytes  # the bytes before the data section (or the whole file when it is small)
    size: int  # the file's size: what follows the header is a hole of zeros
    lay: Layout
    arch: str = "llama"


def load_seed(name: str, kind: str, data: bytes, file_size: int) -> Seed:
    lay = walk(data)
    header = data
    size = file_size
    if lay.complete and lay.header_end >= 0:
        data_offset = _pad(lay.header_end, lay.alignment if lay.alignment & (lay.alignment - 1) == 0 else 32)
        if len(data) > data_offset:
            header = data[:data_offset]
        elif lay.tensors and file_size <= data_offset:
            # a header-only file (test-gguf's TENSORS_* kinds): give it the data it describes, as a hole
            try:
                size = data_offset + sum(_pad(_nbytes(t.type_id, t.shape), lay.alignment) for t in lay.tensors)
            except Exception:
                size = file_size
            if size > MAX_HOLE:  # the *_TOO_BIG kinds describe exabytes: no file system holds that
                size = file_size
    arch = "llama"
    for kv in lay.kvs:
        if kv.key == "general.architecture" and kv.vtype == STR:
            ln = struct.unpack_from(lay.bo + "Q", data, kv.value_at)[0]
            arch = data[kv.value_at + 8 : kv.value_at + 8 + ln].decode("utf-8", "replace")
    return Seed(name, kind, bytes(header), size, lay, arch)


def _header_seed(p: Path, kind: str) -> Seed:
    """A seed of a large file: its header up to the data (the data itself is never read)."""
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(min(size, 16 << 20))
    lay = walk(head)
    cut = _pad(lay.header_end, lay.alignment) if lay.complete else len(head)
    return load_seed(p.name, kind, head[:cut], size)


def load_seeds(models: Path, handcrafted_dirs: list[Path], seed_dirs: list[Path] = ()) -> list[Seed]:
    """The two real models, test-gguf's handcrafted files and the ``*.gguf`` of ``seed_dirs``
    (companion files: projectors, adapters, imatrices; header-only holes are fine)."""
    seeds = []
    for fname in REAL_FILES:
        p = models / fname
        if not p.is_file():
            raise SystemExit(f"fuzz_gguf: {p} is missing (run the test suite once to fetch the real files)")
        seeds.append(_header_seed(p, "real"))
    for d in seed_dirs:
        seeds += [_header_seed(p, "extra") for p in sorted(d.glob("*.gguf"))]
    for d in handcrafted_dirs:
        for p in sorted(d.glob("*.gguf")):
            data = p.read_bytes()
            seeds.append(load_seed(p.name, "handcrafted", data, len(data)))
    return seeds


# -- mutation ---------------------------------------------------------------------------------------


def _enc_str(bo: str, b: bytes) -> bytes:
    return struct.pack(bo + "Q", len(b)) + b


def _enc_value(rng: random.Random, bo: str, vt: int, n_layers: int) -> bytes:
    if vt == STR:
        return _enc_str(bo, rng.choice([b"", b"llama", "é✓".encode(), b"\xff\xfe", b"x" * rng.randint(0, 300)]))
    if vt == ARR:
        et = rng.choice([U8, I8, U16, I16, U32, I32, F32, BOOL, STR, U64, I64, F64, ARR, 13, -1])
        cnt = rng.choice([0, 1, 2, n_layers, n_layers - 1, n_layers + 1, rng.randint(0, 64)])
        cnt = max(0, cnt)
        body = struct.pack(bo + "iQ", et, cnt)
        for _ in range(cnt):
            if et == ARR:
                body += struct.pack(bo + "iQ", U32, 1) + struct.pack(bo + "I", rng.randint(0, 8))
            elif et in SCALAR_FMT:
                body += _enc_scalar(rng, bo, et)
            elif et == STR:
                body += _enc_str(bo, rng.choice([b"", b"a", b"<|im_start|>"]))
            else:
                break
        return body
    if vt in SCALAR_FMT:
        return _enc_scalar(rng, bo, vt)
    return b"\0" * rng.randint(0, 8)


def _enc_scalar(rng: random.Random, bo: str, vt: int) -> bytes:
    fmt = SCALAR_FMT[vt]
    if fmt in "fd":
        v = rng.choice([0.0, -0.0, 1.0, -1.0, 1e-6, 1e38, float("inf"), float("-inf"), float("nan"), 1e300])
        if fmt == "f" and abs(v) == 1e300:
            v = 3.4e38
        return struct.pack(bo + fmt, v)
    bits = struct.calcsize(fmt) * 8
    signed = fmt.islower()
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    v = rng.choice(
        [
            0,
            1,
            2,
            3,
            4,
            6,
            8,
            16,
            30,
            64,
            255,
            256,
            4096,
            32768,
            262144,
            1 << 20,
            hi,
            hi - 1,
            lo,
            -1,
            rng.randint(lo, hi),
        ]
    )
    return struct.pack(bo + fmt, max(lo, min(hi, v)))


class Mutant:
    """A header being mutated: bytes, the file size it stands for, and what was done."""

    def __init__(self, seed: Seed):
        self.seed = seed
        self.buf = bytearray(seed.header)
        self.size = seed.size
        self.ops: list[str] = []
        self.bo = seed.lay.bo

    def put(self, at: int, fmt: str, v: int | float) -> None:
        n = struct.calcsize(fmt)
        if 0 <= at and at + n <= len(self.buf):
            self.buf[at : at + n] = struct.pack(self.bo + fmt, v)

    def get(self, at: int, fmt: str) -> Any:
        try:
            return struct.unpack_from(self.bo + fmt, self.buf, at)[0]
        except struct.error:
            return 0

    def splice(self, a: int, b: int, new: bytes, keep_size: bool = False) -> None:
        """Replace bytes [a, b) of the header; the hole (tensor data) keeps its length unless told."""
        old_len = len(self.buf)
        self.buf[a:b] = new
        if not keep_size:
            lay = self.seed.lay
            al = lay.alignment if lay.alignment and lay.alignment & (lay.alignment - 1) == 0 else 32
            self.size = max(len(self.buf), self.size - _pad(old_len, al) + _pad(len(self.buf), al))


def mutate(seed: Seed, rng: random.Random) -> Mutant:
    m = Mutant(seed)
    lay = seed.lay
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        op = rng.choice(OPS)
        try:
            op(m, lay, rng)
        except (IndexError, KeyError, ValueError, struct.error, OverflowError):
            m.ops.append(f"{op.__name__}:skipped")
    return m


def op_length(m: Mutant, lay: Layout, rng: random.Random) -> None:
    fields = lay.string_lens + [t.name_len_at for t in lay.tensors]
    at = rng.choice(fields)
    v = _u64_interesting(rng, m.size, at, len(m.buf), m.get(at, "Q"))
    m.put(at, "Q", v)
    m.ops.append(f"length@{at}={v}")


def op_count(m: Mutant, lay: Layout, rng: random.Random) -> None:
    arrays = [kv.count_at for kv in lay.kvs if kv.count_at >= 0]
    at = rng.choice([8, 16, *arrays, *arrays])
    v = _u64_interesting(rng, m.size, at, len(m.buf), m.get(at, "Q"))
    if rng.random() < 0.3:
        v = rng.choice([m.size // 8, m.size // 12, m.size // 13, m.size // 24, (m.size - at) // 8 - 1])
    m.put(at, "Q", v % (1 << 64))
    m.ops.append(f"count@{at}={v}")


def op_vtype(m: Mutant, lay: Layout, rng: random.Random) -> None:
    kv = rng.choice(lay.kvs)
    at = kv.etype_at if kv.etype_at >= 0 and rng.random() < 0.5 else kv.vtype_at
    v = rng.choice([*range(13), 13, 14, -1, 99, (1 << 31) - 1])
    m.put(at, "i", v)
    m.ops.append(f"vtype@{at}={v}")


def op_ttype(m: Mutant, lay: Layout, rng: random.Random) -> None:
    t = rng.choice(lay.tensors) if rng.random() < 0.8 else lay.tensors[-1]
    at = t.ndims_at + 4 + 8 * len(t.shape)
    v = _type_interesting(rng)
    m.put(at, "i", v)
    m.ops.append(f"ttype@{at}={v}")


def op_ndims(m: Mutant, lay: Layout, rng: random.Random) -> None:
    t = rng.choice(lay.tensors)
    v = rng.choice([0, 1, 2, 3, 4, 5, 8, (1 << 32) - 1])
    m.put(t.ndims_at, "I", v)
    m.ops.append(f"ndims@{t.ndims_at}={v}")


def op_ne(m: Mutant, lay: Layout, rng: random.Random) -> None:
    t = rng.choice([t for t in lay.tensors if t.shape])
    d = rng.randrange(len(t.shape))
    at = t.ndims_at + 4 + 8 * d
    v = _i64_interesting(rng, t.shape[d])
    m.put(at, "q", v)
    m.ops.append(f"ne@{at}={v}")


def op_toffset(m: Mutant, lay: Layout, rng: random.Random) -> None:
    t = rng.choice(lay.tensors)
    at = t.end - 8
    v = rng.choice(
        [
            0,
            t.offset + lay.alignment,
            max(0, t.offset - lay.alignment),
            t.offset + 1,
            m.size,
            m.size - len(m.buf),
            (1 << 64) - 1,
            (1 << 63),
            rng.getrandbits(40) * 32,
        ]
    )
    m.put(at, "Q", v % (1 << 64))
    m.ops.append(f"offset@{at}={v}")


def op_scalar(m: Mutant, lay: Layout, rng: random.Random) -> None:
    at, vt = rng.choice(lay.scalars)
    m.buf[at : at + struct.calcsize(SCALAR_FMT[vt])] = _enc_scalar(rng, m.bo, vt)
    m.ops.append(f"scalar@{at}")


def op_flip(m: Mutant, lay: Layout, rng: random.Random) -> None:
    hi = len(m.buf) if rng.random() < 0.5 else min(len(m.buf), max(64, (lay.kv_end if lay.kv_end > 0 else 4096)))
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(hi)
        m.buf[i] ^= 1 << rng.randrange(8)
    m.ops.append("flip")


def op_u64(m: Mutant, lay: Layout, rng: random.Random) -> None:
    at = rng.randrange(max(1, len(m.buf) - 8))
    v = _u64_interesting(rng, m.size, at, len(m.buf), 0)
    m.put(at, "Q", v)
    m.ops.append(f"u64@{at}={v}")


def op_truncate(m: Mutant, lay: Layout, rng: random.Random) -> None:
    cuts = [r.end for r in lay.kvs] + [t.end for t in lay.tensors] + [rng.randrange(len(m.buf) + 1)]
    cut = rng.choice(cuts)
    del m.buf[cut:]
    if rng.random() < 0.5:
        m.size = cut  # the file really ends there
    m.ops.append(f"truncate@{cut}")


def _records(lay: Layout, rng: random.Random) -> tuple[list, int]:
    if lay.tensors and rng.random() < 0.5:
        return lay.tensors, 8
    return lay.kvs, 16


def op_splice(m: Mutant, lay: Layout, rng: random.Random) -> None:
    """Delete, duplicate or swap whole records, with or without fixing the count."""
    recs, count_at = _records(lay, rng)
    r = rng.choice(recs)
    how = rng.choice(["delete", "duplicate", "swap", "move-last"])
    fix = rng.random() < 0.8
    if how == "delete":
        m.splice(r.start, r.end, b"")
        delta = -1
    elif how == "duplicate":
        m.splice(r.end, r.end, bytes(m.buf[r.start : r.end]))
        delta = 1
    else:
        o = rng.choice(recs) if how == "swap" else recs[-1]
        a, b = sorted((r, o), key=lambda x: x.start)
        if a is b:
            return
        mid = bytes(m.buf[a.end : b.start])
        m.splice(a.start, b.end, bytes(m.buf[b.start : b.end]) + mid + bytes(m.buf[a.start : a.end]), keep_size=True)
        delta = 0
    if fix and delta:
        m.put(count_at, "q", m.get(count_at, "q") + delta)
    m.ops.append(f"{how}-{'tensor' if count_at == 8 else 'kv'}@{r.start}{'' if fix else ':count-kept'}")


def op_set_kv(m: Mutant, lay: Layout, rng: random.Random) -> None:
    """Re-encode or add a metadata record: a known key with another type or value."""
    arch = seed_arch = m.seed.arch
    key = rng.choice([f"{arch}.{k}" for k in ARCH_KEYS] + list(GLOBAL_KEYS))
    vt = rng.choice([U32, U32, U32, I32, U64, F32, STR, ARR, ARR, BOOL, U8, I64, F64])
    n_layers = 30 if "gemma" not in seed_arch else 18
    if key == "general.architecture" and rng.random() < 0.8:
        value = _enc_str(m.bo, rng.choice(ARCHS).encode())
        vt = STR
    elif key.startswith("tokenizer.chat_template") and rng.random() < 0.8:
        value = _enc_str(m.bo, rng.choice(TEMPLATES).encode())
        vt = STR
    else:
        value = _enc_value(rng, m.bo, vt, n_layers)
    rec = _enc_str(m.bo, key.encode()) + struct.pack(m.bo + "i", vt) + value
    old = next((kv for kv in lay.kvs if kv.key == key), None)
    if old is not None and rng.random() < 0.85:
        m.splice(old.start, old.end, rec)
        m.ops.append(f"set {key}:{vt}")
    else:
        at = lay.kv_end if lay.kv_end > 0 else 24
        m.splice(at, at, rec)
        m.put(16, "q", m.get(16, "q") + 1)
        m.ops.append(f"add {key}:{vt}")


def _tensor_info(bo: str, name: bytes, shape: tuple[int, ...], tid: int, off: int) -> bytes:
    return (
        _enc_str(bo, name)
        + struct.pack(bo + "I", len(shape))
        + b"".join(struct.pack(bo + "q", d) for d in shape)
        + struct.pack(bo + "iQ", tid, off)
    )


def op_relayout(m: Mutant, lay: Layout, rng: random.Random) -> None:
    """Rename tensors, change shapes or types, drop or add tensors, and lay the data out again so
    that the file stays valid: what the analyses see is a new, plausible model."""
    if lay.header_end < 0:
        raise ValueError
    ts = [(t.name, t.shape, t.type_id) for t in lay.tensors]
    for _ in range(rng.randint(1, 4)):
        how = rng.choice(["rename", "shape", "type", "drop", "add", "layer"])
        i = rng.randrange(len(ts)) if ts else 0
        if how == "rename" and ts:
            n, s, t = ts[i]
            layer = rng.choice([0, 1, 2, 17, 29, 99, 4095]) if rng.random() < 0.98 else rng.choice([1 << 20, 1 << 31])
            new = rng.choice(
                [
                    f"blk.{layer}.{rng.choice(ROLES)}.weight".encode(),
                    b"",
                    b"x" * 63,
                    b"\xff.weight",
                    b"output.weight",
                    b"token_embd.weight",
                    b"v.blk.0.attn_q",
                ]
            )
            ts[i] = (new, s, t)
        elif how == "shape" and ts:
            n, s, t = ts[i]
            b = BLOCK.get(t, 1)
            nd = rng.randint(0, 4)
            ts[i] = (n, tuple(rng.choice([0, 1, b, 2 * b, 3 * b, 1024]) for _ in range(nd)), t)
        elif how == "type" and ts:
            n, s, _t = ts[i]
            t = rng.choice(list(BLOCK))
            b = BLOCK[t]
            ts[i] = (n, ((s[0] if s else 1) * b, *s[1:]), t)
        elif how == "drop" and ts:
            ts.pop(i)
        elif how == "add":
            ts.append((f"blk.{rng.randint(0, 40)}.{rng.choice(ROLES)}.weight".encode(), (256, 4), 12))
        elif how == "layer" and ts:
            n, s, t = ts[i]
            ts.append((n.replace(b"blk.0.", b"blk.%d." % rng.choice([1, 2, 47, 1000])), s, t))
    from ggufx.format.ggmltypes import ggml_type

    al = lay.alignment if lay.alignment & (lay.alignment - 1) == 0 else 32
    infos, off = b"", 0
    for n, s, t in ts:
        infos += _tensor_info(m.bo, n, s, t, off)
        ne = 1
        for d in s:
            ne *= d
        gt = ggml_type(t)
        off += _pad(gt.nbytes(ne) if gt.known else 32, al)
    start = lay.kv_end
    m.splice(start, lay.header_end, infos)
    m.put(8, "q", len(ts))
    m.size = _pad(len(m.buf), al) + off
    m.ops.append(f"relayout:{len(ts)} tensors")


def op_version(m: Mutant, lay: Layout, rng: random.Random) -> None:
    v = rng.choice([0, 1, 2, 3, 4, 0x03000000, 0x00010000, (1 << 32) - 1])
    struct.pack_into("<I", m.buf, 4, v)
    if rng.random() < 0.2:
        m.buf[0:4] = rng.choice([b"GGUG", b"\0\0\0\0", b"FUGG", b"GGML"])
    m.ops.append(f"version={v}")


OPS = [
    op_length,
    op_length,
    op_length,
    op_count,
    op_count,
    op_vtype,
    op_ttype,
    op_ttype,
    op_ndims,
    op_ne,
    op_ne,
    op_toffset,
    op_scalar,
    op_scalar,
    op_flip,
    op_u64,
    op_truncate,
    op_splice,
    op_splice,
    op_set_kv,
    op_set_kv,
    op_set_kv,
    op_set_kv,
    op_relayout,
    op_relayout,
    op_version,
]


# -- running one mutant -----------------------------------------------------------------------------


class MemSource:
    """A byte source over a header in memory; past it, up to ``size``, the file is a hole of zeros."""

    def __init__(self, path: str, header: bytes | bytearray, size: int):
        self.path = path
        self.header = bytes(header)
        self.size = size

    def read(self, offset: int, n: int) -> bytes:
        end = offset + n
        if offset < 0 or end > self.size:
            raise SourceError(self.path, offset, "read past the end")
        part = self.header[offset:end]
        return part + bytes(n - len(part)) if len(part) < n else part

    def close(self) -> None:
        pass


class MutantTimeout(BaseException):
    """Raised by the timer when a mutant runs too long (a BaseException: nothing may swallow it)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise MutantTimeout()


def where(exc: BaseException) -> str:
    """The innermost frame of ggufx (else of anything) in the exception's traceback: module:line func."""
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if "/ggufx/" in f.filename.replace(os.sep, "/")]
    f = (inside or frames or [None])[-1]
    if f is None:
        return "?"
    return f"{_rel(f.filename)}:{f.lineno} {f.name}"


class Unprintable(Exception):
    """A renderer returned text that cannot be written to a UTF-8 stream (lone surrogates)."""

    def __init__(self, where: str, reason: str):
        super().__init__(reason)
        self.where = where


def _rel(filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(ROOT))
    except ValueError:
        return filename


def _out(fn: Any, *args: Any) -> int:
    """Render as the CLI would and write it to a strict UTF-8 stream (what a UTF-8 terminal is)."""
    text = fn(*args)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        code = fn.__code__
        raise Unprintable(f"{_rel(code.co_filename)}:{code.co_firstlineno} {fn.__name__} (output)", str(e)) from None


def _steps(path: str) -> list[tuple[str, Any]]:
    import ggufx
    from ggufx import results
    from ggufx.chat.sources import from_model
    from ggufx.errors import InputError
    from ggufx.render import jsontext, pages, text

    dumps = jsontext.dumps
    # the text renderer of `mem` has changed name before; use whichever this checkout has
    memory_text = getattr(text, "memory_devices_text", None) or getattr(text, "memory_text", None)

    def info(m):
        r = results.info(m)
        _out(dumps, r), _out(text.info_text, r)

    def tensors(m):
        r = results.tensors(m)
        _out(dumps, r), _out(text.tensors_text, r)

    def meta(m):
        r = results.meta(m)
        _out(dumps, r), _out(text.meta_text, r, False)
        if m.header.data_offset < 1 << 20:  # --full prints every token: ~1 s for Gemma's 262,144, every time
            r = results.meta(m, full=True)
            _out(dumps, r), _out(text.meta_text, r, True)

    def roles(m):
        r = results.roles(m)
        _out(dumps, r), _out(text.roles_text, r)

    def layers(m):
        r = results.layers(m)
        _out(dumps, r), _out(text.layers_text, r)

    def recipe(m):
        r = results.recipe(m)
        _out(dumps, r), _out(text.recipe_text, r)

    def memory(m):
        r = results.memory(m, results.MemoryRequest(), ggufx.open)
        _out(dumps, r)
        if memory_text:
            _out(memory_text, r)
        try:  # quantized caches: refusing them for this file's head sizes is an answer, not a crash
            _out(
                dumps,
                results.memory(
                    m, results.MemoryRequest(ctx=32768, cache_type_k="q8_0", cache_type_v="q4_0"), ggufx.open
                ),
            )
        except InputError:
            pass

    def fit(m):
        r = results.fit(m, results.MemoryRequest(fit_budget="24GiB"), ggufx.open)
        _out(dumps, r), _out(text.fit_text, r)

    def report(m):
        r = results.report(m)
        _out(dumps, r), _out(pages.render, r, "html"), _out(pages.render, r, "md")

    def template_info(m):
        _out(dumps, results.template_info(path, from_model(m, path)))

    return [
        ("info", info),
        ("tensors", tensors),
        ("meta", meta),
        ("roles", roles),
        ("layers", layers),
        ("recipe", recipe),
        ("memory", memory),
        ("fit", fit),
        ("report", report),
        ("template info", template_info),
    ]


def run_mutant(index: int, seed: Seed, m: Mutant, timeout: float) -> dict[str, Any]:
    """Open one mutant and run every read-only result on it: its outcome, findings and timings."""
    from ggufx.model.open import open_model

    path = f"/fuzz/{index}-{seed.name}"
    out: dict[str, Any] = {
        "i": index,
        "seed": seed.name,
        "seed_kind": seed.kind,
        "ops": m.ops,
        "size": m.size,
        "findings": [],
    }

    def opener(p: str) -> MemSource:
        if p != path:
            raise SourceError(p, None, "no such file")
        return MemSource(path, m.buf, m.size)

    step = "open"
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            model = open_model(path, opener=opener)
        except GGUFError as e:
            out["open"] = "rejected"
            out["reject_s"] = time.perf_counter() - t0
            out["message"] = e.one_line()
            if "\n" in e.one_line():
                out["findings"].append(("open", "MultiLineMessage", "ggufx/errors.py", e.one_line()[:200]))
            return out
        out["open"] = "opened"
        out["open_s"] = time.perf_counter() - t0
        for step, fn in _steps(path):
            try:
                fn(model)
            except GGUFError:
                pass
            except Unprintable as e:
                out["findings"].append((step, "UnicodeEncodeError", e.where, str(e)[:200]))
            except Exception as e:  # a finding; the other steps still run
                out["findings"].append((step, type(e).__name__, where(e), str(e)[:200]))
    except MutantTimeout as e:
        out["findings"].append((step, "Timeout", where(e), f"still running after {timeout:g} s"))
    except MemoryError as e:
        out["findings"].append((step, "MemoryError", where(e), "memory limit reached"))
    except Exception as e:  # the findings: anything that is not a GGUFError
        out["findings"].append((step, type(e).__name__, where(e), str(e)[:200]))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        out["seconds"] = time.perf_counter() - t0
    return out


# -- the run ----------------------------------------------------------------------------------------

_SEEDS: list[Seed] = []
_ARGS: argparse.Namespace | None = None


def _pick(seeds: list[Seed], rng: random.Random) -> Seed:
    kinds = [k for k in SEED_WEIGHTS if any(s.kind == k for s in seeds)]
    kind = rng.choices(kinds, [SEED_WEIGHTS[k] for k in kinds])[0]
    return rng.choice([s for s in seeds if s.kind == kind])


def make_mutant(index: int, run_seed: int, seeds: list[Seed]) -> tuple[Seed, Mutant]:
    rng = random.Random(f"{run_seed}:{index}")
    seed = _pick(seeds, rng)
    return seed, mutate(seed, rng)


def _init_worker(seeds: list[Seed], args: argparse.Namespace) -> None:
    global _SEEDS, _ARGS
    _SEEDS, _ARGS = seeds, args
    signal.signal(signal.SIGALRM, _on_alarm)
    if args.mem_limit:
        lim = args.mem_limit << 20
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    # everything a mutant may import, imported now: the first mutants should not pay for it
    import ggufx.analysis.layers  # noqa: F401
    import ggufx.analysis.memory.estimate  # noqa: F401
    import ggufx.analysis.recipe  # noqa: F401
    import ggufx.analysis.roles  # noqa: F401
    import ggufx.chat.dialect  # noqa: F401
    import ggufx.render.pages  # noqa: F401


def _work(index: int) -> dict[str, Any]:
    assert _ARGS is not None
    seed, m = make_mutant(index, _ARGS.run_seed, _SEEDS)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = run_mutant(index, seed, m, _ARGS.timeout)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["maxrss_kib"] = after
    out["rss_growth_kib"] = after - before
    out["pid"] = os.getpid()
    return out


@dataclass
class Summary:
    mutants: int = 0
    seconds: float = 0.0
    rejected: int = 0
    opened: int = 0
    findings: Counter = field(default_factory=Counter)
    finding_examples: dict = field(default_factory=dict)
    by_seed: Counter = field(default_factory=Counter)
    slowest_rejection: dict = field(default_factory=dict)
    slowest_mutant: dict = field(default_factory=dict)
    peak_rss_kib: int = 0
    biggest_rss_step: dict = field(default_factory=dict)
    by_kind: dict = field(default_factory=dict)  # per seed kind: mutants, slowest rejection, biggest RSS step
    baseline_rss_kib: dict = field(default_factory=dict)

    def add(self, r: dict[str, Any]) -> None:
        self.mutants += 1
        k = self.by_kind.setdefault(
            r.get("seed_kind", "real" if r["seed"] in REAL_FILES else "handcrafted"),
            {"mutants": 0, "rejected": 0, "opened": 0, "slowest_rejection_s": 0.0, "biggest_rss_step_mib": 0.0},
        )
        k["mutants"] += 1
        if r.get("open") in ("rejected", "opened"):
            k[r["open"]] += 1
        if r.get("open") == "rejected":
            k["slowest_rejection_s"] = max(k["slowest_rejection_s"], round(r["reject_s"], 4))
        k["biggest_rss_step_mib"] = max(k["biggest_rss_step_mib"], round(r["rss_growth_kib"] / 1024, 1))
        name = r["seed"]
        self.by_seed[name if name in REAL_FILES else "handcrafted " + name.split("-", 1)[-1]] += 1
        if r.get("open") == "rejected":
            self.rejected += 1
            if r["reject_s"] > self.slowest_rejection.get("seconds", -1):
                self.slowest_rejection = {
                    "seconds": round(r["reject_s"], 4),
                    "mutant": r["i"],
                    "seed": r["seed"],
                    "ops": r["ops"],
                    "message": r["message"][:300],
                }
        elif r.get("open") == "opened":
            self.opened += 1
        if r["seconds"] > self.slowest_mutant.get("seconds", -1):
            self.slowest_mutant = {
                "seconds": round(r["seconds"], 4),
                "mutant": r["i"],
                "seed": r["seed"],
                "ops": r["ops"],
                "open": r.get("open"),
            }
        for step, kind, loc, msg in r["findings"]:
            k = (step, kind, loc)
            self.findings[k] += 1
            self.finding_examples.setdefault(k, {"mutant": r["i"], "seed": r["seed"], "ops": r["ops"], "message": msg})
        self.baseline_rss_kib.setdefault(r["pid"], r["maxrss_kib"] - r["rss_growth_kib"])
        self.peak_rss_kib = max(self.peak_rss_kib, r["maxrss_kib"])
        if r["rss_growth_kib"] > self.biggest_rss_step.get("kib", 0):
            self.biggest_rss_step = {
                "kib": r["rss_growth_kib"],
                "mutant": r["i"],
                "seed": r["seed"],
                "ops": r["ops"],
                "open": r.get("open"),
            }

    def to_dict(self) -> dict[str, Any]:
        return {
            "mutants": self.mutants,
            "seconds": round(self.seconds, 1),
            "rejected": self.rejected,
            "opened": self.opened,
            "non_gguf_errors": sum(self.findings.values()),
            "findings": [
                {"step": s, "exception": k, "where": loc, "count": n, **self.finding_examples[(s, k, loc)]}
                for (s, k, loc), n in self.findings.most_common()
            ],
            "slowest_rejection": self.slowest_rejection,
            "slowest_mutant": self.slowest_mutant,
            "peak_rss_mib": round(self.peak_rss_kib / 1024, 1),
            "worker_rss_before_first_mutant_mib": round(min(self.baseline_rss_kib.values(), default=0) / 1024, 1),
            "biggest_rss_step": self.biggest_rss_step,
            "by_seed_kind": self.by_kind,
            "mutants_by_seed": dict(self.by_seed),
        }


def fuzz(seeds: list[Seed], args: argparse.Namespace, progress: bool = True) -> Summary:
    s = Summary()
    t0 = time.perf_counter()
    indices = range(args.start, args.start + args.mutants)
    if args.jobs <= 1:
        _init_worker(seeds, args)
        results = map(_work, indices)
        pool = None
    else:
        ctx = multiprocessing.get_context("fork")
        pool = ctx.Pool(args.jobs, _init_worker, (seeds, args), maxtasksperchild=None)
        results = pool.imap_unordered(_work, indices, chunksize=16)
    try:
        for n, r in enumerate(results, 1):
            s.add(r)
            if progress and (n % 1000 == 0 or n == args.mutants):
                el = time.perf_counter() - t0
                print(
                    f"  {n:,} mutants, {el:,.0f} s, {s.rejected:,} rejected, {s.opened:,} opened, "
                    f"{sum(s.findings.values())} non-GGUFError",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    s.seconds = time.perf_counter() - t0
    return s


def handcrafted_dirs(seeds_arg: str | None, workdir: Path) -> list[Path]:
    dirs = [HANDCRAFTED_DIR] if HANDCRAFTED_DIR.is_dir() else []
    if seeds_arg:
        sys.path.insert(0, str(ROOT / "tools"))
        import gguf_oracle

        out = workdir / "test-gguf"
        gguf_oracle.write(out, [int(x) for x in seeds_arg.split(",")])
        dirs.append(out)
    return dirs


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=int, default=100_000)
    ap.add_argument("--start", type=int, default=0, help="index of the first mutant")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--run-seed", type=int, default=14)
    ap.add_argument("--handcrafted-seeds", help="also every test-gguf kind for these seeds (needs llama.cpp)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds one mutant may take")
    ap.add_argument("--mem-limit", type=int, default=4096, help="address space of a worker, MiB (0: none)")
    ap.add_argument(
        "--models",
        type=Path,
        default=Path(os.environ.get("GGUFX_MODEL_CACHE", Path.home() / ".cache" / "ggufx-test-models")),
    )
    ap.add_argument(
        "--seed-dir",
        type=Path,
        action="append",
        default=[],
        help="also every *.gguf here as a seed (e.g. projectors, adapters, imatrices); repeatable",
    )
    ap.add_argument("--json", type=Path, help="write the summary here too")
    ap.add_argument("--replay", type=int, help="run mutant I alone and print what happened")
    ap.add_argument("--write", type=Path, help="with --replay: save the mutant as a (sparse) file")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "ggufx-fuzz")
    args = ap.parse_args(argv)

    seeds = load_seeds(args.models, handcrafted_dirs(args.handcrafted_seeds, args.workdir), args.seed_dir)
    if args.replay is not None:
        seed, m = make_mutant(args.replay, args.run_seed, seeds)
        if args.write:
            with open(args.write, "wb") as f:
                f.write(m.buf)
                f.truncate(m.size)
        _init_worker(seeds, args)
        r = run_mutant(args.replay, seed, m, args.timeout)
        print(json.dumps(r, indent=1, default=str))
        return 1 if r["findings"] else 0
    print(
        f"fuzz_gguf: {args.mutants:,} mutants of {len(seeds)} seeds, {args.jobs} process(es), run seed {args.run_seed}",
        file=sys.stderr,
    )
    s = fuzz(seeds, args)
    d = s.to_dict()
    text = json.dumps(d, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if d["non_gguf_errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
