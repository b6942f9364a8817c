"""``deepseek4`` (src/models/deepseek4.cpp: DeepSeek V4) over ``llama_kv_cache_dsv4`` (src/llama-kv-cache-dsv4.cpp)
and ``llm_graph_input_dsv4`` (src/llama-graph.cpp ``build_inp_dsv4``). Hyper-connections: the embedding repeated
into ``hyper_connection.count`` streams; around the attention and the FFN of every layer the streams RMS-normed as
one row per token and mixed (``hc_*_fn``), the pre and post weights from the mix (MUL, ADD, SIGMOID, SCALE), the
Sinkhorn combination and the reduction and distribution of the streams as the fused ``DSV4_HC_COMB``,
``DSV4_HC_PRE`` and ``DSV4_HC_POST`` nodes (llama.cpp turns them on everywhere: ``cparams.fused_dsv4_hc_*``); the
output head reduces the streams unfused (``build_hc_pre`` with il -1: MUL and ADD per stream).

Attention: Q through ``q_lora`` (``attn_q_a``, its norm, ``attn_q_b``, an RMS norm per head, RoPE over the last
``rope.dimension_count`` values), one K/V head of ``attention.key_length`` values (``attn_kv``, its norm, RoPE)
written to the sliding-window raw cache (every block, one stream per sequence whatever ``-kvu`` says), attention
with sinks over it, the RoPE undone on the output (ROPE_BACK), the grouped low-rank output (``attn_output_a`` per
group, ``attn_output_b``). Blocks of ``attention.compress_ratios`` 128 (HCA) add a compressor: its kv and gate
projections (plus the learned positions, ``attn_compressor_ape``), appended to the compressor state, softmax-pooled
over 128 rows per block, normed, roped, written to the HCA cache, the state's last rows persisted; the attention
then runs over the window plus every HCA row. Blocks of ratio 4 (CSA) pool overlapping blocks of 8 (the state gets a
zero row) into the CSA cache, and the lightning indexer does the same for its own keys (``indexer_compressor_*``,
Hadamard-rotated), then scores every indexer row for each query (the fused ``LIGHTNING_INDEXER``) and keeps the top
``attention.indexer.top_k``: the attention runs over the window plus those CSA rows (a mask FILLed with -inf, zeros
SET at the top-k rows). The reservation's inputs are ``dsv4_build_reserve_comp_plan``'s worst case: per ratio
``n_tokens / ratio + n_seqs`` blocks, every cache's full size. Each CSA layer's zeros are a leaf, allocated before
the first node and freed in its layer: the allocator never comes back the same after a block (the hole the freed
zeros leave grows), so graphsim's layer shortcut replays the blocks it leaves out from the events of the last one
kept (galloc ``_Blocks``), their zeros allocated up front where ggml-alloc puts them.

FFN: sqrt-softplus routed experts, the first ``hash_layer_count`` layers routed by the token
(``ffn_gate_tid2eid``), the others by top-k with the selection bias, normalized and scaled weights, the experts'
SWIGLU_CLAMP (a GLU op); plus the shared expert. The NextN/MTP block is left out as llama.cpp leaves it."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, _Graph, _type
from ggufx.analysis.memory.graph.llm import (
    _Ctx,
    _norm,
    _rot,
    _w,
    kqv_on_host,
    model_of,
    moe_swiglu_experts,
    moe_weighted_sum,
    moe_weights_norm,
    topk_fusion,
)
from ggufx.analysis.memory.graph.models import deepseek2
from ggufx.analysis.memory.graph.models.deepseek2 import Routed, output_head
from ggufx.analysis.memory.graph.models.qwen3next import file_value, n_expert_used
from ggufx.analysis.memory.hparams import DSV4_CSA, DSV4_HCA, hparams, pad
from ggufx.model import GGUFModel

SQRT_SOFTPLUS = 4  # LLAMA_EXPERT_GATING_FUNC_TYPE_SQRT_SOFTPLUS (llama-hparams.h): the only gating deepseek4.cpp loads


@dataclass(frozen=True, slots=True)
class _Dims:
    """The hyper-parameters deepseek4.cpp's graph reads beyond ``hp`` (``load_arch_hparams``)."""

    head: int  # n_embd_head_k (attention.key_length): the one K/V head
    hc: int  # hyper_connection.count
    n_groups: int  # attention.output_group_count
    o_rank: int  # attention.output_lora_rank
    lid_head: int  # attention.indexer.key_length
    lid_heads: int  # attention.indexer.head_count
    top_k: int  # attention.indexer.top_k
    n_hash: int  # hash_layer_count


def _int(c: _Ctx, key: str) -> int:
    v = file_value(c, f"{c.hp.arch}.{key}")
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _dims(c: _Ctx) -> _Dims:
    return _Dims(
        c.hp.head_k,
        _int(c, "hyper_connection.count"),
        _int(c, "attention.output_group_count"),
        _int(c, "attention.output_lora_rank"),
        _int(c, "attention.indexer.key_length"),
        _int(c, "attention.indexer.head_count"),
        _int(c, "attention.indexer.top_k"),
        _int(c, "hash_layer_count"),
    )


def _rot_size(width: int) -> int:
    """``n_rot_k`` of a cache (llama-kv-cache.cpp:327-348): 64, doubled while it divides the key width."""
    n = 64
    while width % (2 * n) == 0:
        n *= 2
    return n


