"""Compute buffers by simulation: llama.cpp's worst-case graph, split by ggml_backend_sched, replayed
through ggml-alloc, tensor by tensor.

``llama_context::sched_reserve`` (src/llama-context.cpp) builds the graph of one micro-batch of
``n_ubatch`` tokens against the full KV cache (``graph_reserve``), lets ``ggml_backend_sched`` assign
every node to a backend and split the graph (ggml/src/ggml-backend.cpp:1195-1745: the five passes,
op offload of host weights' products to the first GPU from 32 tokens, one copy per split input,
four with pipeline parallelism), and reserves it with ``ggml_gallocr`` (ggml/src/ggml-alloc.c:718):
one dynamic allocator per buffer type, best-fit, in-place reuse of a parent, frees after the last
consumer. Each backend's compute buffer is that allocator's high-water mark; it does the same for
the token-generation graph (one token per sequence) and keeps the larger.

This module rebuilds that graph for dense llama-style decoders (``llama``: Llama 3, SmolLM2), for
``qwen3moe`` (softmax routing, ``MUL_MAT_ID`` experts, host experts copied whole to the first GPU,
and the tensors CUDA's ``graph_optimize`` keeps alive around the MoE ops it fuses), for ``gemma3``
(a second cache and mask for the sliding-window layers) and for the ``qwen35`` hybrid (gated
attention layers, Gated DeltaNet layers reading and writing the recurrent state in place, the fused
``GATED_DELTA_NET`` node), and replays the three steps. It is an alternative to the phase model of
:mod:`ggufx.analysis.memory.compute`, checked against the recorded llama.cpp logs in
``tests/test_graphsim.py``; architectures it does not build, and files without what the graph
needs, are refused with a reason (:func:`simulated`, :func:`unbuildable`).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

from ggufx.analysis.layers import layer_kinds, swa_layers
from ggufx.analysis.memory.graph.galloc import CUDA_ALIGN, HOST_ALIGN, MATRIX_ROW_PADDING, DynAllocator
from ggufx.analysis.memory.hparams import Hparams, hparams, pad
from ggufx.analysis.memory.placement import CPU, Device, OffloadParams, Placement, host_buft, place
from ggufx.errors import ValidationError
from ggufx.format.ggmltypes import GGMLType, ggml_type_by_name
from ggufx.model import GGUFModel

T = TypeVar("T")

__all__ = ["BUILT_ARCHS", "SIMULATED_ARCHS", "SimParams", "simulate", "simulated", "unbuildable"]

SIMULATED_ARCHS = frozenset({"gemma3", "llama", "qwen35", "qwen3moe"})
BUILT_ARCHS = SIMULATED_ARCHS  # every built graph is exact on every recorded run
OP_OFFLOAD_MIN_BATCH = 32  # ggml-cuda.cu:5754 (op_offload_min_batch_size)
N_COPIES = 4  # GGML_SCHED_MAX_COPIES (ggml-backend.cpp:912)
GGML_MAX_SRC = 10
_MOE_REDUCTION_MAX = 15  # MOE_WEIGHTED_REDUCTION_MAX_EXPERTS (ggml-cuda.cu:3096)
INPUT, OUTPUT = 1, 2  # GGML_TENSOR_FLAG_INPUT / _OUTPUT
GLOBAL = -1  # the position of a tensor no layer made (inputs, embeddings, the output head, shared weights)
PREALLOCATED = -1  # the key of the positions of the tensors allocated before the first node
# ggml_op_can_inplace (ggml-alloc.c:22)
_INPLACE = frozenset(
    {"FILL", "SCALE", "DIAG_MASK_ZERO", "DIAG_MASK_INF", "ADD", "ADD_ID", "ADD1", "SUB", "MUL", "DIV", "SQR"}
    | {"SQRT", "LOG", "UNARY", "ROPE", "ROPE_BACK", "SILU_BACK", "RMS_NORM", "RMS_NORM_BACK", "CLAMP"}
    | {"SOFT_MAX", "SOFT_MAX_BACK"}
)
_VIEW_OPS = frozenset({"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"})  # ggml_is_view_op
_HOST_BUFTS = ("CPU", "CPU_Mapped", "CPU_REPACK")


@dataclass(frozen=True, slots=True)
class SimParams:
    """The resolved context of one reservation (what ``breakdown`` computes from the options)."""

    n_ubatch: int
    n_outputs: int  # outputs of the prompt-processing reserve
    n_seq_max: int
    n_kv: int  # cells per stream
    n_streams: int
    flash_attn: bool
    type_k: str = "F16"
    type_v: str = "F16"
    no_kv_offload: bool = False
    pipeline: bool = False
    n_kv_swa: int | None = None  # cells per stream of a sliding-window cache (None: without --swa-full)


@lru_cache(maxsize=64)
def _type(name: str) -> GGMLType:
    return ggml_type_by_name(name)


# -- the graph ----------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _T:
    """A ggml tensor as the scheduler and the allocator see it."""

    name: str
    op: str
    type: str
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    src: list[_T] = field(default_factory=list)
    view_src: _T | None = None
    flags: int = 0
    buft: str | None = None  # the buffer of a pre-allocated tensor (weights, KV cache)
    weight: bool = False
    backend: int = -1
    pos: int = GLOBAL  # the position in the built layers of the layer that made it (GLOBAL: none)
    seq: object = 0  # its place among that layer's tensors (what the replay's periodicity check keys on)

    @property
    def nbytes(self) -> int:
        """``ggml_nbytes`` (ggml.c): the span of the strides."""
        return _nbytes(self.type, self.ne, self.nb)


@lru_cache(maxsize=4096)
def _nbytes(type_: str, ne: tuple[int, int, int, int], nb: tuple[int, int, int, int]) -> int:
    if ne[0] <= 0 or ne[1] <= 0 or ne[2] <= 0 or ne[3] <= 0:
        return 0
    t = _type(type_)
    if t.block_size == 1:
        return t.type_size + (ne[0] - 1) * nb[0] + (ne[1] - 1) * nb[1] + (ne[2] - 1) * nb[2] + (ne[3] - 1) * nb[3]
    return ne[0] * nb[0] // t.block_size + (ne[1] - 1) * nb[1] + (ne[2] - 1) * nb[2] + (ne[3] - 1) * nb[3]


@lru_cache(maxsize=4096)
def _strides(ne: tuple[int, int, int, int], type_: str) -> tuple[int, int, int, int]:
    t = _type(type_)
    nb0 = t.type_size
    nb1 = nb0 * (ne[0] // t.block_size)
    return nb0, nb1, nb1 * ne[1], nb1 * ne[1] * ne[2]


def _ne(*ne: int) -> tuple[int, int, int, int]:
    n = (tuple(ne) + (1, 1, 1, 1))[:4]
    return n[0], n[1], n[2], n[3]


@dataclass(eq=False, slots=True)
class _Fusion:
    """Consecutive nodes CUDA's ``graph_optimize`` fuses (ggml-cuda.cu:4604-4660) when they all run
    in one CUDA split: it keeps ``keep`` (by default every member and its sources) alive until the
    node after the group (top-k routing) or until the group's last node (the weighted sum of the
    experts), through a dependency node the scheduler adds to its graph copy (ggml-backend.cpp:1672-1690)."""

    members: list[_T]
    keep: list[_T] | None = None


class _Graph:
    """Nodes and leafs in ``ggml_build_forward_expand`` order (ggml.c ``ggml_visit_parents``)."""

    def __init__(self) -> None:
        self.nodes: list[_T] = []
        self.leafs: list[_T] = []
        self.fused: list[_Fusion] = []
        self._seen: set[int] = set()
        self.pos = GLOBAL  # the layer being built (its position in the built layers)
        self._seq = 0

    def at(self, pos: int) -> None:
        """The tensors made from now on belong to the layer at ``pos`` of the built layers."""
        self.pos, self._seq = pos, 0

    def _tag(self, t: _T) -> _T:
        self._seq += 1
        t.pos, t.seq = self.pos, self._seq
        return t

    def new(self, name: str, op: str, type_: str, ne: tuple[int, ...], *src: _T) -> _T:
        n = _ne(*ne)
        return self._tag(_T(name, op, type_, n, _strides(n, type_), list(src)))

    def leaf(self, name: str, type_: str, ne: tuple[int, ...], flags: int = 0, buft: str | None = None) -> _T:
        t = self.new(name, "NONE", type_, ne)
        t.flags, t.buft = flags, buft
        return t

    def input(self, name: str, type_: str, *ne: int) -> _T:
        return self.leaf(name, type_, ne, INPUT)

    def view(self, a: _T, ne: tuple[int, ...], nb: tuple[int, ...] | None = None, op: str = "VIEW") -> _T:
        n = _ne(*ne)
        if nb is None:
            strides = _strides(n, a.type)
        else:
            full = list(nb) + [0] * (4 - len(nb))
            for i in range(len(nb), 4):
                full[i] = full[i - 1] * n[i - 1]
            strides = (full[0], full[1], full[2], full[3])
        return self._tag(_T(a.name, op, a.type, n, strides, [a], view_src=a.view_src or a))

    def reshape(self, a: _T, *ne: int) -> _T:
        return self.view(a, ne, None, "RESHAPE")

    def permute(self, a: _T, *axes: int) -> _T:
        ne, nb = [0] * 4, [0] * 4
        for i, ax in enumerate(axes):
            ne[ax], nb[ax] = a.ne[i], a.nb[i]
        t = _T(a.name, "PERMUTE", a.type, _ne(*ne), (nb[0], nb[1], nb[2], nb[3]), [a], view_src=a.view_src or a)
        return self._tag(t)

    def op(self, name: str, op: str, a: _T, *more: _T, type_: str | None = None) -> _T:
        """An element-wise op: the shape and type of ``a``."""
        return self.new(name, op, type_ or a.type, a.ne, a, *more)

    def mul_mat(self, name: str, w: _T, x: _T) -> _T:
        return self.new(name, "MUL_MAT", "F32", (w.ne[1], x.ne[1], x.ne[2], x.ne[3]), w, x)

    def expand(self, t: _T) -> None:
        stack: list[tuple[_T, int]] = [(t, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                if id(node) in self._seen:
                    continue
                self._seen.add(id(node))
            if i < len(node.src):
                stack.append((node, i + 1))
                if id(node.src[i]) not in self._seen:
                    stack.append((node.src[i], 0))
                continue
            (self.leafs if node.op == "NONE" else self.nodes).append(node)


# -- the language model's graph (src/models/llama.cpp, src/llama-graph.cpp) ----------------------------


@dataclass(slots=True)
class _Ctx:
    hp: Hparams
    sp: SimParams
    n_tokens: int
    n_outputs: int
    weights: dict[tuple[str, str | None], _T]  # (name, buft) -> tensor
    by_name: dict[str, list[tuple[str, _T]]]
    layer_buft: list[str]  # the buffer type of each layer's weights (index n_layer: the output layer)
    cache_buft: list[str]
    pin: list[int]  # the backend graph_get_cb pins each layer's "norm" to (-1: none)
    path: str = ""  # the model's file, for the error a missing tensor gets
    moe: int | None = None  # experts used per token (n_expert_used) of a mixture-of-experts FFN
    swa: list[bool] = field(default_factory=list)  # the sliding-window layers
    n_kv_swa: int = 0  # cells per stream of the sliding-window cache
    pos: _T | None = None  # the positions input, once built
    recurrent: list[bool] = field(default_factory=list)  # the Gated DeltaNet layers of a hybrid
    gdn: _Gdn | None = None  # their dimensions
    layers: list[int] = field(default_factory=list)  # the layers built, in order (all of them, or a plan's)


def _weight(c: _Ctx, name: str, il: int) -> _T | None:
    """The copy of a weight that layer ``il`` uses: a tensor loaded once per buffer type (the tied
    output, rope_freqs) is taken from the layer's own buffer type when it has one there."""
    copies = c.by_name.get(name)
    if not copies:
        return None
    if il < 0:  # the input layer: the first copy (llama-model.cpp loads token_embd on the host first)
        return copies[0][1]
    for buft, t in copies:
        if buft == c.layer_buft[il]:
            return t
    return copies[-1][1] if il == c.hp.n_layer else copies[0][1]


