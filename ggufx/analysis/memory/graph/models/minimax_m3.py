"""``minimax-m3`` (src/models/minimax-m3.cpp: MiniMax-M3). MiniMax-M2's grouped-query attention with RMS norms of
each Q and K head and partial rotary (the llama-style attention of :mod:`._dense`), leading dense layers then
sigmoid-routed experts with a shared expert (swigluoai: a GLU op as SwiGLU is; deepseek2's FFN tail), and MiniMax
Sparse Attention on the layers from ``leading_dense_block_count`` on when flash attention is on and every sequence
has its own stream (``-np 1``, or ``-np N`` without ``--kv-unified``); otherwise every layer attends densely.

A sparse layer (minimax-m3.cpp:338-560) projects, norms and ropes one indexer query per KV head and one indexer
key, writes the key to ``llama_kv_cache_msa``'s indexer cache, then per stream: the keys gathered in position
order (``pos_slot``), the block scores (max-pooled over ``indexer.block_size`` positions), the locally-forced
bias, the top ``indexer.top_k`` blocks, a block mask from them, expanded to the cells (``cell_blk``) and added
to the causal mask (F32, then F16), one flash attention over the stream's cache with the GQA groups on its
sequence axis; several streams are concatenated. One token per stream (the decode reservation) gathers the
selected blocks' keys and values instead. The position axis is the cache's positions padded to 256
(``llama_kv_cache_msa_context::get_n_pos``: 256 at the reservation, the cache being empty) and to a block."""

from __future__ import annotations

from dataclasses import dataclass

from ggufx.analysis.memory.graph.ggml import _T, _Graph, _type
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _rot, _w, model_of
from ggufx.analysis.memory.graph.models import deepseek2
from ggufx.analysis.memory.graph.models._dense import Dense, _attention, _n, _qkv
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, GATINGS, ROUTER
from ggufx.analysis.memory.graph.models._moe_dense import unbuildable as _moe_dense_unbuildable
from ggufx.analysis.memory.graph.models.deepseek2 import cache_k, cache_write, layer_tail, output_head
from ggufx.analysis.memory.hparams import pad
from ggufx.model import GGUFModel

ATTN = Dense(qk_norm="head")
N_POS_PAD = 256  # llama_kv_cache_msa_context::get_n_pos: max(n_pad, 256)


@dataclass(frozen=True, slots=True)
class Msa:
    """The MSA hyper-parameters (minimax-m3.cpp ``load_arch_hparams``) and the reservation's position axis."""

    blk: int  # attention.indexer.block_size
    top_k: int  # attention.indexer.top_k (blocks)
    n_head: int  # attention.indexer.head_count: one per KV head
    key: int  # attention.indexer.key_length
    n_ps: int  # positions, padded to a block
    nblk: int

    @property
    def k(self) -> int:
        return min(self.top_k, self.nblk)