@dataclass(frozen=True, slots=True)
class _Comp:
    """One ``comp_input`` of ``llm_graph_input_dsv4`` (llama-graph.cpp ``dsv4_build_comp_inputs``) for the
    reservation's plan (llama-kv-cache-dsv4.cpp ``dsv4_build_reserve_comp_plan``), with its cache's size and
    Hadamard matrix: the restore and snapshot inputs are absent (no speculative rollback, ``n_rs_seq`` 0)."""

    ratio: int
    cells: int  # the compressed cache's cells per stream (kq_mask's width)
    n_blocks: int
    state_pos: _T
    persist_src: _T
    persist_dst: _T
    read_idxs: _T
    write_idxs: _T
    write_pos: _T
    mask: _T
    k_rot: _T | None


class _Inp:
    """``build_inp_dsv4`` (llama-graph.cpp): the raw window's rows, mask and rotation, and the CSA, HCA and
    indexer inputs (made in that order; a graph holds those it reads)."""

    def __init__(self, c: _Ctx, g: _Graph, d: _Dims, ns: int) -> None:
        sp, T = c.sp, c.n_tokens
        tk = _type(sp.type_k)
        quant = tk.block_size > 1
        self.ns = ns
        self.n_raw = c.n_kv_swa
        self.k_idxs = g.input("attn_inp_k_idxs", "I64", T)
        self.mask = g.input("attn_inp_kq_mask", "F16" if sp.flash_attn else "F32", self.n_raw, T // ns, 1, ns)
        n = _rot_size(d.head)
        self.k_rot = g.input("attn_inp_k_rot", "F32", n, n) if quant and d.head % 64 == 0 else None

        def comp(name: str, ratio: int, overlap: bool, state_rows: int, fa_mask: bool, rot: int) -> _Comp:
            cells = pad(max(1, -(-sp.n_kv // ratio)))  # llama_kv_cache_dsv4: GGML_PAD(dsv4_comp_size, 256)
            n_blocks = T // ratio + ns
            n_persist = min(T, state_rows * ns)
            p = f"dsv4_{name}_"
            state_pos = g.input(p + "state_pos", "I32", T)
            persist_src = g.input(p + "state_persist_src_idxs", "I32", n_persist)
            persist_dst = g.input(p + "state_persist_dst_idxs", "I32", n_persist)
            read_idxs = g.input(p + "state_read_idxs", "I32", (2 if overlap else 1) * ratio * n_blocks)
            write_idxs = g.input(p + "state_write_idxs", "I64", n_blocks)
            write_pos = g.input(p + "state_write_pos", "I32", n_blocks)
            mask = g.input(p + "kq_mask", "F16" if fa_mask else "F32", cells, T // ns, 1, ns)
            k_rot = g.input("attn_inp_k_rot", "F32", rot, rot) if rot else None
            return _Comp(
                ratio,
                cells,
                n_blocks,
                state_pos,
                persist_src,
                persist_dst,
                read_idxs,
                write_idxs,
                write_pos,
                mask,
                k_rot,
            )

        rot = _rot_size(d.head) if quant and d.head % 64 == 0 else 0
        self.csa = comp("csa", DSV4_CSA, True, 2 * DSV4_CSA, sp.flash_attn, rot)
        self.hca = comp("hca", DSV4_HCA, False, DSV4_HCA, sp.flash_attn, rot)
        # the indexer's cache always has its Hadamard matrix; its mask is the fused indexer's (F16)
        self.lid = comp("lid", DSV4_CSA, True, 2 * DSV4_CSA, True, _rot_size(d.lid_head))
        self._caches: dict[tuple[str, int], _T] = {}

    def cache(self, c: _Ctx, g: _Graph, which: str, il: int, width: int, cells: int) -> tuple[_T, _T]:
        """Layer ``il``'s K tensor of one of the four K-only caches (``which``: raw, csa, hca, lid; made once)
        and a new ``get_k`` view of it over every stream (llama-kv-cache.cpp:1296-1313): [width, 1 head,
        cells, streams]."""
        ns = self.ns
        cache = self._caches.get((which, il))
        if cache is None:
            cache = g.leaf(f"cache_k_l{il}", _type(c.sp.type_k).name, (width, cells * ns), buft=c.cache_buft[il])
            self._caches[(which, il)] = cache
        row = cache.nb[1]
        return cache, g.view(cache, (width, 1, cells, ns), (cache.nb[0], row, row, row * cells))


def _cpy_k(g: _Graph, cache: _T, cur: _T, width: int, rows: int, idxs: _T, ns: int) -> _T:
    """``llama_kv_cache::cpy_k`` (llama-kv-cache.cpp:1348-1381): ``rows`` new keys, the streams merged into one
    2D view of the cache when several, their SET_ROWS."""
    src = g.rows(cur, width, rows)
    return _set_rows(g, g.reshape(cache, width, cache.ne[1]) if ns > 1 else cache, src, idxs)


def _set_rows(g: _Graph, dst: _T, rows: _T, idxs: _T) -> _T:
    """``ggml_set_rows`` (ggml.c): a view of ``dst`` whose sources are the rows, the indices and ``dst``."""
    out = g.view(dst, dst.ne, dst.nb, "SET_ROWS")
    out.src = [rows, idxs, dst]
    return out


class _State:
    """One layer's compressor state (``llama_dsv4_comp_state``, llama-kv-cache-dsv4.cpp:896-1003): F32 kv and
    score tensors of ``width`` x ``rows`` x streams, and ``get_kv_all`` / ``get_score_all``, a new 2D view of
    them at each call."""

    def __init__(self, c: _Ctx, g: _Graph, name: str, il: int, width: int, rows: int, ns: int) -> None:
        buft = c.cache_buft[il]
        self.g, self.rows = g, rows * ns
        self.kv = g.leaf(f"dsv4_{name}_state_kv_l{il}", "F32", (width, rows, ns), buft=buft)
        self.score = g.leaf(f"dsv4_{name}_state_score_l{il}", "F32", (width, rows, ns), buft=buft)

    def all(self, t: _T) -> _T:
        return self.g.view(t, (t.ne[0], self.rows), (t.nb[0], t.nb[1]))

    def source(self, t: _T, new: _T) -> _T:
        """The state's rows (``dsv4_view_2d`` of ``get_*_all``) followed by the new ones (CONCAT on dim 1)."""
        g = self.g
        base = g.view(self.all(t), (t.ne[0], self.rows), (t.nb[0], t.nb[1]))
        return g.new(f"{t.name} (source)", "CONCAT", "F32", (t.ne[0], self.rows + new.ne[1]), base, new)

    def persist(self, new_kv: _T, new_score: _T, inp: _Comp) -> None:
        """The last rows of each sequence kept for the next micro-batch: GET_ROWS of the new rows, SET_ROWS into
        the state (both expanded, kv first)."""
        g = self.g
        kv = g.new("persist_kv", "GET_ROWS", "F32", (new_kv.ne[0], inp.persist_src.ne[0]), new_kv, inp.persist_src)
        kv = _set_rows(g, self.all(self.kv), kv, inp.persist_dst)
        score = g.new(
            "persist_score", "GET_ROWS", "F32", (new_score.ne[0], inp.persist_src.ne[0]), new_score, inp.persist_src
        )
        score = _set_rows(g, self.all(self.score), score, inp.persist_dst)
        g.expand(kv)
        g.expand(score)


def _append_zero_row(g: _Graph, t: _T) -> _T:
    """``dsv4_append_zero_row``: the first row scaled (SCALE: by 0, or to -inf) appended as a last row."""
    row = g.new(f"{t.name} (zero row)", "SCALE", t.type, (t.ne[0],), g.view(t, (t.ne[0],), (t.nb[0],)))
    row = g.reshape(row, t.ne[0], 1)
    return g.new(f"{t.name} (appended)", "CONCAT", t.type, (t.ne[0], t.ne[1] + 1), t, row)


def _pool(c: _Ctx, g: _Graph, values: _T, scores: _T, norm: str, pos: _T, il: int) -> _T:
    """The tail of both compressors: the values and scores ``[width, rows, blocks]`` transposed (CONT), the
    scores' softmax over each block's rows, the weighted sum (MUL, SUM_ROWS), transposed back (CONT), normed and
    roped at the blocks' positions."""
    width, n_blocks = values.ne[0], values.ne[2]
    values = g.permute(values, 1, 0, 2, 3)
    values = g.new("values (cont)", "CONT", "F32", values.ne, values)
    scores = g.permute(scores, 1, 0, 2, 3)
    scores = g.new("scores (cont)", "CONT", "F32", scores.ne, scores)
    weights = g.op("weights", "SOFT_MAX", scores)
    comp = g.op("comp", "MUL", values, weights)
    comp = g.new("comp", "SUM_ROWS", "F32", (1, width, n_blocks), comp)
    comp = g.permute(comp, 1, 0, 2, 3)
    comp = g.new("comp (cont)", "CONT", "F32", comp.ne, comp)
    comp = _norm(c, g, comp, norm, il)
    return g.new("comp", "ROPE", "F32", comp.ne, comp, pos)


def _overlap(c: _Ctx, g: _Graph, kv: _T, score: _T, inp: _Comp, norm: str, width: int, il: int) -> _T:
    """``build_overlap_compressed_kv_from_state`` (deepseek4.cpp): a zero row appended to the kv and a -inf row
    to the scores, ``2 x ratio`` rows gathered per block, the previous block's first half and the current
    block's second half of each (CONT of views), concatenated, pooled (:func:`_pool`)."""
    kv, score = _append_zero_row(g, kv), _append_zero_row(g, score)
    n_read, ratio, n_blocks = inp.ratio * inp.n_blocks, inp.ratio, inp.n_blocks
    n_idx = inp.read_idxs.ne[0]
    kv_rows = g.new("kv_rows", "GET_ROWS", "F32", (kv.ne[0], n_idx), kv, inp.read_idxs)
    score_rows = g.new("score_rows", "GET_ROWS", "F32", (score.ne[0], n_idx), score, inp.read_idxs)

    def half(rows: _T) -> _T:  # the first half of the previous rows, or the second of the current ones
        v = g.view(rows, (width, n_read), (rows.nb[0], rows.nb[1]))
        v = g.new("half (cont)", "CONT", "F32", (width, n_read), v)
        return g.reshape(v, width, ratio, n_blocks)

    kv_prev, score_prev = half(kv_rows), half(score_rows)
    kv_cur, score_cur = half(kv_rows), half(score_rows)
    values = g.new("values", "CONCAT", "F32", (width, 2 * ratio, n_blocks), kv_prev, kv_cur)
    scores = g.new("scores", "CONCAT", "F32", (width, 2 * ratio, n_blocks), score_prev, score_cur)
    return _pool(c, g, values, scores, norm, inp.write_pos, il)


def _hca_pool(c: _Ctx, g: _Graph, kv: _T, score: _T, inp: _Comp, norm: str, width: int, il: int) -> _T:
    """``build_hca_compressed_kv_from_state`` (deepseek4.cpp): 128 rows gathered per block, pooled."""
    n_idx, n_blocks = inp.read_idxs.ne[0], inp.n_blocks
    kv = g.new("kv_rows", "GET_ROWS", "F32", (kv.ne[0], n_idx), kv, inp.read_idxs)
    kv = g.reshape(kv, width, inp.ratio, n_blocks)
    score = g.new("score_rows", "GET_ROWS", "F32", (score.ne[0], n_idx), score, inp.read_idxs)
    score = g.reshape(score, width, inp.ratio, n_blocks)
    return _pool(c, g, kv, score, norm, inp.write_pos, il)


def _rotate(g: _Graph, x: _T, rot: _T | None) -> _T:
    """``llama_mul_mat_hadamard`` of a contiguous tensor."""
    return _rot(g, x, rot) if rot is not None else x


def _state_new(c: _Ctx, g: _Graph, x: _T, prefix: str, inp: _Comp, il: int) -> tuple[_T, _T]:
    """A compressor's new rows: its kv projection, and its gate projection plus the learned positions of the
    tokens in their block (GET_ROWS of ``*_ape``)."""
    kv = g.mul_mat(f"{prefix}_state_kv-{il}", _w(c, f"blk.{il}.{prefix}_kv.weight", il), x)
    score = g.mul_mat(f"{prefix}_state_score-{il}", _w(c, f"blk.{il}.{prefix}_gate.weight", il), x)
    ape = _w(c, f"blk.{il}.{prefix}_ape.weight", il)
    rows = g.new(f"{prefix}_ape-{il}", "GET_ROWS", "F32", (ape.ne[0], inp.state_pos.ne[0]), ape, inp.state_pos)
    return kv, g.op(f"{prefix}_state_score_ape-{il}", "ADD", score, rows)


def _compress(c: _Ctx, g: _Graph, x: _T, il: int, caches: _Inp, name: str, prefix: str, width: int) -> None:
    """One overlapping (CSA, indexer) compressor of a ratio-4 layer (deepseek4.cpp ``build_attention_impl``):
    the new rows after the restored state, pooled, Hadamard-rotated when the cache has a matrix, written to the
    compressed cache; then the state's persisted rows."""
    ns = caches.ns
    inp = caches.csa if name == "csa" else caches.lid
    new_kv, new_score = _state_new(c, g, x, prefix, inp, il)
    st = _State(c, g, name, il, 2 * width, 2 * inp.ratio, ns)
    kv = _overlap(
        c, g, st.source(st.kv, new_kv), st.source(st.score, new_score), inp, f"blk.{il}.{prefix}_norm.weight", width, il
    )
    kv = _rotate(g, kv, inp.k_rot)
    cache, _ = caches.cache(c, g, name, il, width, inp.cells)
    g.expand(_cpy_k(g, cache, kv, width, inp.n_blocks, inp.write_idxs, ns))
    st.persist(new_kv, new_score, inp)


def _lid_top_k(c: _Ctx, g: _Graph, d: _Dims, inp: _Inp, qr: _T, x: _T, il: int) -> _T:
    """``build_lid_top_k`` with the fused indexer (deepseek4.cpp): the indexer queries from ``qr`` (roped,
    Hadamard-rotated), the per-head weights (scaled), the scores of every indexer row (LIGHTNING_INDEXER) and the
    CONT of their TOP_K."""
    T, ns = c.n_tokens, inp.ns
    p = f"blk.{il}.indexer."
    q = g.mul_mat(f"lid_q-{il}", _w(c, p + "attn_q_b.weight", il), qr)
    q = g.reshape(q, d.lid_head, d.lid_heads, T)
    assert c.pos is not None
    q = g.new(f"lid_q_rope-{il}", "ROPE", "F32", q.ne, q, c.pos)
    q = _rot(g, q, inp.lid.k_rot)
    w = g.mul_mat(f"lid_weights-{il}", _w(c, p + "proj.weight", il), x)
    w = g.op(f"lid_weights-{il}", "SCALE", w)
    _, k = inp.cache(c, g, "lid", il, d.lid_head, inp.lid.cells)
    k = g.view(k, k.ne, k.nb)
    q = g.view(q, (q.ne[0], q.ne[1], q.ne[2] // ns, ns), (q.nb[0], q.nb[1], q.nb[2], q.nb[3] // ns))
    w = g.view(w, (w.ne[0], w.ne[1] // ns, w.ne[2], ns), (w.nb[0], w.nb[1], w.nb[2] // ns, w.nb[3] // ns))
    n_lid = k.ne[2]
    score = g.new(f"lid_score_masked-{il}", "LIGHTNING_INDEXER", "F32", (n_lid, T // ns, 1, ns), q, k, w, inp.lid.mask)
    top = g.new(f"lid_top_k-{il}", "TOP_K", "I32", (min(n_lid, d.top_k), T // ns, 1, ns), score)
    return g.new(f"lid_top_k-{il}", "CONT", "I32", top.ne, top)


def _top_k_mask(c: _Ctx, g: _Graph, mask: _T, top_k: _T, il: int) -> _T:
    """``build_top_k_mask`` (deepseek4.cpp): the mask FILLed with -inf, seen as rows of one value, zeros (F16
    with flash attention, a FILLed leaf) SET at the top-k rows, seen back as the mask, plus the mask."""
    n_kv, tps, ns = mask.ne[0], mask.ne[1], mask.ne[3]
    filled = g.new(f"csa_mask_fill-{il}", "FILL", mask.type, mask.ne, mask)
    rows = g.view(filled, (1, n_kv, tps, ns), (filled.nb[0], filled.nb[0], filled.nb[1], filled.nb[2]))
    k = top_k.ne[0]
    top3 = g.view(
        top_k, (k, top_k.ne[1], top_k.ne[3], 1), (top_k.nb[0], top_k.nb[1], top_k.nb[2], top_k.ne[3] * top_k.nb[3])
    )
    zeros = g.leaf(f"zeros-{il}", "F16" if c.sp.flash_attn else "F32", (1, k, top3.ne[1], top3.ne[2]))
    zeros = g.new(f"zeros-{il}", "FILL", zeros.type, zeros.ne, zeros)
    unmasked = _set_rows(g, rows, zeros, top3)
    back = g.view(unmasked, (n_kv, tps, 1, ns), (unmasked.nb[0], unmasked.nb[2], unmasked.nb[3], unmasked.nb[3]))
    return g.op(f"csa_top_k_mask-{il}", "ADD", back, mask)


def _mha(c: _Ctx, g: _Graph, q: _T, k: _T, mask: _T, sinks: _T, il: int) -> _T:
    """``build_attn_mha`` with K and V the same cache view (one head of ``head`` values) and the sinks
    (llama-graph.cpp): flash attention, or the scores, their softmax and the product with V's transposed copy."""
    ns, T = k.ne[3], c.n_tokens
    nh = q.ne[1]
    q = g.view(q, (q.ne[0], nh, T // ns, ns), (q.nb[0], q.nb[1], q.nb[2], q.nb[2] * (T // ns)))
    qp, kp, vp = g.permute(q, 0, 2, 1, 3), g.permute(k, 0, 2, 1, 3), g.permute(k, 0, 2, 1, 3)
    if c.sp.flash_attn:
        out = g.new(f"node_fa-{il}", "FLASH_ATTN_EXT", "F32", (k.ne[0], nh, T // ns, ns), qp, kp, vp, mask, sinks)
        cur = g.reshape(out, k.ne[0] * nh, T)
    else:
        kq = g.new(f"kq-{il}", "MUL_MAT", "F32", (k.ne[2], T // ns, nh, ns), kp, qp)
        kq = g.op(f"kq_soft_max-{il}", "SOFT_MAX", kq, mask, sinks)
        vt = g.permute(vp, 1, 0, 2, 3)  # ggml_transpose
        vc = g.new(f"v_cont-{il}", "CONT", vt.type, vt.ne, vt)
        kqv = g.new(f"kqv-{il}", "MUL_MAT", "F32", (k.ne[0], T // ns, nh, ns), vc, kq)
        perm = g.permute(kqv, 0, 2, 1, 3)
        cur = kqv_on_host(c, g.new(f"attn-{il}", "CONT", "F32", (k.ne[0] * nh, T), perm))
    g.expand(cur)
    return cur


def _attention(c: _Ctx, g: _Graph, d: _Dims, x: _T, il: int, inp: _Inp) -> _T:
    """``build_attention_impl`` (deepseek4.cpp) of a trunk layer, up to and including ``attn_output_b``."""
    hp, T, ns = c.hp, c.n_tokens, inp.ns
    nh = hp.n_head[il]
    p = f"blk.{il}."
    pos = c.pos
    assert pos is not None
    ratio = hp.dsv4_ratios[il] if il < len(hp.dsv4_ratios) else 0
    qr = g.mul_mat(f"qr-{il}", _w(c, p + "attn_q_a.weight", il), x)
    qr = _norm(c, g, qr, p + "attn_q_a_norm.weight", il)
    q = g.mul_mat(f"q-{il}", _w(c, p + "attn_q_b.weight", il), qr)
    q = g.op(f"q_norm-{il}", "RMS_NORM", g.reshape(q, d.head, nh, T))
    q = g.new(f"q-{il}", "ROPE", "F32", q.ne, q, pos)
    kv = g.mul_mat(f"kv-{il}", _w(c, p + "attn_kv.weight", il), x)
    kv = _norm(c, g, kv, p + "attn_kv_a_norm.weight", il)
    kv = g.reshape(kv, d.head, 1, T)
    kv = g.new(f"kv-{il}", "ROPE", "F32", kv.ne, kv, pos)
    if ratio == DSV4_CSA:
        _compress(c, g, x, il, inp, "csa", "attn_compressor", d.head)
        _compress(c, g, x, il, inp, "lid", "indexer_compressor", d.lid_head)
    elif ratio == DSV4_HCA:
        h = inp.hca
        new_kv, new_score = _state_new(c, g, x, "attn_compressor", h, il)
        st = _State(c, g, "hca", il, d.head, DSV4_HCA, ns)
        comp = _hca_pool(
            c,
            g,
            st.source(st.kv, new_kv),
            st.source(st.score, new_score),
            h,
            p + "attn_compressor_norm.weight",
            d.head,
            il,
        )
        comp = _rotate(g, comp, h.k_rot)
        cache, _ = inp.cache(c, g, "hca", il, d.head, h.cells)
        g.expand(_cpy_k(g, cache, comp, d.head, h.n_blocks, h.write_idxs, ns))
        st.persist(new_kv, new_score, h)
    top_k = _lid_top_k(c, g, d, inp, qr, x, il) if ratio == DSV4_CSA else None
    q, kv = _rotate(g, q, inp.k_rot), _rotate(g, kv, inp.k_rot)
    g.expand(q)
    g.expand(kv)
    cache, k = inp.cache(c, g, "raw", il, d.head, inp.n_raw)
    g.expand(_cpy_k(g, cache, kv, d.head, T, inp.k_idxs, ns))
    mask = inp.mask
    if ratio in (DSV4_CSA, DSV4_HCA):
        comp_inp = inp.csa if ratio == DSV4_CSA else inp.hca
        _, ck = inp.cache(c, g, "csa" if ratio == DSV4_CSA else "hca", il, d.head, comp_inp.cells)
        ck = g.view(ck, ck.ne, ck.nb)
        k = g.new(f"k_all-{il}", "CONCAT", k.type, (d.head, 1, k.ne[2] + ck.ne[2], ns), k, ck)
        if top_k is not None:
            comp_mask = _top_k_mask(c, g, comp_inp.mask, top_k, il)
        else:
            comp_mask = comp_inp.mask
        mask = g.new(
            f"kq_mask-{il}", "CONCAT", mask.type, (mask.ne[0] + comp_mask.ne[0], *mask.ne[1:]), mask, comp_mask
        )
    out = _mha(c, g, q, k, mask, _w(c, p + "attn_sinks.weight", il), il)
    out = _rotate(g, out, inp.k_rot)
    out = g.reshape(out, d.head, nh, T)
    out = g.new(f"attn_derope-{il}", "ROPE_BACK", "F32", out.ne, out, pos)
    group = nh * d.head // d.n_groups
    out = g.permute(g.reshape(out, group, d.n_groups, T), 0, 2, 1, 3)
    wo_a = _w(c, p + "attn_output_a.weight", il)  # [group, o_rank, n_groups] (TENSOR_ALLOW_RESHAPE)
    oa = g.new(f"attn_wo_a-{il}", "MUL_MAT", "F32", (d.o_rank, T, d.n_groups), wo_a, out)
    oa = g.permute(oa, 0, 2, 1, 3)
    oa = g.new(f"attn_wo_a-{il} (cont)", "CONT", "F32", (d.o_rank * d.n_groups, T), oa)
    return g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output_b.weight", il), oa)


def _hc_pre(c: _Ctx, g: _Graph, d: _Dims, x: _T, il: int, part: str) -> tuple[_T, _T, _T]:
    """``build_hc_pre`` (deepseek4.cpp) with the fused comb and reduction: the streams' RMS norm and mix, the pre
    and post weights (a view of the mix times a view of the scale plus a view of the base, SIGMOID, SCALE), the
    DSV4_HC_COMB of the whole mix, the DSV4_HC_PRE reduction of the streams. Returns (reduced, post, comb)."""
    E, nt = x.ne[0], x.ne[2]
    hc = d.hc
    pfx = f"blk.{il}.hc_{part}_"
    flat = g.op(f"hc_flat_norm-{il}", "RMS_NORM", g.reshape(x, hc * E, nt))
    mixes = g.mul_mat(f"hc_mixes-{il}", _w(c, pfx + "fn.weight", il), flat)
    scale, base = _w(c, pfx + "scale.weight", il), _w(c, pfx + "base.weight", il)

    def gate(post: bool) -> _T:
        cur = g.view(mixes, (hc, nt), (mixes.nb[0], mixes.nb[1]))
        cur = g.op(f"hc_gate-{il}", "MUL", cur, g.view(scale, (1,), (scale.nb[0],)))
        cur = g.op(f"hc_gate-{il}", "ADD", cur, g.view(base, (hc,), (base.nb[0],)))
        cur = g.op(f"hc_gate-{il}", "UNARY", cur)
        return g.op(f"hc_{'post' if post else 'pre'}-{il}", "SCALE", cur)

    pre = gate(False)
    post = gate(True)
    comb = g.new(f"hc_comb-{il}", "DSV4_HC_COMB", "F32", (hc, hc, nt), mixes, scale, base)
    return g.new(f"hc_{part}_pre-{il}", "DSV4_HC_PRE", "F32", (E, nt), x, pre), post, comb


def _hc_post(g: _Graph, x: _T, residual: _T, post: _T, comb: _T, name: str) -> _T:
    """``build_hc_post`` fused: DSV4_HC_POST [n_embd, hc, n_tokens]."""
    return g.new(name, "DSV4_HC_POST", "F32", residual.ne, x, residual, post, comb)


def _moe(c: _Ctx, g: _Graph, x: _T, tokens: _T, il: int, d: _Dims, mp: deepseek2.MoeParams) -> tuple[_T, Routed]:
    """``build_moe_ffn`` with sqrt-softplus gating (llama-graph.cpp:2044-2420): in a hash layer the experts of
    the token (GET_ROWS of ``ffn_gate_tid2eid``), else the top-k of the biased probabilities; the weights
    normalized and scaled, expanded early; the experts (their SWIGLU_CLAMP as a GLU); their weighted sum."""
    T, E, n_used = x.ne[1], x.ne[0], mp.n_used
    p = f"blk.{il}."
    logits = g.mul_mat(f"ffn_moe_logits-{il}", _w(c, p + "ffn_gate_inp.weight", il), x)
    n_exp = logits.ne[0]
    softplus = g.op(f"ffn_moe_softplus-{il}", "UNARY", logits)
    probs = g.op(f"ffn_moe_probs-{il}", "SQRT", softplus)
    probs3 = g.reshape(probs, 1, n_exp, T)
    members: list[_T] = []
    if il < d.n_hash:
        tid2eid = _w(c, p + "ffn_gate_tid2eid.weight", il)
        sel = g.new(f"ffn_moe_topk-{il}", "GET_ROWS", tid2eid.type, (n_used, T), tid2eid, tokens)
    else:
        biased = g.op(f"ffn_moe_probs_biased-{il}", "ADD", probs, _w(c, p + "exp_probs_b.bias", il))
        argsort = g.new(f"ffn_moe_argsort-{il}", "ARGSORT", "I32", (n_exp, T), biased)
        sel = g.view(argsort, (n_used, T), argsort.nb)
        members = [softplus, probs, probs3, biased, argsort, sel]
    weights = g.new(f"ffn_moe_weights-{il}", "GET_ROWS", "F32", (1, n_used, T), probs3, sel)
    members.append(weights)
    if mp.norm_w:
        norm = moe_weights_norm(g, weights, il)
        members += norm
        weights = norm[-1]
    if mp.scale not in (0.0, 1.0):
        weights = g.op(f"ffn_moe_weights_scaled-{il}", "SCALE", weights)
        members.append(weights)
    g.expand(weights)
    if il >= d.n_hash:  # CUDA's topk-moe fusion (ggml-cuda.cu:2875-3025: sqrt_softplus); none without ARGSORT
        g.fused.extend(topk_fusion(n_exp, members))
    x3 = g.reshape(x, E, 1, T)
    up, gate, act, experts = moe_swiglu_experts(c, g, x3, sel, il, n_used)
    return moe_weighted_sum(g, experts, weights, il, E, n_used), Routed(gate, up, act, x3, sel)


def _hc_head(c: _Ctx, g: _Graph, d: _Dims, x: _T) -> _T:
    """``build_hc_head`` (deepseek4.cpp): the streams' RMS norm and mix (``output_hc_fn``), MUL by the scale,
    ADD the base, SIGMOID, SCALE; the streams reduced unfused (``build_hc_pre`` with il -1: a MUL per stream
    of views, summed by ADDs)."""
    E, nt, hc = x.ne[0], x.ne[2], d.hc
    n = c.hp.n_layer
    flat = g.op("hc_head_norm", "RMS_NORM", g.reshape(x, hc * E, nt))
    mixes = g.mul_mat("hc_head_mixes", _w(c, "output_hc_fn.weight", n), flat)
    pre = g.op("hc_head_mul", "MUL", mixes, _w(c, "output_hc_scale.weight", n))
    pre = g.op("hc_head_add", "ADD", pre, _w(c, "output_hc_base.weight", n))
    pre = g.op("hc_head_pre", "SCALE", g.op("hc_head_sigmoid", "UNARY", pre))
    out: _T | None = None
    for _ in range(hc):
        xh = g.rows(x, E, nt)
        wh = g.view(pre, (1, nt), (pre.nb[0], pre.nb[1]))
        cur = g.op("hc_head_mul", "MUL", xh, wh)
        out = cur if out is None else g.op("hc_head", "ADD", out, cur)
    assert out is not None
    return out


def build(c: _Ctx, g: _Graph) -> _T:
    """deepseek4.cpp ``graph::graph``: the embedding repeated into the streams; per trunk layer the
    hyper-connected attention and FFN; the streams' rows picked, ``hc_head``, the output norm and the head."""
    hp = c.hp
    d = _dims(c)
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    ns = c.sp.n_seq_max  # llama_kv_cache_dsv4: one stream per sequence, whatever -kvu says
    mp = replace(deepseek2.moe_params(c), n_used=n_expert_used(c))
    last = hp.n_layer_main - 1
    tokens = g.input("inp_tokens", "I32", T)  # build_inp_embd without the mixed branch (llm_arch_supports_mixed_batch)
    inp_embd = g.new("embd", "GET_ROWS", "F32", (E, T), _w(c, "token_embd.weight", -1), tokens)
    g.expand(inp_embd)
    g.expand(g.input("inp_embd", "F32", E, T))  # the other branch ggml_build_forward_select keeps
    c.pos = g.input("inp_pos", "I32", T)
    out_ids = g.input("out_ids", "I32", n_out)
    inp = _Inp(c, g, d, ns)
    g.expand(inp.mask)
    x = g.new("hc_init", "REPEAT", inp_embd.type, (E, d.hc, T), g.reshape(inp_embd, E, 1, T))
    for p, il in enumerate(c.layers):
        if il > last:  # the NextN/MTP block: not part of the decoder graph
            continue
        g.at(p)
        residual = x
        cur, post, comb = _hc_pre(c, g, d, x, il, "attn")
        cur = _norm(c, g, cur, f"blk.{il}.attn_norm.weight", il)
        cur = _attention(c, g, d, cur, il, inp)
        x = _hc_post(g, cur, residual, post, comb, f"hc_attn_post-{il}")
        residual = x
        cur, post, comb = _hc_pre(c, g, d, x, il, "ffn")
        for t in (residual, post, comb):
            g.expand(t)
        cur = _norm(c, g, cur, f"blk.{il}.ffn_norm.weight", il)
        moe_out, routed = _moe(c, g, cur, tokens, il, d, mp)
        shexp = deepseek2.ffn(c, g, cur, il, "_shexp", routed if _same_glu(c, il) else None)
        cur = g.op(f"ffn_out-{il}", "ADD", moe_out, shexp)
        x = _hc_post(g, cur, residual, post, comb, f"l_last-{il}")
    g.at(GLOBAL)
    flat = g.reshape(x, E * d.hc, T)
    flat = g.new("hc_rows", "GET_ROWS", "F32", (E * d.hc, n_out), flat, out_ids)
    x = g.reshape(flat, E, d.hc, n_out)
    return output_head(c, g, _hc_head(c, g, d, x))


def _clamp(c: _Ctx, key: str, il: int) -> float:
    """A layer's SwiGLU clamp limit (``swiglu_clamp_exp`` / ``_shexp``: an array or one value; 0 when absent)."""
    md = model_of(c).metadata
    v = md.get(f"{c.hp.arch}.{key}")
    if v is None:
        return 0.0
    items = v.tolist() if hasattr(v, "tolist") else v
    if isinstance(items, list):
        return float(items[il]) if il < len(items) else 0.0
    return float(items) if isinstance(items, (int, float)) else 0.0


def _same_glu(c: _Ctx, il: int) -> bool:
    """Whether the routed and the shared experts' GLUs are the same kind (both clamped or neither: the shared
    expert's limit defaults to the routed one's), which CUDA's shared-expert grouping requires."""
    eps = 1e-6
    exp = _clamp(c, "swiglu_clamp_exp", il)
    md = model_of(c).metadata
    shexp = _clamp(c, "swiglu_clamp_shexp", il) if f"{c.hp.arch}.swiglu_clamp_shexp" in md else exp
    return (exp > eps) == (shexp > eps)


__all__ = ["build", "unbuildable"]


# the keys deepseek4.cpp's load_arch_hparams reads without a default (llama_model_loader::get_key throws without them)
_REQUIRED = (
    "attention.layer_norm_rms_epsilon",
    "attention.q_lora_rank",
    "attention.sliding_window",
    "expert_feed_forward_length",
    "expert_shared_count",
    "expert_weights_scale",
    "expert_weights_norm",
    "swiglu_clamp_exp",
    "attention.indexer.head_count",
    "attention.indexer.key_length",
    "attention.indexer.top_k",
    "attention.output_group_count",
    "attention.output_lora_rank",
    "attention.compress_rope_freq_base",
    "hyper_connection.count",
    "hyper_connection.sinkhorn_iterations",
    "hyper_connection.epsilon",
    "hash_layer_count",
    "attention.compress_ratios",
    "expert_gating_func",
)


def unbuildable(model: GGUFModel) -> str | None:
    """Why the deepseek4 graph cannot be built from this file (None when it can): the keys its loader requires,
    four hyper-connection streams
    and sqrt-softplus gating (what deepseek4.cpp accepts), the expert counts, output groups dividing the heads,
    equal K and V heads, a CSA layer (llama.cpp crashes without one) and the indexer's keys, and per trunk layer
    the tensors the graph reads (the token routing of the hash layers, the selection bias of the others, the
    compressors of the ratio-4 and ratio-128 layers, the indexer's of the ratio-4 ones)."""
    md = model.metadata
    a = model.architecture or ""

    def get(key: str) -> int:
        return md.get_int(f"{a}.{key}") or 0

    for key in _REQUIRED:
        if f"{a}.{key}" not in md:
            return f"the graph needs {a}.{key}, which the file lacks (deepseek4.cpp's loader requires it)"
    if get("hyper_connection.count") != 4:
        return f"the graph needs {a}.hyper_connection.count 4 (deepseek4.cpp asserts it)"
    if get("expert_gating_func") != SQRT_SOFTPLUS:
        return f"the graph needs {a}.expert_gating_func 4 (sqrt-softplus: deepseek4.cpp refuses others)"
    hp = hparams(model)
    n_main = hp.n_layer_main
    n_exp, n_used = get("expert_count"), get("expert_used_count")
    if not 0 < n_used <= n_exp <= 1024:
        return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
    n_groups, o_rank = get("attention.output_group_count"), get("attention.output_lora_rank")
    if n_groups <= 0 or o_rank <= 0 or any(h % n_groups for h in hp.n_head[:n_main]):
        return "the graph needs attention.output_group_count dividing the heads and a positive output_lora_rank"
    if hp.head_k != hp.head_v or hp.head_k_swa != hp.head_k:
        return "the graph needs attention.key_length = attention.value_length (deepseek4.cpp asserts it)"
    n_rot = get("rope.dimension_count")
    if not 0 < n_rot <= hp.head_k:
        return "the graph needs 0 < rope.dimension_count <= attention.key_length"
    ratios = hp.dsv4_ratios[:n_main]
    if DSV4_CSA not in hp.dsv4_ratios:  # llama-kv-cache.cpp: n_rot_k doubles while it divides 0 (the cache's head size)
        return (
            "deepseek4 files without a CSA (compress ratio 4) layer are not simulated: llama.cpp stops on a "
            "floating-point exception sizing the indexer cache's Hadamard matrix"
        )
    for key in ("attention.indexer.head_count", "attention.indexer.key_length", "attention.indexer.top_k"):
        if get(key) <= 0:
            return f"the graph needs a positive {a}.{key}"
    if get("attention.indexer.key_length") % 64:
        return "deepseek4 graphs whose indexer key length is not a multiple of 64 (its Hadamard rows) are not simulated"
    names = {t.name for t in model.tensors}
    need = ["token_embd.weight", "output_norm.weight", "output.weight"]
    need += [f"output_hc_{n}.weight" for n in ("fn", "base", "scale")]
    n_hash = get("hash_layer_count")
    for il in range(min(n_main, 513)):
        roles = ["attn_norm", "attn_sinks", "attn_q_a", "attn_q_a_norm", "attn_q_b", "attn_kv", "attn_kv_a_norm"]
        roles += ["attn_output_a", "attn_output_b", "ffn_norm", "ffn_gate_inp"]
        roles += [f"hc_{part}_{n}" for part in ("attn", "ffn") for n in ("fn", "base", "scale")]
        roles += ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]
        roles += ["ffn_gate_tid2eid"] if il < n_hash else []
        if ratios[il]:
            roles += [f"attn_compressor_{n}" for n in ("kv", "gate", "ape", "norm")]
        if ratios[il] == DSV4_CSA:
            roles += ["indexer.proj", "indexer.attn_q_b"]
            roles += [f"indexer_compressor_{n}" for n in ("kv", "gate", "ape", "norm")]
        need += [f"blk.{il}.{r}.weight" for r in roles]
        if il >= n_hash:
            need.append(f"blk.{il}.exp_probs_b.bias")
    missing = next((n for n in need if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