def _rot(g: _Graph, x: _T, rot: _T | None) -> _T:
    """The Hadamard rotation of a quantized cache (llama-graph.cpp ``ggml_rotate_hadamard``)."""
    if rot is None:
        return x
    n = rot.ne[0]
    r = g.reshape(x, n, math.prod(x.ne) // n)
    r = g.mul_mat(x.name, rot, r)
    return g.reshape(r, *x.ne)


@dataclass(slots=True)
class _AttnInp:
    """One KV cache's graph inputs (``build_attn_inp_kv``/``_iswa``, llama-graph.cpp:3470-3530):
    the rows to write, the mask, the Hadamard rotations of a quantized cache."""

    n_kv: int  # cells per stream
    k_idxs: _T
    v_idxs: _T
    mask: _T
    k_rot: _T | None
    v_rot: _T | None


def _attn_inp(c: _Ctx, g: _Graph, n_kv: int) -> _AttnInp:
    hp, sp, T = c.hp, c.sp, c.n_tokens
    hd, hv = hp.head_k, hp.head_v
    tk, tv = _type(sp.type_k), _type(sp.type_v)
    k_rot = g.input("attn_inp_k_rot", "F32", hd, hd) if tk.block_size > 1 and hd % 64 == 0 else None
    if k_rot is not None:
        n = 64
        while hd % (2 * n) == 0:
            n *= 2
        k_rot.ne, k_rot.nb = _ne(n, n), _strides(_ne(n, n), "F32")
    v_rot = g.input("attn_inp_v_rot", "F32", 64, 64) if tv.block_size > 1 and hv % 64 == 0 else None
    k_idxs = g.input("attn_inp_k_idxs", "I64", T)
    v_gqa = max(hp.n_head_kv) * hv
    v_idxs = g.input("attn_inp_v_idxs", "I64", T * (v_gqa if not sp.flash_attn else 1))
    ns = sp.n_streams
    mask = g.input("attn_inp_kq_mask", "F16" if sp.flash_attn else "F32", n_kv, T // ns, 1, ns)
    return _AttnInp(n_kv, k_idxs, v_idxs, mask, k_rot, v_rot)


def _inp_embd(c: _Ctx, g: _Graph) -> _T:
    """``build_inp_embd`` (llama-graph.cpp:2413): the token branch, then the unselected embedding
    branches (all kept by ``ggml_build_forward_select``), then Gemma's scaling of the token rows."""
    T, E = c.n_tokens, c.hp.n_embd
    tok = _w(c, "token_embd.weight", -1)
    tokens = g.input("inp_tokens", "I32", T)
    embd = g.new("embd", "GET_ROWS", "F32", (E, T), tok, tokens)
    inp_embd = g.input("inp_embd", "F32", E, T)
    mixed_tokens = g.input("inp_mixed_tokens", "I32", T)
    mixed_slots = g.input("inp_mixed_slots", "I64", T)
    mixed_embd = g.input("inp_mixed_embd", "F32", E, T)
    rows = g.new("node_1", "GET_ROWS", "F32", (E, T), tok, mixed_tokens)
    dup = g.new("node_2", "DUP", "F32", (E, T), mixed_embd)
    sel = g.view(dup, dup.ne, dup.nb, "SET_ROWS")
    sel.src = [rows, mixed_slots, dup]
    for t in (embd, inp_embd, sel):
        g.expand(t)
    if c.hp.arch == "gemma3":  # tok_scale = sqrt(n_embd) (gemma3.cpp:89): MUL by the input scale_rows
        embd = g.op("inp_scaled", "MUL", embd, g.input("inp_scale_rows", "F32", 1, T))
        g.expand(embd)
    return embd


def _attn(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp, iswa: bool) -> _T:
    """Q/K/V and RoPE of one layer, its attention (:func:`_attn_kv`), then the output projection."""
    hp = c.hp
    T = c.n_tokens
    nh, nkv = hp.n_head[il], hp.n_head_kv[il]
    hd, hv = hp.head_k, hp.head_v
    pos = c.pos
    assert pos is not None
    rope_freqs = _weight(c, "rope_freqs.weight", il)
    rope_src = [pos, *([rope_freqs] if rope_freqs else [])]
    q = _proj(c, g, f"Qcur-{il}", f"blk.{il}.attn_q", x, il)
    q = _qk_norm(c, g, g.reshape(q, hd, nh, T), f"blk.{il}.attn_q_norm.weight", il)
    q = g.new(q.name, "ROPE", "F32", q.ne, q, *rope_src)
    if hp.arch == "gemma3":
        q = g.op(q.name, "SCALE", q)  # f_attention_scale (gemma3.cpp:138)
    k = _proj(c, g, f"Kcur-{il}", f"blk.{il}.attn_k", x, il)
    k = _qk_norm(c, g, g.reshape(k, hd, nkv, T), f"blk.{il}.attn_k_norm.weight", il)
    v = _proj(c, g, f"Vcur-{il}", f"blk.{il}.attn_v", x, il)
    v = g.reshape(v, hv, nkv, T)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, *rope_src)
    cur = _attn_kv(c, g, q, k, v, il, inp, iswa)
    return _proj(c, g, f"attn_out-{il}", f"blk.{il}.attn_output", cur, il)


def _attn_kv(c: _Ctx, g: _Graph, q: _T, k: _T, v: _T, il: int, inp: _AttnInp, iswa: bool) -> _T:
    """The cache writes and the attention of one layer's roped Q, K and V (``build_attn``,
    llama-graph.cpp:2950-3060 and, with a sliding-window cache, :3195-3290), before the output
    projection."""
    hp, sp = c.hp, c.sp
    T = c.n_tokens
    ns = sp.n_streams
    nh, nkv = hp.n_head[il], hp.n_head_kv[il]
    hd, hv = hp.head_k, hp.head_v
    fa = sp.flash_attn
    tk, tv = _type(sp.type_k), _type(sp.type_v)
    n_kv = inp.n_kv
    v_gqa = max(hp.n_head_kv) * hv
    q, k, v = _rot(g, q, inp.k_rot), _rot(g, k, inp.k_rot), _rot(g, v, inp.v_rot)
    for t in (q, k, v) if iswa else (q, v, k):
        g.expand(t)
    buft = c.cache_buft[il]
    cache_k = g.leaf(f"cache_k_l{il}", tk.name, (hd * nkv, n_kv * ns), buft=buft)
    cache_v = g.leaf(f"cache_v_l{il}", tv.name, ((hv * nkv) if fa else v_gqa, n_kv * ns), buft=buft)
    # cpy_k / cpy_v (llama-kv-cache.cpp): SET_ROWS into views of the cache
    kv = g.view(k, (hd * nkv, T), None)
    set_k = g.view(cache_k, cache_k.ne, cache_k.nb, "SET_ROWS")
    set_k.src = [kv, inp.k_idxs, cache_k]
    g.expand(set_k)
    if fa:
        vv = g.view(v, (hv * nkv, T), None)
        set_v = g.view(cache_v, cache_v.ne, cache_v.nb, "SET_ROWS")
        set_v.src = [vv, inp.v_idxs, cache_v]
    else:
        vv = g.reshape(g.reshape(v, hv * nkv, T), 1, hv * nkv * T)
        cv = g.reshape(cache_v, 1, math.prod(cache_v.ne))
        set_v = g.view(cv, cv.ne, cv.nb, "SET_ROWS")
        set_v.src = [vv, inp.v_idxs, cv]
    g.expand(set_v)
    qv = g.permute(g.view(q, (hd, nh, T // ns, ns), (q.nb[0], q.nb[1], q.nb[2], q.nb[2] * (T // ns))), 0, 2, 1, 3)
    krow = cache_k.nb[1]
    kview = g.view(cache_k, (hd, nkv, n_kv, ns), (cache_k.nb[0], krow // nkv, krow, krow * n_kv))
    kp = g.permute(kview, 0, 2, 1, 3)
    if fa:
        vrow = cache_v.nb[1]
        vview = g.view(cache_v, (hv, nkv, n_kv, ns), (cache_v.nb[0], vrow // nkv, vrow, vrow * n_kv))
        vp = g.permute(vview, 0, 2, 1, 3)
        out = g.new(f"node_fa-{il}", "FLASH_ATTN_EXT", "F32", (hv, nh, T // ns, ns), qv, kp, vp, inp.mask)
        cur = g.reshape(out, hv * nh, T)
    else:
        es = cache_v.nb[0]
        vview = g.view(cache_v, (n_kv, nkv, hv, ns), (es, es * n_kv * hv, es * n_kv, es * n_kv * v_gqa))
        vp = g.permute(vview, 0, 2, 1, 3)
        kq = g.new(f"kq-{il}", "MUL_MAT", "F32", (n_kv, T // ns, nh, ns), kp, qv)
        kq = g.op(f"kq_soft_max-{il}", "SOFT_MAX", kq, inp.mask)
        kqv = g.new(f"kqv-{il}", "MUL_MAT", "F32", (hv, T // ns, nh, ns), vp, kq)
        cur = g.new(f"kqv_out-{il}", "CONT", "F32", (hv * nh, T), g.permute(kqv, 0, 2, 1, 3))
    return _rot(g, cur, inp.v_rot) if inp.v_rot is not None else cur


def _norm(c: _Ctx, g: _Graph, x: _T, weight: str, il: int, pin: bool = True) -> _T:
    """``build_norm`` with RMS: the norm (named "norm", which ``graph_get_cb`` pins to the layer's
    device when the call passes the layer) times its weight."""
    cur = g.op(f"norm-{il}", "RMS_NORM", x)
    if pin:
        cur.backend = c.pin[il]
    return g.op(f"normed-{il}", "MUL", cur, _w(c, weight, il))


def _decoder(c: _Ctx, g: _Graph) -> _T:
    """The transformer of ``llama`` (src/models/llama.cpp), ``qwen3moe`` (src/models/qwen3moe.cpp)
    and ``gemma3`` (src/models/gemma3.cpp, sliding-window layers on their own cache and mask)."""
    if c.gdn is not None:
        return _qwen35(c, g, c.gdn)
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    gemma = hp.arch == "gemma3"
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    iswa = any(c.swa)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa) if iswa else full
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        cur = _attn(c, g, cur, il, swa if c.swa[il] else full, iswa)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        if gemma:
            cur = _norm(c, g, cur, f"blk.{il}.post_attention_norm.weight", il)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _norm(c, g, ffn_inp, f"blk.{il}.ffn_norm.weight", il)
        if c.moe is not None:
            cur = _moe_ffn(c, g, cur, il)
        else:
            gate = _proj(c, g, f"ffn_gate-{il}", f"blk.{il}.ffn_gate", cur, il)
            up = _proj(c, g, f"ffn_up-{il}", f"blk.{il}.ffn_up", cur, il)
            cur = g.new(f"ffn_glu-{il}", "GLU", "F32", gate.ne, gate, up)
            cur = _proj(c, g, f"ffn_out-{il}", f"blk.{il}.ffn_down", cur, il)
        if gemma:  # the post-FFN norm is built with il = -1 (gemma3.cpp:188): not pinned
            cur = _norm(c, g, cur, f"blk.{il}.post_ffw_norm.weight", il, pin=False)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    out_w = _weight(c, "output.weight", hp.n_layer) or _w(c, "token_embd.weight", hp.n_layer)
    logits = g.mul_mat("result_output", out_w, cur)
    logits.flags |= OUTPUT
    return logits


def _qk_norm(c: _Ctx, g: _Graph, x: _T, weight: str, il: int) -> _T:
    """The RMS norm of each Q and K head (qwen3moe.cpp:104-116, gemma3.cpp:121-133)."""
    return x if c.hp.arch == "llama" else _norm(c, g, x, weight, il)


def _moe_ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """``build_moe_ffn`` with softmax gating, normalized weights, separate gate and up experts
    (llama-graph.cpp:2044-2420), in its expansion order: the routing first (expanded early so that
    CUDA can fuse top-k), then the experts, then one view per used expert and the sum of those."""
    assert c.moe is not None
    T, E, n_used = cur.ne[1], cur.ne[0], c.moe
    p = f"blk.{il}."
    logits = g.mul_mat(f"ffn_moe_logits-{il}", _w(c, p + "ffn_gate_inp.weight", il), cur)
    n_exp = logits.ne[0]
    probs = g.op(f"ffn_moe_probs-{il}", "SOFT_MAX", logits)
    probs3 = g.reshape(probs, 1, n_exp, T)
    argsort = g.new(f"ffn_moe_argsort-{il}", "ARGSORT", "I32", (n_exp, T), probs)
    topk = g.view(argsort, (n_used, T), argsort.nb[:2])
    weights = g.new(f"ffn_moe_weights-{il}", "GET_ROWS", "F32", (1, n_used, T), probs3, topk)
    w2 = g.reshape(weights, n_used, T)
    wsum = g.new(f"ffn_moe_weights_sum-{il}", "SUM_ROWS", "F32", (1, T), w2)
    clamped = g.op(f"ffn_moe_weights_sum_clamped-{il}", "CLAMP", wsum)
    wnorm = g.op(f"ffn_moe_weights_norm-{il}", "DIV", w2, clamped)
    w3 = g.reshape(wnorm, 1, n_used, T)
    g.expand(w3)
    if n_exp in (288, 576) or (n_exp & (n_exp - 1) == 0 and n_exp <= 512):  # topk-moe.cu:403-412
        g.fused.append(_Fusion([probs, probs3, argsort, topk, weights, w2, wsum, clamped, wnorm, w3]))
    x = g.reshape(cur, E, 1, T)
    up_w, gate_w, down_w = (_w(c, p + f"ffn_{r}_exps.weight", il) for r in ("up", "gate", "down"))
    up = g.new(f"ffn_moe_up-{il}", "MUL_MAT_ID", "F32", (up_w.ne[1], n_used, T), up_w, x, topk)
    gate = g.new(f"ffn_moe_gate-{il}", "MUL_MAT_ID", "F32", (gate_w.ne[1], n_used, T), gate_w, x, topk)
    act = g.new(f"ffn_moe_swiglu-{il}", "GLU", "F32", gate.ne, gate, up)
    experts = g.new(f"ffn_moe_down-{il}", "MUL_MAT_ID", "F32", (down_w.ne[1], n_used, T), down_w, act, topk)
    weighted = g.op(f"ffn_moe_weighted-{il}", "MUL", experts, w3)
    g.expand(weighted)
    views = [g.view(weighted, (E, T), (weighted.nb[0], weighted.nb[2])) for _ in range(n_used)]
    for v in views:
        g.expand(v)
    out = views[0]
    adds = []
    for v in views[1:]:
        out = g.op(f"ffn_moe_out-{il}", "ADD", out, v)
        g.expand(out)
        adds.append(out)
    if n_used == 1:
        out = g.new(f"ffn_moe_out-{il}", "CONT", "F32", (E, T), out)
    elif n_used <= _MOE_REDUCTION_MAX:
        g.fused.append(_Fusion([weighted, *views, *adds], keep=[experts, w3]))
    return out


def _w(c: _Ctx, name: str, il: int) -> _T:
    """A weight the graph needs; llama.cpp refuses to load a model without it (``create_tensor``)."""
    t = _weight(c, name, il)
    if t is None:
        raise ValidationError(c.path, None, f"tensor {name} is missing (llama.cpp refuses to load the model)")
    return t


def _proj(c: _Ctx, g: _Graph, name: str, prefix: str, x: _T, il: int) -> _T:
    """``build_lora_mm`` plus the optional bias (llama-graph.cpp)."""
    cur = g.mul_mat(name, _w(c, prefix + ".weight", il), x)
    b = _weight(c, prefix + ".bias", il)
    return g.op(name, "ADD", cur, b) if b is not None else cur


# -- qwen35: gated attention and Gated DeltaNet layers (src/models/qwen35.cpp) ------------------------


@dataclass(frozen=True, slots=True)
class _Gdn:
    """The Gated DeltaNet dimensions (qwen35.cpp:54-61, :356-362)."""

    d_conv: int  # ssm.conv_kernel
    head_k: int  # ssm.state_size
    n_k_heads: int  # ssm.group_count
    n_v_heads: int  # ssm.time_step_rank
    head_v: int  # ssm.inner_size / n_v_heads


def _gdn_dims(model: GGUFModel) -> _Gdn | str:
    """The Gated DeltaNet dimensions, or why the file lacks them."""
    arch = model.architecture or ""
    md = model.metadata
    keys = ("ssm.conv_kernel", "ssm.inner_size", "ssm.state_size", "ssm.group_count", "ssm.time_step_rank")
    vals = [md.get_int(f"{arch}.{k}") or 0 for k in keys]
    missing = next((k for k, v in zip(keys, vals, strict=True) if v <= 0), None)
    if missing:
        return f"the graph needs a positive {arch}.{missing}"
    d_conv, d_inner, d_state, n_group, dt_rank = vals
    if d_conv < 2:
        return f"the graph needs {arch}.ssm.conv_kernel >= 2 (a cached convolution column)"
    if d_inner != d_state * dt_rank or dt_rank % n_group:  # delta-net-base.cpp:388-390
        return (
            f"the graph needs {arch}.ssm.inner_size = ssm.state_size x ssm.time_step_rank, "
            "and ssm.time_step_rank a multiple of ssm.group_count"
        )
    return _Gdn(d_conv, d_state, n_group, dt_rank, d_state)


def _recurrent_layers(model: GGUFModel, n_layer: int) -> list[bool] | str:
    """The Gated DeltaNet layers (qwen35.cpp:16-23): the recurrent_layers array, else every layer
    but each ``full_attention_interval``-th (4 by default)."""
    md = model.metadata
    if "qwen35.attention.recurrent_layers" in md:
        return [k.is_recurrent for k in layer_kinds(model)][:n_layer]
    interval = md.get_int("qwen35.full_attention_interval")
    interval = 4 if interval is None else interval
    if interval <= 0:
        return "the graph needs a positive qwen35.full_attention_interval"
    return [(i + 1) % interval != 0 for i in range(n_layer)]


def _rs(c: _Ctx, g: _Graph, cache: _T, s_copy: _T, size: int) -> _T:
    """``build_rs`` (llama-graph.cpp:3587-3627) over the full memory: the in-place clear of state 0,
    the gather of every state, the view of the micro-batch's and the copy of the (empty) rest."""
    n_seqs = c.sp.n_seq_max
    states = g.reshape(cache, size, cache.ne[1])
    zero = g.view(states, (size,), None)
    g.expand(g.view(zero, zero.ne, zero.nb, "SCALE"))  # ggml_scale_inplace: the cache itself
    every = g.new(f"{cache.name}_rows", "GET_ROWS", "F32", (size, s_copy.ne[0]), states, s_copy)
    out = g.view(every, (size, n_seqs), every.nb[:2])
    g.expand(out)
    extra = g.view(every, (size, s_copy.ne[0] - n_seqs), every.nb[:2])
    dst = g.view(cache, extra.ne, cache.nb[:2])
    cpy = g.view(dst, dst.ne, dst.nb, "CPY")
    cpy.src = [extra, dst]
    g.expand(cpy)
    return out


def _copy_into(g: _Graph, src: _T, cache: _T, rows: int) -> None:
    """``ggml_cpy`` of ``src`` into the first ``rows`` rows of a recurrent cache, expanded."""
    dst = g.view(cache, (cache.ne[0], rows), cache.nb[:2])
    cpy = g.view(dst, dst.ne, dst.nb, "CPY")
    cpy.src = [src, dst]
    g.expand(cpy)


def _gated_delta_net(c: _Ctx, g: _Graph, x: _T, il: int, s_copy: _T, d: _Gdn) -> _T:
    """``build_layer_attn_linear`` (qwen35.cpp:349-482): the joint QKV and gate projections, the
    convolution over the cached last ``d_conv - 1`` columns (``build_conv_state``,
    delta-net-base.cpp:449-525), the fused ``GATED_DELTA_NET`` node (llama-context.cpp:235 keeps
    fused_gdn_ar/_ch on; delta-net-base.cpp:373-423) whose output rows carry the new state, the
    state write-back (:527-550) and the gated RMS norm."""
    hp, T = c.hp, c.n_tokens
    ns = c.sp.n_seq_max
    nst = T // ns
    p = f"blk.{il}."
    buft = c.cache_buft[il]
    cache_r = g.leaf(f"cache_r_l{il}", "F32", (hp.n_embd_r, ns), buft=buft)
    cache_s = g.leaf(f"cache_s_l{il}", "F32", (hp.n_embd_s, ns), buft=buft)
    qkv = g.mul_mat(f"qkv_mixed-{il}", _w(c, p + "attn_qkv.weight", il), x)
    channels = qkv.ne[0]
    qkv = g.reshape(qkv, channels, nst, ns)
    z = g.mul_mat(f"z-{il}", _w(c, p + "attn_gate.weight", il), x)
    beta = g.reshape(g.mul_mat(f"beta-{il}", _w(c, p + "ssm_beta.weight", il), x), 1, d.n_v_heads, nst, ns)
    beta = g.op(f"beta_sigmoid-{il}", "UNARY", beta)
    alpha = g.reshape(g.mul_mat(f"alpha-{il}", _w(c, p + "ssm_alpha.weight", il), x), d.n_v_heads, nst, ns)
    alpha = g.op(f"alpha_biased-{il}", "ADD", alpha, _w(c, p + "ssm_dt.bias", il))
    alpha = g.op(f"a_softplus-{il}", "UNARY", alpha)
    gate = g.op(f"gate-{il}", "MUL", alpha, _w(c, p + "ssm_a", il))
    gate = g.reshape(gate, 1, d.n_v_heads, nst, ns)
    # build_conv_state: the cached columns, then the micro-batch's, the last ones written back
    conv = g.reshape(_rs(c, g, cache_r, s_copy, hp.n_embd_r), d.d_conv - 1, channels, ns)
    conv_in = g.new(
        f"conv_input-{il}", "CONCAT", "F32", (d.d_conv - 1 + nst, channels, ns), conv, g.permute(qkv, 1, 0, 2, 3)
    )
    last = g.view(conv_in, (d.d_conv - 1, channels, ns), conv_in.nb[:3])
    _copy_into(g, last, cache_r, ns)
    state = _rs(c, g, cache_s, s_copy, hp.n_embd_s)
    state = g.reshape(state, d.head_v, d.head_v, d.n_v_heads, ns)
    out = g.new(
        f"conv_output_raw-{il}", "SSM_CONV", "F32", (channels, nst, ns), conv_in, _w(c, p + "ssm_conv1d.weight", il)
    )
    out = g.op(f"conv_output_silu-{il}", "UNARY", out)
    row = out.nb[1]
    heads = []
    for n_heads in (d.n_k_heads, d.n_k_heads):  # build_gdn_l2_norm (models.h:14): RMS_NORM, SCALE
        qk = g.view(out, (d.head_k, n_heads, nst, ns), (4, 4 * d.head_k, row, row * nst))
        heads.append(g.op(f"qk_conv-{il}", "SCALE", g.new(f"qk_norm-{il}", "RMS_NORM", "F32", qk.ne, qk)))
    v = g.view(out, (d.head_v, d.n_v_heads, nst, ns), (4, 4 * d.head_v, row, row * nst))
    S, H = d.head_v, d.n_v_heads
    gdn = g.new(f"gdn-{il}", "GATED_DELTA_NET", "F32", (S * H, T + S * ns), heads[0], heads[1], v, gate, beta, state)
    new_state = g.view(gdn, (S, S, H, ns), (4, 4 * S, 4 * S * S))
    _copy_into(g, new_state, cache_s, ns)
    o = g.view(gdn, (S, H, nst, ns), (4, 4 * S, 4 * S * H))
    o = _norm(c, g, o, p + "ssm_norm.weight", il)  # build_norm_gated (qwen35.cpp:257-266)
    o = g.op(f"attn_gated-{il}", "MUL", o, g.op(f"z_silu-{il}", "UNARY", g.reshape(z, S, H, nst, ns)))
    o = g.mul_mat(f"linear_attn_out-{il}", _w(c, p + "ssm_out.weight", il), g.reshape(o, S * H, nst, ns))
    return g.reshape(o, hp.n_embd, T)


def _gated_attn(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """``build_layer_attn`` (qwen35.cpp:268-347): one projection yields Q and its gate, interleaved
    per head; Q and K are normed and roped (M-RoPE), the attention output is multiplied by the
    gate's sigmoid before the output projection."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd = hp.n_head[il], hp.n_head_kv[il], hp.head_k
    p = f"blk.{il}."
    pos = c.pos
    assert pos is not None
    qg = g.mul_mat(f"Qcur_full-{il}", _w(c, p + "attn_q.weight", il), x)
    q = g.view(qg, (hd, nh, T), (4, 8 * hd, 8 * hd * nh))
    q = _norm(c, g, q, p + "attn_q_norm.weight", il)
    k = g.mul_mat(f"Kcur-{il}", _w(c, p + "attn_k.weight", il), x)
    k = _norm(c, g, g.reshape(k, hd, nkv, T), p + "attn_k_norm.weight", il)
    gate = g.new(f"gate-{il}", "CONT", "F32", (hd * nh, T), g.view(qg, (hd, nh, T), (4, 8 * hd, 8 * hd * nh)))
    v = g.reshape(g.mul_mat(f"Vcur-{il}", _w(c, p + "attn_v.weight", il), x), hp.head_v, nkv, T)
    q = g.new(q.name, "ROPE", "F32", q.ne, q, pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, pos)
    cur = _attn_kv(c, g, q, k, v, il, inp, False)
    cur = g.op(f"attn_gated-{il}", "MUL", cur, g.op(f"gate_sigmoid-{il}", "UNARY", gate))
    return g.mul_mat(f"attn_output-{il}", _w(c, p + "attn_output.weight", il), cur)


def _qwen35(c: _Ctx, g: _Graph, d: _Gdn) -> _T:
    """The hybrid of src/models/qwen35.cpp: attention or Gated DeltaNet, the post-attention norm,
    a dense FFN; the final norm (``h_nextn``) stays an output before the rows are picked."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    x = _inp_embd(c, g)
    s_copy = g.input("rs_s_copy", "I32", sp.n_seq_max)  # get_n_rs of the full memory (llama-memory-recurrent.cpp:1336)
    full = _attn_inp(c, g, sp.n_kv)
    # build_inp_pos (llama-graph.cpp:2540): n_pos_per_embd = 4 M-RoPE positions per token
    c.pos = g.input("inp_pos", "I32", T * 4)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        g.expand(cur)
        if c.recurrent[il]:
            cur = _gated_delta_net(c, g, cur, il, s_copy, d)
        else:
            cur = _gated_attn(c, g, cur, il, full)
        res = g.op(f"attn_residual-{il}", "ADD", cur, x)
        cur = _norm(c, g, res, f"blk.{il}.post_attention_norm.weight", il)
        gate = _proj(c, g, f"ffn_gate-{il}", f"blk.{il}.ffn_gate", cur, il)
        up = _proj(c, g, f"ffn_up-{il}", f"blk.{il}.ffn_up", cur, il)
        cur = _proj(
            c, g, f"ffn_out-{il}", f"blk.{il}.ffn_down", g.new(f"ffn_glu-{il}", "GLU", "F32", gate.ne, gate, up), il
        )
        x = g.op(f"l_out-{il}", "ADD", cur, res)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("h_nextn", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT  # llm_graph_result::set_outputs (llama-graph.cpp:1406)
    cur = g.new("result_norm", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
    cur.flags |= OUTPUT
    out_w = _weight(c, "output.weight", hp.n_layer) or _w(c, "token_embd.weight", hp.n_layer)
    logits = g.mul_mat("result_output", out_w, cur)
    logits.flags |= OUTPUT
    return logits


# -- ggml_backend_sched (ggml-backend.cpp:1061-1745) ---------------------------------------------------


class _Sched:
    """The backends (GPUs in order, the CPU last) and the split graph they run."""

    def __init__(self, gpus: list[str], host: str, n_copies: int, op_offload: bool = True) -> None:
        self.names = [*gpus, CPU]
        self.bufts = [*gpus, host]
        self.cpu = len(gpus)
        self.n_copies = n_copies
        self.op_offload = op_offload

    def supports_buft(self, b: int, buft: str) -> bool:
        if b == self.cpu:  # the CPU backend takes any host buffer (ggml-cpu.cpp supports_buft)
            return buft in _HOST_BUFTS or buft.endswith("_Host")
        return buft == self.bufts[b]  # CUDA: only its own device buffers (ggml-cuda.cu:5733)

    def from_buffer(self, t: _T) -> int:
        buft = t.view_src.buft if t.view_src is not None else t.buft
        if buft is None:
            return -1
        return next(b for b in range(len(self.names)) if self.supports_buft(b, buft))

    def offload(self, t: _T) -> bool:  # ggml_backend_cuda_device_offload_op (ggml-cuda.cu:5739-5758)
        if t.op == "GET_ROWS":
            batch = 0
        elif t.op == "MUL_MAT":
            batch = t.ne[1]
        elif t.op in ("MUL_MAT_ID", "ROPE"):
            batch = t.ne[2]
        else:
            batch = t.ne[1] * t.ne[2] * t.ne[3]
        return batch >= OP_OFFLOAD_MIN_BATCH

    def from_cur(self, t: _T) -> int:  # ggml_backend_sched_backend_id_from_cur (:1061)
        b = self.from_buffer(t)
        if b != -1:
            return b
        if t.flags & INPUT:
            return self.cpu
        if t.op in ("ROPE", "FLASH_ATTN_EXT"):
            return -1
        for s in t.src:
            if s.weight:
                sb = self.from_buffer(s)
                if self.op_offload and sb == self.cpu and self.cpu > 0 and self.offload(t):
                    return 0
                return sb
        return -1

    def supported(self, t: _T, b: int) -> bool:  # ggml_backend_sched_buffer_supported (:1177)
        buft = t.view_src.buft if t.view_src is not None else t.buft
        if buft is None:
            bid = t.backend
            if bid == -1 and t.view_src is not None:
                bid = t.view_src.backend
            if bid == -1:
                return False
            buft = self.bufts[bid]
        return self.supports_buft(b, buft)

    def assign(self, g: _Graph) -> None:
        for leaf in g.leafs:
            if leaf.backend == -1:
                leaf.backend = self.from_cur(leaf)
        for node in g.nodes:
            if node.backend == -1:
                node.backend = self.from_cur(node)
        ops = [n for n in g.nodes if n.op not in _VIEW_OPS]
        for seq, gpu_only in ((ops, True), (ops[::-1], True), (ops, False), (ops[::-1], False)):
            cur = -1
            for node in seq:
                if node.backend != -1:
                    cur = -1 if gpu_only and node.backend == self.cpu else node.backend
                elif cur != -1:
                    node.backend = cur
        for node in ops:  # pass 3: the backend with the most supported inputs (distinct bufts: no upgrades)
            if node.backend == -1:
                best = -1
                for b in range(len(self.names)):
                    n = sum(
                        1
                        for s in node.src
                        if (s.backend != -1 or (s.view_src is not None and s.view_src.backend != -1))
                        and self.supported(s, b)
                    )
                    if n > best:
                        best, node.backend = n, b
        for node in g.nodes:  # pass 4
            if node.view_src is not None and node.backend == -1:
                node.backend = node.view_src.backend
            for s in node.src:
                if s.backend == -1:
                    s.backend = s.view_src.backend if s.view_src is not None else node.backend
            if node.backend == -1:
                node.backend = 0

    def keep_alive(self, g: _Graph, splits: list[tuple[int, list[_T], list[_T]]]) -> dict[int, list[_T]]:
        """``ggml_backend_cuda_graph_optimize``'s allocation dependencies (ggml-cuda.cu:4604-4660):
        for each fusable group inside one CUDA split, the tensors kept alive until a node."""
        where = {id(n): (i, j) for i, (_, _, members) in enumerate(splits) for j, n in enumerate(members)}
        deps: dict[int, list[_T]] = {}
        for f in g.fused:
            first, last = where[id(f.members[0])], where[id(f.members[-1])]
            b, _, members = splits[first[0]]
            if b == self.cpu or first[0] != last[0] or last[1] - first[1] != len(f.members) - 1:
                continue
            if f.keep is None:  # top-k routing: every member and its sources until the next node
                if last[1] + 1 >= len(members):
                    continue
                until, keep = members[last[1] + 1], [t for m in f.members for t in (m, *m.src)]
            else:  # the weighted sum of the experts: until its last add
                until, keep = f.members[-1], f.keep
            kept = deps.setdefault(id(until), [])
            kept += [t for t in dict.fromkeys(keep) if t not in kept]
        return deps

    def split(self, g: _Graph) -> tuple[list[_T], list[_T], list[int]]:
        """Pass 5 and the graph copy (:1386-1740): the nodes and leafs ggml-alloc reserves, and for each
        node the position of the layer whose nodes it comes with (a split's inputs come with its first
        node; the nodes after the last layer with the last layer)."""
        splits: list[tuple[int, list[_T], list[_T]]] = []  # (backend, inputs, nodes)
        split_at: list[int] = []
        copies: dict[tuple[int, int], list[_T]] = {}
        first = next((n.backend for n in g.nodes if n.op not in _VIEW_OPS), 0)
        cur = first
        split: tuple[int, list[_T], list[_T]] = (cur, [], [])
        splits.append(split)
        split_at.append(GLOBAL)
        at = GLOBAL
        for node in g.nodes:
            at = max(at, node.pos)
            if node.op in _VIEW_OPS:
                split[2].append(node)
                continue
            need_new = False
            if node.backend == cur and split[1]:
                need_new = any(s.weight and s.backend != cur and not self.supported(s, cur) for s in node.src)
            if node.backend != cur or need_new:
                cur = node.backend
                split = (cur, [], [])
                splits.append(split)
                split_at.append(at)
            for j, s in enumerate(node.src):
                if s.backend != cur and not self.supported(s, cur):
                    key = (id(s), cur)
                    if key not in copies:
                        made = []
                        for k in range(self.n_copies):
                            cp = _T(f"{self.names[cur]}#{s.name}", "NONE", s.type, s.ne, s.nb)
                            # a layer's copy belongs to the layer its split begins with; a shared one stays shared
                            cp.backend, cp.pos = cur, GLOBAL if s.pos == GLOBAL else split_at[-1]
                            cp.seq = ("copy", s.pos - cp.pos, s.seq, cur, k)
                            if self.n_copies > 1:
                                cp.flags = INPUT | OUTPUT
                            made.append(cp)
                        copies[key] = made
                        split[1].append(s)
                    node.src[j] = copies[key][0]
            split[2].append(node)
        deps = self.keep_alive(g, splits)
        nodes: list[_T] = []
        node_at: list[int] = []
        for (b, inputs, members), sat in zip(splits, split_at, strict=True):
            for s in inputs:
                dep = _T(s.name, "NONE", s.type, s.ne, s.nb, [s], view_src=s)
                dep.backend, dep.pos = s.backend, GLOBAL if s.pos == GLOBAL else sat
                dep.seq = ("input", s.pos - dep.pos, s.seq, b)
                nodes += [dep, copies[(id(s), b)][0]]
                node_at += [sat, sat]
            for node in members:
                sat = max(sat, node.pos)
                nodes.append(node)
                node_at.append(sat)
                keep = deps.get(id(node), [])
                for k in range(0, len(keep), GGML_MAX_SRC):  # ggml-backend.cpp:1672-1690
                    dep = _T(node.name, "NONE", "F32", (1, 1, 1, 1), (4, 4, 4, 4), keep[k : k + GGML_MAX_SRC])
                    dep.view_src, dep.backend = keep[k].view_src or keep[k], b
                    dep.pos, dep.seq = node.pos, ("keep", node.seq, k)
                    nodes.append(dep)
                    node_at.append(sat)
        leafs: list[_T] = []
        if self.n_copies > 1:
            for leaf in g.leafs:
                if leaf.flags & INPUT:
                    leaf.flags |= OUTPUT
                    extra = [_T(leaf.name, "NONE", leaf.type, leaf.ne, leaf.nb) for _ in range(self.n_copies - 1)]
                    for e in extra:
                        e.flags, e.backend = INPUT | OUTPUT, leaf.backend
                    leafs += [leaf, *extra]
            for b, inputs, _ in splits:
                for s in inputs:
                    leafs += copies[(id(s), b)]
        return nodes, leafs + g.leafs, node_at


# -- ggml_gallocr (ggml-alloc.c:589-822) ---------------------------------------------------------------


def _alloc_size(buft: str, t: _T) -> int:
    """``ggml_backend_buft_get_alloc_size``: CUDA adds the flash-attention f16 conversion of a
    quantized K/V (fattn.cu:722, fattn-common.cuh:53) and pads quantized rows (ggml-cuda.cu:903)."""
    size = t.nbytes
    if not buft.startswith("CUDA") or buft.endswith("_Host"):
        return size
    if t.op == "FLASH_ATTN_EXT":
        q, k, v = t.src[0], t.src[1], t.src[2]
        tiles = q.ne[1] > 2  # MMA/tile kernels for batches; the vec kernel converts only what it lacks
        if tiles and k.type != "F16":
            size = -(-size // 128) * 128 + 2 * math.prod(k.ne)
        if tiles and v.type != "F16":
            size = -(-size // 128) * 128 + 2 * math.prod(v.ne)
    tt = _type(t.type)
    if tt.block_size > 1 and t.ne[0] % MATRIX_ROW_PADDING:
        size += (MATRIX_ROW_PADDING - t.ne[0] % MATRIX_ROW_PADDING) // tt.block_size * tt.type_size
    return size


def _same_layout(a: _T, b: _T) -> bool:
    return a.type == b.type and a.ne == b.ne and a.nb == b.nb


def _reserve(
    nodes: list[_T],
    leafs: list[_T],
    bufts: list[str],
    node_at: list[int] | None = None,
    marks: frozenset[int] = frozenset(),
) -> tuple[dict[str, int], dict[int, object]]:
    """``ggml_gallocr_alloc_graph_impl`` with one dynamic allocator per buffer type: each buffer
    type's high-water mark, and the allocator's state (:func:`_state`) where the nodes of the layer
    at each position of ``marks`` begin (``node_at``: the position each node comes with)."""
    allocs = {
        b: DynAllocator(CUDA_ALIGN if b.startswith("CUDA") and not b.endswith("_Host") else HOST_ALIGN) for b in bufts
    }
    where: dict[int, tuple[str, int]] = {}  # tensor -> (buft, offset)
    own: set[int] = set()
    children: dict[int, int] = {}
    views: dict[int, int] = {}
    sizes: dict[int, int] = {}

    def size_of(buft: str, t: _T) -> int:
        n = sizes.get(id(t))
        if n is None:
            n = sizes[id(t)] = _alloc_size(buft, t)
        return n

    def allocate(t: _T, bid: int) -> None:
        if t.buft is not None or id(t) in own or t.view_src is not None:
            return
        own.add(id(t))
        if t.op in _INPLACE:
            for p in t.src:
                if id(p) not in own or p.flags & OUTPUT or (p.view_src is not None and p.view_src.flags & OUTPUT):
                    continue
                if not _same_layout(t, p) or children.get(id(p), 0) != 1 or views.get(id(p), 0) != 0:
                    continue
                owner = p
                if p.view_src is not None:
                    v = p.view_src
                    if not (views.get(id(v), 0) == 1 and children.get(id(v), 0) == 0):
                        continue
                    owner = v
                    own.discard(id(v))
                own.discard(id(p))
                buft, off = where[id(owner)]
                where[id(t)] = (buft, off)
                a = allocs[buft]
                ps, ns = a.align(size_of(buft, owner)), a.align(size_of(buft, t))
                if ps > ns:
                    a.free(off + ns, ps - ns)
                return
        buft = bufts[bid]
        where[id(t)] = (buft, allocs[buft].alloc(size_of(buft, t)))

    def free(t: _T) -> None:
        if t.flags & OUTPUT:
            return
        buft, off = where[id(t)]
        allocs[buft].free(off, size_of(buft, t))
        own.discard(id(t))

    for leaf in leafs:
        allocate(leaf, leaf.backend)
    for node in nodes:
        if node.view_src is not None and node.op != "NONE":
            views[id(node.view_src)] = views.get(id(node.view_src), 0) + 1
        if node.flags & INPUT:
            allocate(node, node.backend)
        for s in node.src:
            children[id(s)] = children.get(id(s), 0) + 1
            if s.flags & INPUT:
                allocate(s, node.backend)
    states: dict[int, object] = {}
    todo = sorted(marks, reverse=True)
    tensors: dict[int, _T] = {}
    if todo:
        for t in (*leafs, *nodes):
            tensors[id(t)] = t
            for s in t.src:
                tensors[id(s)] = s
        pre = frozenset(own)  # allocated before the first node: leafs and inputs
        states[PREALLOCATED] = frozenset(tensors[tid].pos for tid in pre)
    for i, node in enumerate(nodes):
        while todo and node_at is not None and node_at[i] >= todo[-1]:
            mark = todo.pop()
            states[mark] = _state(mark, allocs, tensors, where, own, children, views, pre)
        for p in node.src:
            allocate(p, node.backend)
        allocate(node, node.backend)
        for p in node.src:
            children[id(p)] -= 1
            if children[id(p)] == 0 and views.get(id(p), 0) == 0:
                if p.view_src is not None:
                    v = p.view_src
                    views[id(v)] -= 1
                    if views[id(v)] == 0 and children.get(id(v), 0) == 0 and id(v) in own:
                        free(v)
                elif id(p) in own:
                    free(p)
    return {b: a.max_size for b, a in allocs.items()}, states


def _state(
    mark: int,
    allocs: dict[str, DynAllocator],
    tensors: dict[int, _T],
    where: dict[int, tuple[str, int]],
    own: set[int],
    children: dict[int, int],
    views: dict[int, int],
    pre: frozenset[int],
) -> object:
    """What the replay of the nodes from the layer at position ``mark`` on depends on: every
    allocator's free blocks, and each tensor allocated or still awaited (its place, and its pending
    consumers and views), a layer's tensors keyed by their layer's distance to ``mark`` and their
    place in it, the others (inputs, embeddings, shared copies) by identity, without their pending
    consumers (which only differ by the uses of the layers a plan leaves out, all before a last
    use in the layers it keeps), and those allocated before the first node (in a place no layer
    changes) by identity. Tensors of later layers are left out unless already allocated."""
    free = tuple((b, tuple(tuple(blk) for blk in a.blocks)) for b, a in allocs.items())
    live: dict[object, object] = {}
    for tid, t in tensors.items():
        if t.buft is not None or (t.view_src is not None and t.view_src.buft is not None):
            continue  # weights and caches: never allocated here
        mine = tid in own
        if tid in pre:
            live[("pre", tid)] = where[tid] if mine else None
            continue
        if t.pos == GLOBAL:
            if mine or children.get(tid, 0) or views.get(tid, 0):
                live[("global", tid)] = (where[tid] if mine else None, bool(children.get(tid, 0) or views.get(tid, 0)))
            continue
        if t.pos >= mark and not mine:
            continue
        n_children, n_views = children.get(tid, 0), views.get(tid, 0)
        if mine or n_children or n_views:
            live[(t.pos - mark, t.seq)] = (where[tid] if mine else None, n_children, n_views)
    return free, live


# -- the reservation -----------------------------------------------------------------------------------


# the weights each layer's graph multiplies by (src/models/llama.cpp, src/models/qwen3moe.cpp)
_ATTN_WEIGHTS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm")
_LAYER_WEIGHTS = {
    "llama": (*_ATTN_WEIGHTS, "ffn_gate", "ffn_up", "ffn_down"),
    "gemma3": (*_ATTN_WEIGHTS, "attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm")
    + ("ffn_gate", "ffn_up", "ffn_down"),
    "qwen3moe": (*_ATTN_WEIGHTS, "attn_q_norm", "attn_k_norm", "ffn_gate_inp")
    + ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"),
}
LLAMA_MAX_EXPERTS = 1024  # llama-hparams.h:12


def simulated(model: GGUFModel) -> str | None:
    """Why this model's graph is not simulated (None when it is): another architecture, or a file
    without the tensors or the expert counts the graph needs (which llama.cpp would not load; the
    phase model still sizes it)."""
    arch = model.architecture or ""
    if arch not in SIMULATED_ARCHS:
        return f"the {arch!r} graph is not simulated (simulated: {', '.join(sorted(SIMULATED_ARCHS))})"
    return unbuildable(model) or _unsound(model)


def _unsound(model: GGUFModel) -> str | None:
    """Head counts and sizes the graph cannot be laid out with (llama.cpp asserts on them while it
    builds the graph): every attention layer needs KV heads that divide its query heads."""
    hp = hparams(model)
    if min(hp.n_embd, hp.head_k, hp.head_v) <= 0:
        return "the graph needs positive embedding and head sizes"
    for il, (nh, nkv) in enumerate(zip(hp.n_head, hp.n_head_kv, strict=False)):
        if model.architecture == "qwen35" and nkv == 0:  # a recurrent layer
            continue
        if nkv <= 0 or nh <= 0 or nh % nkv:
            return f"layer {il} has {nh} query heads for {nkv} KV heads, which the graph cannot lay out"
    return None


def unbuildable(model: GGUFModel) -> str | None:
    """Why :func:`simulate` cannot build this model's graph (None when it can)."""
    arch = model.architecture or ""
    if arch not in BUILT_ARCHS:
        return f"the {arch!r} graph is not built (built: {', '.join(sorted(BUILT_ARCHS))})"
    odd_type = next((t for t in model.tensors if not t.type.known), None)
    if odd_type is not None:
        return f"tensor {odd_type.name} has the ggml type {odd_type.type.name}, which this llama.cpp does not know"
    md = model.metadata
    cap = f"{arch}.final_logit_softcapping"  # gemma3.cpp:15, :203-207: SCALE, TANH, SCALE on the logits
    if arch == "gemma3" and cap in md and not (isinstance(md[cap], (int, float)) and md[cap] == 0):
        return "gemma3 graphs with final logit softcapping are not simulated"
    n_expert = md.get_int(f"{arch}.expert_count") or 0
    if arch == "llama" and n_expert > 0:
        return "mixture-of-experts llama graphs are not simulated"
    if arch == "qwen3moe":
        n_used = md.get_int(f"{arch}.expert_used_count") or 0
        if not 0 < n_used <= n_expert <= LLAMA_MAX_EXPERTS:  # qwen3moe.cpp:41-46, llama-model.cpp:1363
            return f"the graph needs 0 < expert_used_count <= expert_count <= {LLAMA_MAX_EXPERTS}"
    if arch == "qwen35":
        return _qwen35_unbuildable(model)
    tensors = {t.name: t for t in model.tensors}
    n_layer = md.get_int(f"{arch}.block_count") or 0
    needed = ["token_embd.weight", "output_norm.weight"]
    needed += [f"blk.{il}.{role}.weight" for il in range(min(n_layer, 513)) for role in _LAYER_WEIGHTS[arch]]
    missing = next((n for n in needed if n not in tensors), None)
    if missing:
        return f"the graph needs tensor {missing}, which the file lacks"
    if arch == "qwen3moe":
        odd = next((n for n in needed if "exps" in n and len(tensors[n].shape) != 3), None)
        if odd:
            return f"the graph needs a three-dimensional tensor {odd}"
    return None


def _qwen35_unbuildable(model: GGUFModel) -> str | None:
    """Why the qwen35 graph cannot be built: no MTP block, per-tensor scales or embedding projection
    (graph parts not simulated), Gated DeltaNet dimensions, every tensor the graph reads in the shape
    qwen35.cpp:33-135 creates it (llama.cpp refuses the file otherwise)."""
    md = model.metadata
    if (md.get_int("qwen35.nextn_predict_layers") or 0) > 0:
        return "qwen35 graphs with a multi-token-prediction block are not simulated"
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    extra = next((n for n in tensors if n.endswith(".scale") or n.startswith("cls.")), None)
    if extra:
        return f"qwen35 graphs with tensor {extra} are not simulated"
    d = _gdn_dims(model)
    if isinstance(d, str):
        return d
    hp = hparams(model)
    E, hd, n_ff = hp.n_embd, hp.head_k, hp.n_ff
    if hd <= 0 or hd != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length > 0 (qwen35.cpp:141)"
    inner, conv = d.head_v * d.n_v_heads, 2 * d.head_k * d.n_k_heads + d.head_v * d.n_v_heads
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,)}  # token_embd: columns only (below)
    recurrent = _recurrent_layers(model, hp.n_layer)
    if isinstance(recurrent, str):
        return recurrent
    for il, is_recurrent in enumerate(recurrent):
        nh, nkv = hp.n_head[il], hp.n_head_kv[il]
        w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,), "post_attention_norm.weight": (E,)}
        w |= {"ffn_gate.weight": (E, n_ff), "ffn_up.weight": (E, n_ff), "ffn_down.weight": (n_ff, E)}
        if is_recurrent:
            w |= {"attn_qkv.weight": (E, conv), "attn_gate.weight": (E, inner), "ssm_conv1d.weight": (d.d_conv, conv)}
            w |= {"ssm_dt.bias": (d.n_v_heads,), "ssm_a": (d.n_v_heads,), "ssm_norm.weight": (d.head_v,)}
            w |= {
                "ssm_beta.weight": (E, d.n_v_heads),
                "ssm_alpha.weight": (E, d.n_v_heads),
                "ssm_out.weight": (inner, E),
            }
        elif nh <= 0 or nkv <= 0 or nh % nkv:
            return f"the graph needs attention heads in layer {il} (head_count a multiple of head_count_kv)"
        else:
            w |= {"attn_q.weight": (E, 2 * hd * nh), "attn_k.weight": (E, hd * nkv), "attn_v.weight": (E, hd * nkv)}
            w |= {"attn_output.weight": (hd * nh, E), "attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,)}
        shapes |= {f"blk.{il}.{n}": shape for n, shape in w.items()}
    if len(tensors.get("token_embd.weight", ())) != 2 or tensors["token_embd.weight"][0] != E:
        return f"the graph needs a two-dimensional tensor token_embd.weight of {E} columns"
    for name, shape in shapes.items():
        if name not in tensors:
            return f"the graph needs tensor {name}, which the file lacks"
        if tensors[name] != shape:
            return f"the graph needs tensor {name} of shape {list(shape)}, not {list(tensors[name])}"
    return None


@dataclass(slots=True)
class _Loaded:
    """What every graph of one model on one placement shares: the weights as graph tensors (with the
    buffer type of each copy), the buffer type of each layer's weights, the per-layer weight part of
    the layer signatures, the layer kinds. Built once per (model, devices, offload options)."""

    hp: Hparams
    pl: Placement
    weights: dict[tuple[str, str | None], _T]
    by_name: dict[str, list[tuple[str, _T]]]
    layer_buft: list[str]
    layer_weights: list[tuple[object, ...]]
    moe: int | None
    swa: list[bool]
    recurrent: list[bool]
    gdn: _Gdn | None


def _load(model: GGUFModel, hp: Hparams, pl: Placement) -> _Loaded:
    mapped_host = {CPU, "CPU_Mapped", "CPU_REPACK"}
    weights: dict[tuple[str, str | None], _T] = {}
    by_name: dict[str, list[tuple[str, _T]]] = {}
    for info, buft in pl.tensors:
        shape = tuple(info.shape) or (1,)
        ne = _ne(*shape)
        t = _T(info.name, "NONE", info.type.name, ne, _strides(ne, info.type.name), buft=buft, weight=True)
        weights[(info.name, buft)] = t
        by_name.setdefault(info.name, []).append((buft, t))
    layer_buft = [d if d is not None else "CPU_Mapped" for d in pl.layer_device]
    for il, d in enumerate(pl.layer_device):
        if d is None:  # the host copy of a layer's weights: whatever host buffer holds them
            layer_buft[il] = next(
                (b for b, _ in by_name.get(f"blk.{il}.attn_norm.weight", []) if b in mapped_host), "CPU_Mapped"
            )
    per: dict[int, list[tuple[str, tuple[object, ...]]]] = {}
    for name, copies in by_name.items():
        if name.startswith("blk."):
            num, _, role = name[4:].partition(".")
            if num.isdigit():
                per.setdefault(int(num), []).append((role, tuple((b, t.type, t.ne) for b, t in copies)))
    layer_weights: list[tuple[object, ...]] = [tuple(sorted(per.get(il, []))) for il in range(hp.n_layer)]
    moe = model.metadata.get_int(f"{hp.arch}.expert_used_count") if hp.arch == "qwen3moe" else None
    loaded = _Loaded(hp, pl, weights, by_name, layer_buft, layer_weights, moe, swa_layers(model, hp.n_layer), [], None)
    if hp.arch == "qwen35":
        dims, recurrent = _gdn_dims(model), _recurrent_layers(model, hp.n_layer)
        if isinstance(dims, str) or isinstance(recurrent, str):
            raise ValidationError(model.path, None, str(dims if isinstance(dims, str) else recurrent))
        loaded.recurrent, loaded.gdn = recurrent, dims
    return loaded


def _context(model: GGUFModel, ld: _Loaded, sp: SimParams, n_tokens: int, n_outputs: int) -> _Ctx:
    hp, pl = ld.hp, ld.pl
    cache_buft = [CPU if sp.no_kv_offload or d is None else d for d in pl.layer_device]
    gpus = [d.name for d in pl.devices]
    full = pl.n_offloaded > hp.n_layer
    pin = [-1] * (hp.n_layer + 1)
    if n_tokens < OP_OFFLOAD_MIN_BATCH or full:  # graph_get_cb (llama-context.cpp:2638-2662)
        for il, d in enumerate(pl.layer_device):
            pin[il] = gpus.index(d) if d is not None else len(gpus)
    n_kv_swa = sp.n_kv_swa
    if n_kv_swa is None:  # llama-kv-cache-iswa.cpp:73: n_swa per sequence of a stream plus a micro-batch
        n_kv_swa = pad(min(sp.n_kv, hp.n_swa * (sp.n_seq_max if sp.n_streams == 1 else 1) + sp.n_ubatch))
    c = _Ctx(hp, sp, n_tokens, n_outputs, ld.weights, ld.by_name, ld.layer_buft, cache_buft, pin, model.path, ld.moe)
    c.swa, c.n_kv_swa, c.recurrent, c.gdn = ld.swa, n_kv_swa, ld.recurrent, ld.gdn
    return c


def _layer_signatures(c: _Ctx, ld: _Loaded) -> list[tuple[object, ...]]:
    """Per layer, everything its part of the graph is built from: its kind and heads, the buffers of
    its weights, cache and pinned norm, and the name, buffer, type and shape of each of its weights.
    Two layers with one signature make identical nodes, scheduled and split identically."""
    hp = c.hp
    return [
        (
            il == hp.n_layer - 1,
            hp.n_head[il],
            hp.n_head_kv[il],
            c.swa[il] if il < len(c.swa) else False,
            c.recurrent[il] if c.recurrent else False,
            c.layer_buft[il],
            c.cache_buft[il],
            c.pin[il],
            ld.layer_weights[il],
        )
        for il in range(hp.n_layer)
    ]


@dataclass(frozen=True, slots=True)
class _Plan:
    """The layers a shortened replay builds, and where it must find the allocator periodic: for each
    run of repeated blocks of layers it shortens, the positions (in ``layers``) of the first block it
    keeps after the left-out blocks, and of the blocks one and two periods before it."""

    layers: tuple[int, ...]
    checks: tuple[tuple[int, int, int, int], ...]  # (resume, one period before, two before, the run's start)


MAX_PERIOD = 8  # the longest block of layers looked for (qwen35: 4, gemma3: 6)


def _plan(sigs: list[tuple[object, ...]], warm: int) -> _Plan:
    """Each run of identical blocks of ``P`` layers (the smallest ``P`` that leaves the most layers
    out) is built as its first ``warm`` blocks, then the replay resumes after an even number of
    blocks left out (so that a replay periodic over one or two blocks resumes in the state it would
    have reached: :func:`simulate`); everything else is built as it is. ``warm`` >= 3, so that the
    states compared follow a block."""
    n = len(sigs)
    layers: list[int] = []
    checks: list[tuple[int, int, int, int]] = []
    i = 0
    while i < n:
        best: tuple[int, int, int] | None = None  # (P, blocks kept before, blocks left out)
        for period in range(1, MAX_PERIOD + 1):
            if i + period > n:
                break
            block = sigs[i : i + period]
            nb = 1
            while sigs[i + nb * period : i + (nb + 1) * period] == block:
                nb += 1
            # the replay resumes on a block, or on layers that begin as one (else a run's own
            # inputs would see their last use in the blocks left out)
            end = i + nb * period
            tail = 0 if end < n and sigs[end] == sigs[i] else 1
            kept = warm + (nb - warm - tail) % 2
            out = nb - kept - tail
            if out >= 2 and (best is None or out * period > best[2] * best[0]):
                best = (period, kept, out)
        if best is None:
            layers.append(i)
            i += 1
            continue
        period, kept, out = best
        start = len(layers)
        layers += range(i, i + kept * period)
        resume = len(layers)
        checks.append((resume, resume - period, resume - 2 * period, start))
        i += (kept + out) * period
    return _Plan(tuple(layers), tuple(checks))


def _one(
    model: GGUFModel, ld: _Loaded, sp: SimParams, n_tokens: int, n_outputs: int, warm: int | None
) -> dict[str, int] | None:
    """One reservation: the graph of every layer (``warm`` None), or of a plan's layers (None when the
    allocator is not periodic where the plan needs it to be)."""
    hp, pl = ld.hp, ld.pl
    c = _context(model, ld, sp, n_tokens, n_outputs)
    plan = _Plan(tuple(range(hp.n_layer)), ())
    if warm is not None:
        plan = _plan(_layer_signatures(c, ld), warm)
        if not plan.checks:
            warm = None
    c.layers = list(plan.layers)
    if warm is not None:
        where = {il: p for p, il in enumerate(plan.layers)}
        for name, copies in c.by_name.items():
            if name.startswith("blk."):
                num = name[4:].partition(".")[0]
                for buft, t in copies:
                    t.pos = where.get(int(num), GLOBAL - 1) if num.isdigit() else GLOBAL
                    t.seq = ("weight", name[4 + len(num) :], buft)
    g = _Graph()
    g.expand(_decoder(c, g))
    gpus = [d.name for d in pl.devices]
    host = host_buft(gpus[0] if gpus else None)
    sched = _Sched(gpus, host, N_COPIES if sp.pipeline else 1)
    sched.assign(g)
    nodes, leafs, node_at = sched.split(g)
    marks = frozenset(p for check in plan.checks for p in check[:3])
    sizes, states = _reserve(nodes, leafs, sched.bufts, node_at, marks)
    pre = states.get(PREALLOCATED, frozenset())
    assert isinstance(pre, frozenset)
    for resume, one, two, start in plan.checks:
        # up-front allocations (pipeline parallelism's input copies) of a block after the first: each
        # block left out would have its own (the first block's may come from the layers before it)
        if any(start + resume - one <= p < resume for p in pre):
            return None
        if not (_shifted(states[resume], states[one]) or _shifted(states[resume], states[two])):
            return None
    return sizes


def _shifted(a: object, b: object) -> bool:
    """Whether two allocator states (:func:`_state`) are the same."""
    return a == b


WARM = (3, 6)  # the warm-up blocks tried before the whole graph


def simulate(
    model: GGUFModel,
    devices: list[Device],
    offload: OffloadParams,
    sp: SimParams,
    *,
    whole: bool = False,
    placement: Placement | None = None,
) -> dict[str, int]:
    """Each backend's compute buffer (bytes by buffer type: ``CUDA0``..., ``CUDA_Host`` or ``CPU``):
    the larger of the prompt-processing and the token-generation reservations
    (``llama_context::sched_reserve``, llama-context.cpp:617-770).

    Repeated layers allocate alike: once the allocator's state (its free blocks, the tensors alive,
    where they are and what still reads them) comes back the same after a block of identical layers,
    every further such block leaves it so and allocates as that one did. So the graph is built with
    a few of each run of identical blocks, and the replay checks that periodicity where it leaves the
    others out; where it does not hold, with more blocks kept, then with every layer. ``whole``
    replays every layer (the oracle the shortcut is tested against). ``placement``: ``place(model,
    devices, offload)`` when the caller has it."""
    key = (tuple(devices), offload, sp, whole)
    done = _cached(_RESULTS, model, key)
    if done is not None:
        return dict(done)
    ld = _loaded(model, devices, offload, placement)
    out = []
    for n_tokens, n_outputs in ((sp.n_ubatch, sp.n_outputs), (sp.n_seq_max, sp.n_seq_max)):
        sizes = None
        for warm in () if whole else WARM:
            sizes = _one(model, ld, sp, n_tokens, n_outputs, warm)
            if sizes is not None:
                break
        out.append(sizes or _one(model, ld, sp, n_tokens, n_outputs, None))
    pp, tg = out
    assert pp is not None and tg is not None
    result = {b: max(pp.get(b, 0), tg.get(b, 0)) for b in pp}
    return dict(_store(_RESULTS, model, key, result, 256))


def _loaded(
    model: GGUFModel, devices: list[Device], offload: OffloadParams, placement: Placement | None = None
) -> _Loaded:
    key = (tuple(devices), offload)
    ld = _cached(_LOADED, model, key)
    if ld is None:
        pl = placement or place(model, devices, offload)
        ld = _store(_LOADED, model, key, _load(model, hparams(model), pl), 8)
    assert isinstance(ld, _Loaded)
    return ld


# per model (held weakly: a model closed and collected takes its entries along), the loaded graph
# tensors per placement and the buffers per reservation, so that --fit's searches and a report's
# several contexts replay a configuration once per process
_LOADED: weakref.WeakKeyDictionary[GGUFModel, dict[object, Any]] = weakref.WeakKeyDictionary()
_RESULTS: weakref.WeakKeyDictionary[GGUFModel, dict[object, Any]] = weakref.WeakKeyDictionary()


def _cached(cache: weakref.WeakKeyDictionary[GGUFModel, dict[object, Any]], model: GGUFModel, key: object) -> Any:
    return cache.get(model, {}).get(key)


def _store(
    cache: weakref.WeakKeyDictionary[GGUFModel, dict[object, Any]], model: GGUFModel, key: object, value: T, most: int
) -> T:
    entries = cache.setdefault(model, {})
    if len(entries) >= most:
        del entries[next(iter(entries))]
    entries[key] = value
    return value