def msa_of(c: _Ctx) -> Msa:
    md, a = model_of(c).metadata, c.hp.arch

    def get(key: str) -> int:
        return md.get_int(f"{a}.attention.indexer.{key}") or 0

    blk = get("block_size")
    n_ps = pad(N_POS_PAD, blk)
    return Msa(blk, get("top_k"), get("head_count"), get("key_length"), n_ps, n_ps // blk)


def enabled(c: _Ctx) -> bool:
    """minimax-m3.cpp:236-242: flash attention on, and one sequence or a stream per sequence."""
    sp = c.sp
    return sp.flash_attn and (sp.n_seq_max == 1 or sp.n_streams > 1)


class _Inp:
    """The graph's attention inputs: ``build_attn_inp_kv_msa`` (llama-graph.cpp:3469-3495: the main cache's rows,
    mask and Hadamard matrices, the indexer cache's rows) and ``llm_graph_input_msa`` (minimax-m3.cpp:256-280)."""

    def __init__(self, c: _Ctx, g: _Graph, m: Msa | None) -> None:
        sp, T, ns = c.sp, c.n_tokens, c.sp.n_streams
        self.attn: _AttnInp = _attn_inp(c, g, sp.n_kv)
        self.m = m
        if m is None:
            return
        self.k_idxs_idx = g.input("attn_inp_k_idxs", "I64", T)
        self.decode = T // ns == 1
        self.bias = g.input("msa_bias", "F32", m.nblk, T)
        self.pos_mask = g.input("msa_pos_mask", "F32", m.n_ps, T)
        self.pos_slot_i = g.input("msa_pos_slot_i", "I32", m.n_ps, ns)
        if self.decode:
            self.pos_slot_f = g.input("msa_pos_slot_f", "F32", m.n_ps, ns)
        else:
            self.cell_blk = g.input("msa_cell_blk", "I32", sp.n_kv, ns)
            kqm = self.attn.mask
            self.mf = g.new("attn_inp_kq_mask (copy)", "CPY", "F32", kqm.ne, kqm)  # ggml_cast, expanded when used


def _kv_view(g: _Graph, cache: _T, head: int, heads: int, n_kv: int) -> _T:
    """``get_k`` / ``get_v`` of an untransposed cache tensor ([heads x head, cells x streams]): [head, heads,
    cells, streams] (llama-kv-cache.cpp:1290-1342)."""
    row = cache.nb[1]
    ns = cache.ne[1] // n_kv
    return g.view(cache, (head, heads, n_kv, ns), (cache.nb[0], row // heads, row, row * n_kv))


def _fa(g: _Graph, il: int, q: _T, k: _T, v: _T, mask: _T, gp: int) -> _T:
    """``build_attn_msa_fa`` (minimax-m3.cpp:176-210): Q [D, HQ, T] folded to [D, R, Gp, C], one flash attention,
    back to [D x HQ, T] (a CONT unless one row)."""
    d, hq, t = q.ne[0], q.ne[1], q.ne[2]
    ch = k.ne[3]
    r = hq * t // (gp * ch)
    q4 = g.permute(g.reshape(q, d, gp, ch, r), 0, 2, 3, 1)
    o = g.new(f"msa_fattn-{il}", "FLASH_ATTN_EXT", "F32", (v.ne[0], q4.ne[2], q4.ne[1], q4.ne[3]), q4, k, v, mask)
    o = g.permute(o, 0, 1, 3, 2)
    if o.ne[3] != 1:
        o = g.new(f"msa_fattn-{il} (permuted) (cont)", "CONT", "F32", o.ne, o)
    return g.reshape(o, d * hq, t)


def _batch(c: _Ctx, g: _Graph, il: int, inp: _Inp, m: Msa, q: _T, iq: _T, ik_kv: _T, k: _T, v: _T) -> _T:
    """The per-stream block selection and attention of a micro-batch (minimax-m3.cpp:448-540)."""
    ns, T = c.sp.n_streams, c.n_tokens
    tps, n_kv = T // ns, c.sp.n_kv
    hd, hq = m.n_head, q.ne[1]
    d, hkv = k.ne[0], k.ne[1]
    outs = []
    for _ in range(ns):  # the stream's views: their offsets do not change what is allocated
        iq_s = g.view(iq, (m.key, hd, tps), (iq.nb[0], iq.nb[1], iq.nb[2]))
        ik_s = g.rows(ik_kv, m.key, n_kv)
        psl_s = g.view(inp.pos_slot_i, (m.n_ps,))
        pm = inp.pos_mask
        pm_s = g.view(pm, (m.n_ps, 1, tps), (pm.nb[0], pm.nb[1], pm.nb[1]))
        cb_s = g.view(inp.cell_blk, (n_kv,))
        mf = inp.mf
        mf_s = g.view(mf, (n_kv, tps, 1), (mf.nb[0], mf.nb[1], mf.nb[3]))
        bias = inp.bias
        bias_s = g.view(bias, (m.nblk, 1, tps), (bias.nb[0], bias.nb[1], bias.nb[1]))
        q_s = g.view(q, (d, hq, tps), q.nb[:3])
        k_s = g.view(k, (d, hkv, n_kv, 1), k.nb)
        v_s = g.view(v, (d, hkv, n_kv, 1), v.nb)
        ikp = g.new(f"node_ikp-{il}", "GET_ROWS", "F32", (m.key, m.n_ps), ik_s, psl_s)
        sc = g.mul_mat(f"node_sc-{il}", ikp, g.reshape(iq_s, m.key, hd * tps))
        sc = g.reshape(sc, m.n_ps, hd, tps)
        sc = g.view(sc, sc.ne, sc.nb, "ADD")  # ggml_add_inplace
        sc.src = [sc.src[0], pm_s]
        bs = g.new(f"msa_bs-{il}", "POOL_2D", "F32", (m.nblk, hd, tps), sc)
        bsf = g.op(f"msa_bsf-{il}", "ADD", bs, bias_s)
        idx = g.new(f"node_topk-{il}", "TOP_K", "I32", (m.k, hd, tps), bsf)
        ninf = g.new(f"node_sb-{il}", "SCALE", "F32", bias_s.ne, bias_s)  # ggml_scale_bias
        ninf = g.new(f"node_ninf-{il}", "CPY", "F16", ninf.ne, ninf)
        ninf = g.new(f"node_rep-{il}", "REPEAT", "F16", (m.nblk, hd, tps), ninf)
        zero = g.new(f"node_zf-{il}", "CPY", "F32", idx.ne, idx)
        zero = g.new(f"node_zero-{il}", "SCALE", "F32", zero.ne, zero)
        dst = g.reshape(ninf, 1, m.nblk, hd * tps)
        bm = g.view(dst, dst.ne, dst.nb, "SET_ROWS")
        bm.src = [g.reshape(zero, 1, m.k, hd * tps), g.reshape(idx, m.k, hd * tps), dst]
        bm = g.permute(g.reshape(bm, m.nblk, hd, tps), 0, 2, 1, 3)
        bm = g.new(f"msa_block_mask-{il}", "CONT", "F16", bm.ne, bm)
        bm2 = g.permute(g.reshape(bm, m.nblk, tps * hd), 1, 0, 2, 3)  # ggml_transpose
        bm2 = g.new(f"msa_block_mask-{il} (cont)", "CONT", "F16", bm2.ne, bm2)
        bmc = g.new(f"node_bmc-{il}", "GET_ROWS", "F32", (tps * hd, n_kv), bm2, cb_s)
        bmx = g.permute(bmc, 1, 0, 2, 3)
        bmx = g.new(f"node_bmx-{il}", "CONT", "F32", bmx.ne, bmx)
        bmx = g.reshape(bmx, n_kv, tps, hd)
        mask4 = g.view(bmx, bmx.ne, bmx.nb, "ADD")  # ggml_add_inplace
        mask4.src = [bmx, mf_s]
        mask4 = g.new(f"msa_mask4-{il}", "CPY", "F16", (n_kv, tps, 1, hd), g.reshape(mask4, n_kv, tps, 1, hd))
        kfa = g.permute(k_s, 0, 3, 1, 2)
        vfa = g.permute(v_s, 0, 3, 1, 2)
        outs.append(_fa(g, il, q_s, kfa, vfa, mask4, hq // hkv))
    cur = outs[0]
    for o in outs[1:]:
        cur = g.new(f"node_concat-{il}", "CONCAT", "F32", (cur.ne[0], cur.ne[1] + o.ne[1]), cur, o)
    return cur


def _decode(c: _Ctx, g: _Graph, il: int, inp: _Inp, m: Msa, q: _T, iq: _T, ik_kv: _T, k: _T, v: _T) -> _T:
    """One token per stream (minimax-m3.cpp:392-446): the top blocks of every stream at once, the selected
    positions' cells, keys, values and mask gathered, one grouped flash attention."""
    ns, n_kv = c.sp.n_streams, c.sp.n_kv
    hd, d, hkv = m.n_head, k.ne[0], k.ne[1]
    sel = m.blk * m.k * hd
    ik3 = g.view(ik_kv, (m.key, n_kv, ns), (ik_kv.nb[0], ik_kv.nb[2], ik_kv.nb[3]))
    ikp = g.new(f"node_ikp-{il}", "GET_ROWS", "F32", (m.key, m.n_ps, ns), ik3, inp.pos_slot_i)
    iq4 = g.reshape(iq, m.key, hd, 1, ns)
    sc = g.new(f"node_sc-{il}", "MUL_MAT", "F32", (m.n_ps, hd, 1, ns), g.reshape(ikp, m.key, m.n_ps, 1, ns), iq4)
    sc = g.view(sc, sc.ne, sc.nb, "ADD")  # ggml_add_inplace
    sc.src = [sc.src[0], g.reshape(inp.pos_mask, m.n_ps, 1, 1, ns)]
    bs = g.new(f"msa_bs-{il}", "POOL_2D", "F32", (m.nblk, hd, 1, ns), sc)
    bsf = g.op(f"node_bsf-{il}", "ADD", bs, g.reshape(inp.bias, m.nblk, 1, 1, ns))
    idx = g.new(f"node_topk-{il}", "TOP_K", "I32", (m.k, hd, 1, ns), bsf)
    a = g.new(f"node_a-{il}", "CPY", "F32", idx.ne, idx)
    a = g.reshape(g.new(f"node_as-{il}", "SCALE", "F32", a.ne, a), 1, m.k, hd, ns)
    rep = g.new(f"node_rep-{il}", "REPEAT", "F32", (m.blk, m.k, hd, ns), a)
    ar = g.reshape(g.new(f"node_ar-{il}", "ARANGE", "F32", (m.blk,)), m.blk, 1, 1)
    tj = g.op(f"node_tj-{il}", "ADD", rep, ar)
    tokj = g.new(f"node_tokj-{il}", "CPY", "I32", (sel, ns), g.reshape(tj, sel, ns))
    cs = g.new(f"node_cs-{il}", "GET_ROWS", "F32", (1, sel, ns), g.reshape(inp.pos_slot_f, 1, m.n_ps, ns), tokj)
    cs = g.reshape(cs, m.blk, m.k, hd, ns)
    ar2 = g.reshape(g.new(f"node_ar2-{il}", "ARANGE", "F32", (hkv,)), 1, 1, hd)
    tr = g.op(f"node_tr-{il}", "ADD", g.new(f"node_css-{il}", "SCALE", "F32", cs.ne, cs), ar2)
    tokr = g.new(f"node_tokr-{il}", "CPY", "I32", (sel, ns), g.reshape(tr, sel, ns))
    k3 = g.view(k, (d, hkv * n_kv, ns), (k.nb[0], k.nb[1], k.nb[3]))
    v3 = g.view(v, (d, hkv * n_kv, ns), (v.nb[0], v.nb[1], v.nb[3]))
    mp = g.reshape(inp.pos_mask, 1, m.n_ps, ns)
    kg = g.new(f"node_kg-{il}", "GET_ROWS", "F32", (d, sel, ns), k3, tokr)
    vg = g.new(f"node_vg-{il}", "GET_ROWS", "F32", (d, sel, ns), v3, tokr)
    mg = g.new(f"node_mg-{il}", "GET_ROWS", "F32", (1, sel, ns), mp, tokj)
    kfa = g.new(f"node_kfa-{il}", "CPY", "F16", (d, m.blk * m.k, 1, hd * ns), g.reshape(kg, d, m.blk * m.k, 1, hd * ns))
    vfa = g.new(f"node_vfa-{il}", "CPY", "F16", (d, m.blk * m.k, 1, hd * ns), g.reshape(vg, d, m.blk * m.k, 1, hd * ns))
    mfa = g.new(f"node_mfa-{il}", "CPY", "F16", (m.blk * m.k, 1, 1, hd * ns), g.reshape(mg, m.blk * m.k, 1, 1, hd * ns))
    return _fa(g, il, q, kfa, vfa, mfa, q.ne[1] // hkv)


def _sparse(c: _Ctx, g: _Graph, x: _T, il: int, inp: _Inp, m: Msa) -> _T:
    """A sparse layer's attention (minimax-m3.cpp:306-562), up to and including the output projection."""
    hp, sp, T = c.hp, c.sp, c.n_tokens
    nkv, hd, hv = hp.n_head_kv[il], hp.head_k, hp.head_v
    p = f"blk.{il}."
    q, k, v = _qkv(c, g, x, il, reshape=True)
    q = _n(c, g, q, p + "attn_q_norm.weight", il, ATTN)
    k = _n(c, g, k, p + "attn_k_norm.weight", il, ATTN)
    assert c.pos is not None
    q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
    iq = g.mul_mat(f"node_iq-{il}", _w(c, p + "indexer.q_proj.weight", il), x)
    ik = g.mul_mat(f"node_ik-{il}", _w(c, p + "indexer.k_proj.weight", il), x)
    iq = _n(c, g, g.reshape(iq, m.key, m.n_head, T), p + "indexer.q_norm.weight", il, ATTN)
    ik = _n(c, g, g.reshape(ik, m.key, 1, T), p + "indexer.k_norm.weight", il, ATTN)
    iq = g.new(f"node_iq-{il}", "ROPE", "F32", iq.ne, iq, c.pos)
    ik = g.new(f"node_ik-{il}", "ROPE", "F32", ik.ne, ik, c.pos)
    tk = _type(sp.type_k).name
    idx_cache, ik_kv = cache_k(c, g, f"cache_k_l{il}", m.key, tk, il)
    g.expand(cache_write(c, g, idx_cache, ik, m.key, inp.k_idxs_idx))
    a = inp.attn
    q, k, v = _rot(g, q, a.k_rot), _rot(g, k, a.k_rot), _rot(g, v, a.v_rot)
    for t in (q, k, v):
        g.expand(t)
    ck, _ = cache_k(c, g, f"cache_k_l{il}", hd * nkv, tk, il)
    cv, _ = cache_k(c, g, f"cache_v_l{il}", hv * nkv, _type(sp.type_v).name, il)
    g.expand(cache_write(c, g, ck, k, hd * nkv, a.k_idxs))
    g.expand(cache_write(c, g, cv, v, hv * nkv, a.v_idxs))
    kv = _kv_view(g, ck, hd, nkv, sp.n_kv)
    vv = _kv_view(g, cv, hv, nkv, sp.n_kv)
    run = _decode if inp.decode else _batch
    cur = run(c, g, il, inp, m, q, iq, ik_kv, kv, vv)
    if a.v_rot is not None:
        cur = _rot(g, cur, a.v_rot)
    return g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), cur)


def build(c: _Ctx, g: _Graph) -> _T:
    """The transformer of ``minimax-m3`` (``graph::graph`` of minimax-m3.cpp): dense attention in the leading
    layers (and everywhere without MSA), sparse attention after them; deepseek2's FFN tail."""
    hp = c.hp
    mp = deepseek2.moe_params(c)
    T, n_out = c.n_tokens, c.n_outputs
    last = hp.n_layer_main - 1
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    m = msa_of(c) if enabled(c) else None
    inp = _Inp(c, g, m)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        inp_sa = x
        cur = _n(c, g, x, f"blk.{il}.attn_norm.weight", il, ATTN)
        if m is not None and il >= mp.n_lead:
            cur = _sparse(c, g, cur, il, inp, m)
        else:
            cur = _attention(c, g, cur, il, inp.attn, False, ATTN)
        x = layer_tail(c, g, cur, inp_sa, il, il == last, out_ids, mp, mp.gating)
    return output_head(c, g, x)


def unbuildable(model: GGUFModel) -> str | None:
    """Why the minimax-m3 graph cannot be built from this file (None when it can): the gating function, the
    indexer's keys (one indexer head per KV head, minimax-m3.cpp asserts it; a block size), every layer's
    tensors (the dense FFN in the leading layers, the router, experts, shared expert and indexer after them)."""
    md, a = model.metadata, model.architecture or ""
    gating = md.get_int(f"{a}.expert_gating_func") or 0
    if gating not in GATINGS:
        return f"the graph needs {a}.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not {gating}"
    for key in ("head_count", "key_length", "top_k", "block_size"):
        if not (md.get_int(f"{a}.attention.indexer.{key}") or 0) > 0:
            return f"the graph needs {a}.attention.indexer.{key} > 0, which the file lacks"
    n_kv = md.get(f"{a}.attention.head_count_kv")
    if not isinstance(n_kv, int) or n_kv != md.get_int(f"{a}.attention.indexer.head_count"):
        return "the graph needs one indexer head per KV head (minimax-m3.cpp asserts it)"
    n_lead = md.get_int(f"{a}.leading_dense_block_count") or 0
    dense = ["attn_q_norm", "attn_k_norm", "ffn_gate", "ffn_up", "ffn_down"]
    sparse = ["attn_q_norm", "attn_k_norm", *ROUTER, "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]
    sparse += ["indexer.q_proj", "indexer.k_proj", "indexer.q_norm", "indexer.k_norm"]
    return _moe_dense_unbuildable(model, lambda il: (dense, []) if il < n_lead else (sparse, EXPERTS))


__all__ = ["build", "unbuildable"]
