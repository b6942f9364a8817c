"""``deepseek32`` (src/models/deepseek32.cpp): DeepSeek-V3.2, and ``glm-dsa`` (src/models/glm-dsa.cpp):
GLM-5, which runs the same graph. DeepSeek V3's absorbed multi-head latent attention (:mod:`.deepseek2`)
made sparse by DeepSeek Sparse Attention's lightning indexer: per layer, indexer queries from the
compressed Q (``indexer.attn_q_b``) and one indexer key per token (``indexer.attn_k``, a layer norm with
bias), both roped and turned by the Hadamard matrix of the indexer cache (``attn_inp_k_rot``), the keys
written to the indexer's own K-only cache (``llama_kv_cache_dsa``'s second cache), per-head weights
(``indexer.proj``) scaled, then the fused ``LIGHTNING_INDEXER`` scores of every cached key (llama.cpp
always takes the fused op: ``cparams.fused_lid``), and their ``TOP_K`` (at most ``indexer.top_k`` cells).
The MLA attention then runs over a mask that is ``-inf`` but for those cells (``build_attn`` with
``llm_graph_input_attn_k_dsa``, llama-graph.cpp:3114-3190: FILL, a SET_ROWS of zeros at the top-k
cells, an ADD of the causal mask). GLM-5's "shared" indexer layers (``attention.indexer.types``) have no
indexer and reuse the top-k of the last full layer. The FFN (leading dense layers, routed plus shared
experts) is deepseek2's; the NextN/MTP block is left out as llama.cpp leaves it."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph, _type
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _norm, _w
from ggufx.analysis.memory.graph.models.deepseek2 import (
    SIGMOID,
    SOFTMAX,
    cache_k,
    cache_write,
    layer_tail,
    mla_mha,
    moe_params,
    output_head,
)
from ggufx.analysis.memory.graph.models.deepseek2 import unbuildable as _deepseek2_unbuildable
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

INDEXER = ("indexer.attn_q_b", "indexer.attn_k", "indexer.k_norm", "indexer.proj")


class _Dsa:
    """``llm_graph_input_attn_k_dsa`` (llama-graph.cpp:3411-3441): the MLA cache's rows and mask, the
    indexer cache's rows, mask (F16: the fused indexer's) and Hadamard matrix."""

    def __init__(self, c: _Ctx, g: _Graph) -> None:
        sp, T, ns = c.sp, c.n_tokens, c.sp.n_streams
        self.k_idxs = g.input("attn_inp_k_idxs", "I64", T)
        self.mask = g.input("attn_inp_kq_mask", "F16" if sp.flash_attn else "F32", sp.n_kv, T // ns, 1, ns)
        self.k_idxs_lid = g.input("attn_inp_k_idxs", "I64", T)
        self.mask_lid = g.input("attn_inp_kq_mask", "F16", sp.n_kv, T // ns, 1, ns)
        # llama-kv-cache.cpp:327-348: always for the indexer cache, 64 doubled while it divides the key length
        n = 64
        while c.hp.indexer_k % (2 * n) == 0:
            n *= 2
        self.k_rot = g.input("attn_inp_k_rot", "F32", n, n)


def _indexer(c: _Ctx, g: _Graph, cur: _T, qr: _T, il: int, inp: _Dsa, top_k: int, rotate: bool = True) -> _T:
    """The lightning indexer of one full layer (deepseek32.cpp:214-318 with ``cparams.fused_lid``): the
    indexer keys written to its cache, then the ``top_k`` cells of its scores (the CONT of TOP_K). HY V4's
    (hy-v4.cpp:327-400) is the same without the Hadamard rotation of the queries and keys (``rotate``)."""
    hp, T, ns = c.hp, c.n_tokens, c.sp.n_streams
    pos = c.pos
    assert pos is not None
    p = f"blk.{il}.indexer."
    hk = hp.indexer_k
    q = g.mul_mat(f"indexer_q-{il}", _w(c, p + "attn_q_b.weight", il), qr)
    n_heads = q.ne[0] // hk
    q = g.reshape(q, hk, n_heads, T)
    q = g.new(f"indexer_q-{il}", "ROPE", "F32", q.ne, q, pos)
    k = g.mul_mat(f"indexer_k-{il}", _w(c, p + "attn_k.weight", il), cur)
    k = g.op(f"norm-{il}", "NORM", k)
    k.backend = c.pin[il]
    k = g.op(f"norm_w-{il}", "MUL", k, _w(c, p + "k_norm.weight", il))
    k = g.op(f"indexer_k-{il}", "ADD", k, _w(c, p + "k_norm.bias", il))
    k = g.reshape(k, hk, 1, T)
    k = g.new(f"indexer_k-{il}", "ROPE", "F32", k.ne, k, pos)
    if rotate:
        q = g.mul_mat(f"indexer_q-{il}", inp.k_rot, q)
        k = g.mul_mat(f"indexer_k-{il}", inp.k_rot, k)
    cache, cached = cache_k(c, g, f"cache_k_l{il}", hk, _type(c.sp.type_k).name, il)
    g.expand(cache_write(c, g, cache, k, hk, inp.k_idxs_lid))
    weights = g.mul_mat(f"indexer_weights-{il}", _w(c, p + "proj.weight", il), cur)
    q = g.view(q, (hk, n_heads, T // ns, ns), (q.nb[0], q.nb[1], q.nb[2], q.nb[3] // ns))
    weights = g.view(
        weights, (n_heads, T // ns, 1, ns), (weights.nb[0], weights.nb[1], weights.nb[2] // ns, weights.nb[3] // ns)
    )
    weights = g.new(f"indexer_weights-{il}", "SCALE", "F32", weights.ne, weights)
    n_kv = cached.ne[2]
    score = g.new(
        f"indexer_score-{il}", "LIGHTNING_INDEXER", "F32", (n_kv, T // ns, 1, ns), q, cached, weights, inp.mask_lid
    )
    n_top = min(n_kv, top_k)
    top = g.new(f"top_k-{il}", "TOP_K", "I32", (n_top, *score.ne[1:]), score)
    return g.new(f"top_k-{il}", "CONT", "I32", top.ne, top)


def _top_k(c: _Ctx) -> int:
    md = c.model.metadata if c.model is not None else None
    return (md.get_int(f"{c.hp.arch}.attention.indexer.top_k") or 0) if md is not None else 0


def _sparse_mask(c: _Ctx, g: _Graph, inp: _Dsa, top_k: _T, il: int) -> _T:
    """The MLA mask of the top-k cells (llama-graph.cpp:3144-3168): the mask filled with ``-inf``, seen
    as rows of one, zeros set at the top-k cells, seen back as the mask, plus the causal mask."""
    mask = inp.mask
    n_kv, tps, ns = mask.ne[0], mask.ne[1], mask.ne[3]
    filled = g.new(f"node_fill-{il}", "FILL", mask.type, mask.ne, mask)
    rows = g.view(filled, (1, n_kv, tps, ns), (filled.nb[0], filled.nb[0], filled.nb[1], filled.nb[3]))
    ntk = top_k.ne[0]
    top3 = g.view(top_k, (ntk, top_k.ne[1], top_k.ne[3], 1), (top_k.nb[0], top_k.nb[1], top_k.nb[2]))
    zeros = g.leaf(f"zeros-{il}", "F32", (1, ntk, top3.ne[1], top3.ne[2]))
    zeros = g.new(f"node_fill-{il}", "FILL", "F32", zeros.ne, zeros)
    unmasked = g.view(rows, rows.ne, rows.nb, "SET_ROWS")
    unmasked.src = [zeros, top3, rows]
    back = g.view(unmasked, (n_kv, tps, 1, ns), (unmasked.nb[0], unmasked.nb[2], unmasked.nb[3], unmasked.nb[3]))
    return g.op(f"node_add-{il}", "ADD", back, mask)


def mla_qkv(c: _Ctx, g: _Graph, x: _T, qr: _T, il: int, k_pe_norm: bool = False) -> tuple[_T, _T, int, int]:
    """The absorbed MLA's Q and K of one layer (deepseek32.cpp:322-370): Q from the compressed ``qr``, its rope
    part roped and its nope part absorbed by ``attn_k_b``; the compressed KV normed and the rope key roped (RMS-normed
    first where ``k_pe_norm``: dots3note.cpp), each concatenated, expanded Q, V (the compressed KV), K as llama.cpp
    expands them. Returns (Q, K, kv_lora_rank, rope dimensions)."""
    hp = c.hp
    T = c.n_tokens
    nh = hp.n_head[il]
    p = f"blk.{il}."
    wk_b = _w(c, p + "attn_k_b.weight", il)
    kv_a = _w(c, p + "attn_kv_a_mqa.weight", il)
    rank = _w(c, p + "attn_kv_a_norm.weight", il).ne[0]  # kv_lora_rank (dots3note: of the layer's geometry)
    n_rot = kv_a.ne[1] - rank
    nope = wk_b.ne[0]
    hk = nope + n_rot  # n_embd_head_k_mla
    pos = c.pos
    assert pos is not None
    q = g.mul_mat(f"q-{il}", _w(c, p + "attn_q_b.weight", il), qr)
    q = g.reshape(q, hk, nh, T)
    q_nope = g.view(q, (nope, nh, T), q.nb[:3])
    q_pe = g.view(q, (n_rot, nh, T), q.nb[:3])
    kv_cmpr_pe = g.mul_mat(f"kv_cmpr_pe-{il}", kv_a, x)
    row = kv_cmpr_pe.nb[1]
    kv_cmpr = g.view(kv_cmpr_pe, (rank, T), (4, row))
    k_pe = g.view(kv_cmpr_pe, (n_rot, 1, T), (4, row, row))
    if k_pe_norm:
        k_pe = _norm(c, g, k_pe, p + "attn_k_norm.weight", il)
    q_pe = g.new(f"q_pe-{il}", "ROPE", "F32", q_pe.ne, q_pe, pos)
    k_pe = g.new(f"k_pe-{il}", "ROPE", "F32", k_pe.ne, k_pe, pos)
    kv_cmpr = _norm(c, g, kv_cmpr, p + "attn_kv_a_norm.weight", il)
    q_nope = g.permute(q_nope, 0, 2, 1, 3)
    absorbed = g.permute(g.mul_mat(f"q_nope_absorbed-{il}", wk_b, q_nope), 0, 2, 1, 3)
    qcur = g.new(f"Qcur-{il}", "CONCAT", "F32", (rank + n_rot, nh, T), absorbed, q_pe)
    kv_cmpr = g.reshape(kv_cmpr, rank, 1, T)
    kcur = g.new(f"Kcur-{il}", "CONCAT", "F32", (rank + n_rot, 1, T), kv_cmpr, k_pe)
    for t in (qcur, kv_cmpr, kcur):
        g.expand(t)
    return qcur, kcur, rank, n_rot


def _attn(c: _Ctx, g: _Graph, x: _T, qr: _T, il: int, inp: _Dsa, top_k: _T) -> _T:
    """The MLA attention of one layer over its top-k cells (deepseek32.cpp:322-400, ``build_attn`` of
    ``llm_graph_input_attn_k_dsa`` and ``build_attn_mha``, llama-graph.cpp:2691-2830), up to and including
    the output projection."""
    qcur, kcur, rank, n_rot = mla_qkv(c, g, x, qr, il)
    width = rank + n_rot
    cache, k = cache_k(c, g, f"cache_k_l{il}", width, _type(c.sp.type_k).name, il)
    g.expand(cache_write(c, g, cache, kcur, width, inp.k_idxs))
    mask = _sparse_mask(c, g, inp, top_k, il)
    return mla_mha(c, g, qcur, k, mask, il, rank)


def build(c: _Ctx, g: _Graph) -> _T:
    """The transformer of ``deepseek32`` and ``glm-dsa`` (``graph::graph`` of deepseek32.cpp and
    glm-dsa.cpp): the trunk's layers (NextN left out), each with its indexer (a full layer) or the last
    full layer's top-k (a shared one), the sparse MLA attention, a dense FFN in the leading layers, then
    the routed experts plus the shared ones."""
    hp = c.hp
    mp = moe_params(c)
    gating = mp.gating or (SIGMOID if hp.arch == "glm-dsa" else SOFTMAX)
    T, n_out = c.n_tokens, c.n_outputs
    last = hp.n_layer_main - 1
    full = set(hp.indexer_layers)
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _Dsa(c, g)
    out_ids = g.input("out_ids", "I32", n_out)
    prev_top_k: _T | None = None
    for p, il in enumerate(c.layers):
        if il > last:  # the NextN/MTP block: not part of the decoder graph
            continue
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        qr = g.mul_mat(f"qr-{il}", _w(c, f"blk.{il}.attn_q_a.weight", il), cur)
        qr = _norm(c, g, qr, f"blk.{il}.attn_q_a_norm.weight", il)
        if il in full:
            prev_top_k = _indexer(c, g, cur, qr, il, inp, _top_k(c))
        assert prev_top_k is not None  # unbuildable: the first trunk layer has an indexer
        cur = _attn(c, g, cur, qr, il, inp, prev_top_k)
        x = layer_tail(c, g, cur, inp_sa, il, il == last, out_ids, mp, gating)
    return output_head(c, g, x)


def unbuildable(model: GGUFModel) -> str | None:
    """Why the deepseek32 / glm-dsa graph cannot be built from this file (None when it can): deepseek2's
    conditions (absorbed MLA, every trunk layer's tensors, experts split into gate and up), Q through
    ``q_lora`` (these graphs have no plain Q projection), the indexer's keys, a first trunk layer with an
    indexer and its tensors in every full layer, an indexer key length the Hadamard matrix covers."""
    why = _deepseek2_unbuildable(model)
    if why is not None:
        return why.replace("deepseek2", model.architecture or "deepseek32")
    arch = model.architecture or ""
    md = model.metadata
    hp = hparams(model)
    for key in ("attention.indexer.head_count", "attention.indexer.key_length", "attention.indexer.top_k"):
        if not md.get_int(f"{arch}.{key}"):
            return f"the graph needs {arch}.{key}, which the file lacks"
    n = 64
    while hp.indexer_k % (2 * n) == 0:
        n *= 2
    if n != hp.indexer_k:
        return f"an indexer key length of {hp.indexer_k} is not a power of two from 64 (llama.cpp's Hadamard matrix)"
    if hp.n_layer_main and 0 not in hp.indexer_layers:
        return "the first layer has no indexer (llama.cpp asserts: a shared layer needs an earlier full one)"
    names = {t.name for t in model.tensors}
    for il in range(min(hp.n_layer_main, 513)):
        need = ["attn_q_a", "attn_q_a_norm", "attn_q_b"]
        if il in hp.indexer_layers:
            need += ["indexer.attn_q_b", "indexer.attn_k", "indexer.k_norm", "indexer.proj"]
        for role in need:
            if f"blk.{il}.{role}.weight" not in names:
                return f"the graph needs tensor blk.{il}.{role}.weight, which the file lacks"
        if il in hp.indexer_layers and f"blk.{il}.indexer.k_norm.bias" not in names:
            return f"the graph needs tensor blk.{il}.indexer.k_norm.bias, which the file lacks"
    return None


__all__ = ["build", "unbuildable"]
