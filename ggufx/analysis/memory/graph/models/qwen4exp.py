"""The ``qwen4exp`` hybrid (src/models/qwen4exp.cpp): ``qwen35moe``'s layers (gated M-RoPE attention every
``full_attention_interval``-th layer, Gated DeltaNet layers between them with the fused ``GATED_DELTA_NET``
node, experts with a sigmoid-gated shared expert) between low-rank hyper-connection mixers instead of norms:
``hyper_connection.count`` residual streams ``[n_embd, hc, n_tokens]``, mixed into one before each block
(``build_hc_mix``: a grouped RMS norm, a low-rank SiLU gate, the fused ``DSV4_HC_PRE`` mean of the gated
streams) and scattered back after it (``build_hc_combine``: the fused ``DSV4_HC_POST``); the final mixer, the
output norm, unfused. Its Gated DeltaNet writes the convolution's last columns through a ``CONT``
(``build_conv_state_at``) and gates its norm with a sigmoid.

With a k-pool (``attention.compress_ratios``: QSA) the attention layers whose ratio is above 0 attend over
the selection ``build_qsa_sel`` makes (:func:`_qsa_sel`: the pooled keys over the indexer cache of
``llama_memory_hybrid_idx``, the lightning indexer, the mask scatter), sized for the reserve's full memory
context (every pool new). A PLE module (``ple.layers``: n-gram embeddings, :func:`_ple`) mixes into the streams
before its layer's mixer.
On the CPU build llama.cpp's ``resolve_fused_ops`` keeps the fused hyper-connection ops on (one device)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _norm, _w, model_of
from ggufx.analysis.memory.graph.models._dense import tied_head
from ggufx.analysis.memory.graph.models.deepseek2 import cache_write
from ggufx.analysis.memory.graph.models.hy_v4 import _cast
from ggufx.analysis.memory.graph.models.qwen3next import _ffn, gdn_dims, n_expert_used, recurrent_layer
from ggufx.analysis.memory.graph.models.qwen35 import _copy_into, _gated_attn, _gated_delta_net, _gdn_dims, _rs
from ggufx.analysis.memory.graph.models.qwen35moe import expert_shapes
from ggufx.analysis.memory.hparams import hparams
from ggufx.format.values import GGUFArray
from ggufx.model import GGUFModel


def _hc(c: _Ctx) -> int:
    """``hyper_connection.count``: the residual streams."""
    assert c.model is not None
    n = c.model.metadata.get_int(f"{c.hp.arch}.hyper_connection.count")
    assert n is not None and n > 1
    return n


def hc_mix(c: _Ctx, g: _Graph, x: _T, prefix: str, il: int, fused: bool, inject: bool) -> tuple[_T, _T | None]:
    """``build_hc_mix`` (qwen4exp.cpp:313-366): the streams ``x`` ``[n_embd, hc, T]`` RMS-normed per stream
    (``ggml_rms_norm``, not ``build_norm``: nothing pinned) times the ``[n_embd, hc]`` gammas, a low-rank gate
    (down, SCALE, SiLU, up), the gated mean of the streams (``DSV4_HC_PRE`` where ``fused``: the layers, il >= 0;
    else SIGMOID, MUL, one CONT and ADDs of the stream views, SCALE), and the ``[hc, T]`` scatter weights
    (``inject``: ``{prefix}inject``, not expanded here)."""
    hc, E = _hc(c), c.hp.n_embd
    nt = x.ne[2]
    il_w = il if il >= 0 else c.hp.n_layer
    xn = g.op(f"hc_rms-{il}", "RMS_NORM", x)
    xn = g.op(f"hc_norm-{il}", "MUL", xn, _w(c, prefix + "norm.weight", il_w))
    xn = g.reshape(xn, hc * E, nt)
    lo = g.mul_mat(f"hc_lo-{il}", _w(c, prefix + "down.weight", il_w), xn)
    lo = g.op(f"hc_lo_silu-{il}", "UNARY", g.op(f"hc_lo_scaled-{il}", "SCALE", lo))
    gate = g.mul_mat(f"hc_gate-{il}", _w(c, prefix + "up.weight", il_w), lo)
    if fused:
        x3, gate3 = g.reshape(xn, E, hc, nt), g.reshape(gate, E, hc, nt)
        mixed = g.new(f"hc_mixed-{il}", "DSV4_HC_PRE", "F32", (E, nt), x3, gate3)
    else:
        gated = g.op(f"hc_gated-{il}", "MUL", xn, g.op(f"hc_gate_sigmoid-{il}", "UNARY", gate))
        gated = g.reshape(gated, E, hc, nt)
        row = gated.nb[1] * hc
        mixed = g.new(f"hc_mixed-{il}", "CONT", "F32", (E, nt), g.view(gated, (E, nt), (4, row)))
        for _ in range(1, hc):
            mixed = g.op(f"hc_mixed-{il}", "ADD", mixed, g.view(gated, (E, nt), (4, row)))
        mixed = g.op(f"hc_mixed-{il}", "SCALE", mixed)
    w = g.mul_mat(f"hc_inject-{il}", _w(c, prefix + "inject.weight", il_w), xn) if inject else None
    return mixed, w


def hc_combine(g: _Graph, residual: _T, block_out: _T, inject: _T, il: int) -> _T:
    """``build_hc_combine`` (qwen4exp.cpp:368-397) fused (``DSV4_HC_POST``, a layer's): the scatter weights
    ``2 sigmoid(inject / hc)`` (SCALE, SIGMOID, SCALE), each stream plus its weight times the block's output."""
    w = g.op(f"hc_w-{il}", "SCALE", g.op(f"hc_w-{il}", "UNARY", g.op(f"hc_w-{il}", "SCALE", inject)))
    return g.new(f"hc_combine-{il}", "DSV4_HC_POST", "F32", residual.ne, block_out, residual, w)


def compress_ratios(model: GGUFModel) -> list[int]:
    """``attention.compress_ratios`` per block (none: every one 0)."""
    v = model.metadata.get(f"{model.architecture}.attention.compress_ratios")
    if isinstance(v, GGUFArray):
        return [int(x) for x in v.tolist()]
    return [int(v)] * (model.metadata.get_int(f"{model.architecture}.block_count") or 0) if isinstance(v, int) else []


@dataclass(slots=True)
class _Kpool:
    """``build_inp_kpool`` (qwen4exp.cpp:695-736) over the reserve's full memory context
    (llama-memory-hybrid-idx.cpp:515-535): every pool the cache can hold, ``n_pool_real`` = cells per stream /
    kpool x n_seq_max, all of them new; ``n_pool`` = ``kpool_pad`` (one more, padded to 64); the top pools plus
    the tail: ``n_sel`` = kpool x min(n_pool, top_k / kpool) + kpool - 1."""

    kpool: int
    idx_dim: int
    n_pool: int
    n_new: int
    n_top: int
    k_idxs: _T
    pool_cells: _T
    pool_idxs: _T
    pool_mask: _T
    tail_idxs: _T
    new_pool_idxs: _T
    new_pool_rep: _T
    new_pool_pos: _T

    @property
    def n_sel(self) -> int:
        return self.kpool * self.n_top + self.kpool - 1


def _inp_kpool(c: _Ctx, g: _Graph, kpool: int) -> _Kpool:
    assert c.model is not None
    md, a = c.model.metadata, c.hp.arch
    idx_dim = md.get_int(f"{a}.attention.indexer.key_length") or 0
    top_k = md.get_int(f"{a}.attention.indexer.top_k") or 0
    T = c.n_tokens
    n_pool_real = c.sp.n_kv // kpool * c.sp.n_seq_max
    n_pool = max(64, -(-(n_pool_real + 1) // 64) * 64)  # kpool_pad
    n_new = max(n_pool_real, 1)
    k_idxs = g.input("idx_inp_k_idxs", "I64", T)
    pool_cells = g.input("pool_cells", "I32", n_pool)
    pool_idxs = g.input("pool_idxs", "I32", kpool, n_pool)
    pool_mask = g.input("pool_mask", "F16", n_pool, T)
    tail_idxs = g.input("tail_idxs", "I32", kpool - 1, T)
    for t in (pool_cells, pool_idxs, pool_mask, tail_idxs):  # kept allocated: set_input fills them all
        g.expand(t)
    new_idxs = g.input("new_pool_idxs", "I32", kpool, n_new)
    new_rep = g.input("new_pool_rep", "I64", n_new)
    new_pos = g.input("new_pool_pos", "I32", 4 * n_new)
    n_top = min(n_pool, top_k // kpool)
    return _Kpool(
        kpool,
        idx_dim,
        n_pool,
        n_new,
        n_top,
        k_idxs,
        pool_cells,
        pool_idxs,
        pool_mask,
        tail_idxs,
        new_idxs,
        new_rep,
        new_pos,
    )


def _qsa_sel(c: _Ctx, g: _Graph, cur: _T, il: int, kp: _Kpool, kq_mask: _T) -> _T:
    """``build_qsa_sel`` (qwen4exp.cpp:740-878): the raw indexer key (next to a zero pooled slot) written into
    the indexer cache; the new pools' members gathered, summed (CONT and ADDs of the member slices), scaled,
    RMS-normed and M-RoPE'd, scattered into their pooled slots; every pooled key gathered; the indexer query
    (normed, M-RoPE'd), the lightning indexer's scores with unit head weights (a FILL), the top pools, their
    member cells and the tail; the dead slots mapped to dump rows (a cumulative sum); zeros set at the
    selected cells of an all -inf mask of n_kv + n_sel columns per token, its first n_kv plus the causal mask."""
    T = c.n_tokens
    p = f"blk.{il}."
    d, kpool, n_new, n_pool, n_top, n_sel = kp.idx_dim, kp.kpool, kp.n_new, kp.n_pool, kp.n_top, kp.n_sel
    pos = c.pos
    assert pos is not None
    n_cells = c.sp.n_kv * c.sp.n_streams
    storage = g.leaf(f"cache_idx_k_l{il}", _kv_type(c), (2 * d, n_cells), buft=c.cache_buft[il])
    k_raw = g.mul_mat(f"indexer_k_raw-{il}", _w(c, p + "indexer.k_proj.weight", il), cur)
    pzero = g.new(f"pzero-{il}", "FILL", "F32", (d, T), g.leaf(f"pzero_leaf-{il}", "F32", (d, T)))
    packed = g.new(f"indexer_packed-{il}", "CONCAT", "F32", (2 * d, T), k_raw, pzero)
    g.expand(cache_write(c, g, storage, g.reshape(packed, 2 * d, 1, T), 2 * d, kp.k_idxs))
    row = storage.nb[1]
    key_gate = g.view(storage, (d, n_cells), (storage.nb[0], row))
    pooled_view = g.view(storage, (d, n_cells), (storage.nb[0], row))
    ids = g.reshape(kp.new_pool_idxs, kpool * n_new)
    rows = g.new(f"indexer_rows-{il}", "GET_ROWS", "F32", (d, kpool * n_new), key_gate, ids)
    rows = g.reshape(rows, d, kpool, n_new)
    pooled_new: _T | None = None
    for _ in range(kpool):
        piece = g.rows(rows, d, n_new)
        if pooled_new is None:
            pooled_new = g.new(f"indexer_pool-{il}", "CONT", "F32", (d, n_new), piece)
        else:
            pooled_new = g.op(f"indexer_pool-{il}", "ADD", pooled_new, piece)
    assert pooled_new is not None
    pooled_new = g.op(f"indexer_pool-{il}", "SCALE", pooled_new)
    pooled_new = _norm(c, g, pooled_new, p + "indexer.k_norm.weight", il)
    pooled_new = g.reshape(pooled_new, d, 1, n_new)
    pooled_new = g.new(f"indexer_pool_k_new-{il}", "ROPE", "F32", pooled_new.ne, pooled_new, kp.new_pool_pos)
    pooled_new = g.reshape(pooled_new, d, n_new)
    scatter = g.view(pooled_view, pooled_view.ne, pooled_view.nb, "SET_ROWS")
    scatter.src = [pooled_new, kp.new_pool_rep, pooled_view]
    g.expand(scatter)
    pooled = g.new(f"indexer_k-{il}", "GET_ROWS", "F32", (d, n_pool), pooled_view, kp.pool_cells)
    pooled = g.reshape(pooled, d, 1, n_pool)
    q = g.mul_mat(f"indexer_q-{il}", _w(c, p + "indexer.q_proj.weight", il), cur)
    q = g.reshape(q, d, q.ne[0] // d, T)
    q = _norm(c, g, q, p + "indexer.q_norm.weight", il)
    q = g.new(f"indexer_q-{il}", "ROPE", "F32", q.ne, q, pos)
    weights = g.new(f"indexer_w-{il}", "FILL", "F32", (q.ne[1], T), g.leaf(f"indexer_w_leaf-{il}", "F32", (q.ne[1], T)))
    score = g.new(f"indexer_score-{il}", "LIGHTNING_INDEXER", "F32", (n_pool, T), q, pooled, weights, kp.pool_mask)
    top = g.new(f"indexer_top_k-{il}", "TOP_K", "I32", (n_top, T), score)
    sel = g.new(f"indexer_sel_idx-{il}", "GET_ROWS", "I32", (kpool, n_top * T), kp.pool_idxs, g.reshape(top, n_top * T))
    sel = g.reshape(sel, kpool * n_top, T)
    sel = g.new(f"indexer_sel_idx-{il}", "CONCAT", "I32", (n_sel, T), sel, kp.tail_idxs)
    g.expand(sel)
    n_kv, mt = kq_mask.ne[0], kq_mask.type
    mask_all = g.new(f"mask_all-{il}", "FILL", mt, (n_kv + n_sel,), g.leaf(f"mask_all_leaf-{il}", mt, (n_kv + n_sel,)))
    mask_all = g.new(f"mask_all-{il}", "REPEAT", mt, (n_kv + n_sel, T), mask_all)
    mask_all = g.reshape(mask_all, 1, n_kv + n_sel, T)
    zeros = g.new(f"zeros-{il}", "FILL", mt, (n_sel,), g.leaf(f"zeros_leaf-{il}", mt, (n_sel,)))
    zeros = g.reshape(g.new(f"zeros-{il}", "REPEAT", mt, (n_sel, T), zeros), 1, n_sel, T)
    top_score = g.new(f"top_score-{il}", "GET_ROWS", "F32", (1, n_top, T), g.reshape(score, 1, n_pool, T), top)
    live_pool = g.op(f"live_pool-{il}", "CLAMP", g.op(f"live_pool-{il}", "SCALE", top_score))
    live_pool = g.new(f"live_pool-{il}", "REPEAT", "F32", (kpool, n_top, T), live_pool)
    live_pool = g.reshape(live_pool, kpool * n_top, T)
    live_tail = g.new(f"{kp.tail_idxs.name} (copy)", "CPY", "F32", kp.tail_idxs.ne, kp.tail_idxs)
    live_tail.src.append(live_tail)
    live_tail = g.op(f"live_tail-{il}", "CLAMP", g.op(f"live_tail-{il}", "SCALE", live_tail))
    live = g.new(f"live-{il}", "CONCAT", "F32", (n_sel, T), live_pool, live_tail)
    dump = g.op(f"dump-{il}", "FILL", live)
    dump = g.op(f"dump-{il}", "SCALE", g.op(f"dump-{il}", "CUMSUM", dump))
    idx_f = _cast(g, sel)
    idx_f = g.op(f"idx_f-{il}", "ADD", g.op(f"idx_f-{il}", "MUL", g.op(f"idx_f-{il}", "SUB", idx_f, dump), live), dump)
    sel_i = g.new(f"{idx_f.name} (copy)", "CPY", "I32", idx_f.ne, idx_f)
    sel_i.src.append(sel_i)
    scattered = g.view(mask_all, mask_all.ne, mask_all.nb, "SET_ROWS")
    scattered.src = [zeros, g.reshape(sel_i, n_sel, T, 1), mask_all]
    rs = scattered.nb[2]
    m = kq_mask.ne
    first = g.view(scattered, m, (scattered.nb[0], rs, rs * m[1], rs * m[1] * m[2]))
    return g.op(f"indexer_sel-{il}", "ADD", first, kq_mask)


def _ple_layers(model: GGUFModel) -> tuple[int, ...]:
    """``ple.layers`` (llama.cpp takes one, a Gated DeltaNet layer)."""
    v = model.metadata.get(f"{model.architecture}.ple.layers")
    return tuple(int(x) for x in v.tolist()) if isinstance(v, GGUFArray) else ()


def _md_int(c: _Ctx, suffix: str) -> int:
    assert c.model is not None
    return c.model.metadata.get_int(f"{c.hp.arch}.{suffix}") or 0


def _kv_type(c: _Ctx) -> str:
    from ggufx.analysis.memory.graph.ggml import _type

    return _type(c.sp.type_k).name


def _ple(c: _Ctx, g: _Graph, emb: _T, hidden: _T, il: int, s_copy: _T) -> _T:
    """``build_ple`` (qwen4exp.cpp:1374-1461): the n-gram embedding's key and value; the key and the streams
    RMS-normed per stream; a per-stream gate ``sigmoid(sgn(s) sqrt(|s|))`` of their scaled dot product; the
    value repeated over the streams times the gate, normed; its depthwise causal convolution over the history in
    ``cache_ple_r_l`` (``build_conv_state_at``: the history gathered, the new columns concatenated, the last ones
    written back through a CONT) as a sum of shifted copies (a CONT of each shift and of each kernel column, MUL,
    ADD), SiLU, a CONT; the streams plus the gated value plus the convolution."""
    assert c.model is not None
    md, a = c.model.metadata, c.hp.arch
    E, hc, T = c.hp.n_embd, _hc(c), c.n_tokens
    ns = c.sp.n_seq_max
    nst = T // ns
    hc_dim = hc * E
    kern, dil = md.get_int(f"{a}.ple.conv_kernel") or 0, md.get_int(f"{a}.ple.ngram_size") or 0
    hist = (kern - 1) * dil
    p = f"blk.{il}."
    cache_p = g.leaf(f"cache_ple_r_l{il}", "F32", (hist * hc_dim, ns), buft=c.cache_buft[il])
    state = _rs(c, g, cache_p, s_copy, hist * hc_dim)
    key = g.mul_mat(f"ple_key-{il}", _w(c, p + "ple_key.weight", il), emb)
    value = g.mul_mat(f"ple_value-{il}", _w(c, p + "ple_value.weight", il), emb)

    def grouped_norm(x: _T, w: str) -> _T:
        t = g.new(f"ple_rms-{il}", "RMS_NORM", "F32", (E, hc, T), g.reshape(x, E, hc, T))
        return g.op(f"ple_norm-{il}", "MUL", t, _w(c, p + w, il))

    key = grouped_norm(key, "ple_norm_key.weight")
    query = grouped_norm(hidden, "ple_norm_query.weight")
    dot = g.new(f"ple_s-{il}", "SUM_ROWS", "F32", (1, hc, T), g.op(f"ple_kq-{il}", "MUL", key, query))
    dot = g.op(f"ple_s-{il}", "SCALE", dot)
    mag = g.op(f"ple_mag-{il}", "SQRT", g.op(f"ple_mag-{il}", "CLAMP", g.op(f"ple_abs-{il}", "UNARY", dot)))
    gate = g.op(f"ple_gate-{il}", "UNARY", g.op(f"ple_gate-{il}", "MUL", g.op(f"ple_sgn-{il}", "UNARY", dot), mag))
    v3 = g.new(f"ple_v-{il}", "REPEAT", "F32", (E, hc, T), g.reshape(value, E, 1, T))
    gated = g.op(f"ple_gated_value-{il}", "MUL", v3, gate)
    normalized = g.reshape(grouped_norm(g.reshape(gated, hc_dim, T), "ple_norm_conv.weight"), hc_dim, T)
    x3 = g.reshape(normalized, hc_dim, nst, ns)
    conv = g.reshape(state, hist, hc_dim, ns)
    padded = g.new(f"ple_padded-{il}", "CONCAT", "F32", (hist + nst, hc_dim, ns), conv, g.permute(x3, 1, 0, 2, 3))
    last = g.view(padded, (hist, hc_dim, ns), padded.nb[:3])
    _copy_into(g, g.new(f"ple_tail-{il}", "CONT", "F32", last.ne, last), cache_p, ns)
    conv_w = _w(c, p + "ple_conv1d.weight", il)
    out: _T | None = None
    for _ in range(kern):
        shift = g.view(padded, (nst, hc_dim, ns), padded.nb[:3])
        shifted = g.new(f"ple_shift-{il}", "CONT", "F32", (hc_dim, nst, ns), g.permute(shift, 1, 0, 2, 3))
        wk = g.new(f"ple_wk-{il}", "CONT", conv_w.type, (1, hc_dim), g.view(conv_w, (1, hc_dim), conv_w.nb[:2]))
        wk = g.reshape(wk, hc_dim)
        if wk.type != "F32":
            wk = _cast(g, wk)
        term = g.op(f"ple_term-{il}", "MUL", shifted, wk)
        out = term if out is None else g.op(f"ple_conv-{il}", "ADD", out, term)
    assert out is not None
    out = g.new(f"ple_conv_out-{il}", "CONT", "F32", out.ne, g.op(f"ple_conv_silu-{il}", "UNARY", out))
    out = g.reshape(out, E, hc, T)
    return g.op(f"ple_out-{il}", "ADD", hidden, g.op(f"ple_out-{il}", "ADD", gated, out))


def _rows(g: _Graph, t: _T, out_ids: _T, name: str) -> _T:
    """``ggml_get_rows`` of the output tokens' columns of a 2-D tensor."""
    return g.new(name, "GET_ROWS", "F32", (t.ne[0], out_ids.ne[0]), t, out_ids)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (qwen4exp.cpp:399-516): the embeddings repeated into the streams, per layer the
    mixer, Gated DeltaNet or gated attention, the combine, the mixer, the experts, the combine (the last
    trunk layer keeps the output tokens' rows of its block output, scatter weights and streams before its
    first combine); the final mixer is the output norm (``result_norm``)."""
    hp, sp = c.hp, c.sp
    T, n_out = c.n_tokens, c.n_outputs
    E, hc = hp.n_embd, _hc(c)
    c.moe = n_expert_used(c)
    x = _inp_embd(c, g)
    s_copy = g.input("rs_s_copy", "I32", sp.n_seq_max)
    full = _attn_inp(c, g, sp.n_kv)
    ratios = compress_ratios(model_of(c))
    kpool = max(ratios, default=0)
    kp = _inp_kpool(c, g, kpool) if kpool > 0 else None
    c.pos = g.input("inp_pos", "I32", T * 4)  # M-RoPE: 4 positions per token
    out_ids = g.input("out_ids", "I32", n_out)
    ple_layers = _ple_layers(model_of(c))
    emb = None
    if ple_layers:  # build_inp_ple: the rows of every head of every token, expanded before the streams
        n_heads = (_md_int(c, "ple.ngram_size") - 1) * _md_int(c, "ple.heads_per_ngram")
        table = _w(c, "per_layer_token_embd.weight", -1)
        rows = g.input("ple_rows", "I32", n_heads * T)
        emb = g.new("ple_embd", "GET_ROWS", "F32", (table.ne[0], n_heads * T), table, rows)
        emb = g.reshape(emb, table.ne[0] * n_heads, T)
        g.expand(emb)
    res = g.new("hc_init", "REPEAT", "F32", (E, hc, T), g.reshape(x, E, 1, T))
    g.expand(res)
    last = hp.n_layer_main - 1
    for p, il in enumerate(c.layers):
        if il > last:  # the MTP block: not run by the main graph
            continue
        g.at(p)
        if il in ple_layers:
            assert emb is not None
            res = _ple(c, g, emb, res, il, s_copy)
        pre = f"blk.{il}.hc_attn_"
        cur, inject = hc_mix(c, g, res, pre, il, True, True)
        assert inject is not None
        g.expand(cur)
        if recurrent_layer(c, il):
            # qwen35's Gated DeltaNet (qwen4exp.cpp:1018-1156; its sigmoid gate of the output norm is the same
            # nodes as qwen35's SiLU), the conv tail written back through a CONT
            cur = _gated_delta_net(c, g, cur, il, s_copy, gdn_dims(c, il), cont_tail=True)
        elif kp is not None and ratios[il] > 0:  # QSA: dense attention over the selection's mask
            cur = _gated_attn(c, g, cur, il, replace(full, mask=_qsa_sel(c, g, cur, il, kp, full.mask)))
        else:
            cur = _gated_attn(c, g, cur, il, full)
        if il == last:
            cur = _rows(g, cur, out_ids, f"attn_out_rows-{il}")
            inject = _rows(g, inject, out_ids, f"hc_inject_rows-{il}")
            res = g.reshape(_rows(g, g.reshape(res, E * hc, res.ne[2]), out_ids, f"hc_rows-{il}"), E, hc, n_out)
        res = hc_combine(g, res, cur, inject, il)
        cur, inject = hc_mix(c, g, res, f"blk.{il}.hc_ffn_", il, True, True)
        assert inject is not None
        cur = _ffn(c, g, cur, il)
        res = hc_combine(g, res, cur, inject, il)
    g.at(GLOBAL)
    cur, _ = hc_mix(c, g, res, "output_hc_", -1, False, False)
    cur.flags |= OUTPUT  # result_norm: t_embd
    out_w = tied_head(c)
    logits = g.mul_mat("result_output", out_w, cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Why the qwen4exp graph cannot be built from this file (None when it can): the k-pool llama.cpp accepts
    (one ratio above 1 dividing the top-k), a PLE module on a Gated DeltaNet layer, the expert counts, the Gated
    DeltaNet dimensions and every tensor the main graph reads in the shape qwen4exp.cpp:170-297 creates it
    (llama.cpp refuses the file otherwise)."""
    md = model.metadata
    a = "qwen4exp"
    ratios = [r for r in compress_ratios(model) if r]
    top_k = md.get_int(f"{a}.attention.indexer.top_k") or 0
    if ratios and (len(set(ratios)) > 1 or ratios[0] < 2 or top_k % ratios[0]):  # qwen4exp.cpp:63-79
        return "the graph needs one attention.compress_ratios above 1 that divides attention.indexer.top_k"
    if (md.get_int(f"{a}.attention.indexer.key_length") or 0) <= 0 or top_k <= 0:
        return "the graph needs attention.indexer.key_length and attention.indexer.top_k above 0"
    n_expert = md.get_int(f"{a}.expert_count") or 0
    n_used = md.get_int(f"{a}.expert_used_count") or 0
    if not 0 < n_used <= n_expert <= 1024:
        return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
    hc = md.get_int(f"{a}.hyper_connection.count") or 0
    if hc <= 1:  # qwen4exp.cpp:47-50
        return "the graph needs hyper_connection.count above 1"
    d = _gdn_dims(model)
    if isinstance(d, str):
        return d
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    extra = next((n for n in tensors if n.endswith((".scale", "gate_up_exps.weight"))), None)
    if extra:
        return f"qwen4exp graphs with tensor {extra} are not simulated"
    hp = hparams(model)
    E, hd = hp.n_embd, hp.head_k
    if hd <= 0 or hd != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length > 0 (qwen4exp.cpp:402)"
    if len(tensors.get("token_embd.weight", ())) != 2 or tensors["token_embd.weight"][0] != E:
        return f"the graph needs a two-dimensional tensor token_embd.weight of {E} columns"
    down = tensors.get("output_hc_down.weight", ())
    if len(down) != 2 or down[0] != hc * E:
        return f"the graph needs a two-dimensional tensor output_hc_down.weight of {hc * E} columns"
    lr = down[1]
    key_dim, value_dim = d.head_k * d.n_k_heads, d.head_v * d.n_v_heads
    recurrent = [k.is_recurrent for k in layer_kinds(model)]
    shapes: dict[str, tuple[int, ...]] = {"output_hc_up.weight": (lr, hc * E)}
    for il in range(hp.n_layer_main):
        p = f"blk.{il}."
        nh, nkv = hp.n_head[il], hp.n_head_kv[il]
        w: dict[str, tuple[int, ...]] = {}
        for part in ("attn", "ffn"):
            w |= {f"hc_{part}_down.weight": (hc * E, lr), f"hc_{part}_up.weight": (lr, hc * E)}
            w |= {f"hc_{part}_inject.weight": (hc * E, hc)}
        if recurrent[il]:
            w |= {"attn_qkv.weight": (E, 2 * key_dim + value_dim), "attn_gate.weight": (E, value_dim)}
            w |= {"ssm_conv1d.weight": (d.d_conv, 2 * key_dim + value_dim), "ssm_dt.bias": (d.n_v_heads,)}
            w |= {"ssm_a": (d.n_v_heads,), "ssm_beta.weight": (E, d.n_v_heads), "ssm_alpha.weight": (E, d.n_v_heads)}
            w |= {"ssm_norm.weight": (d.head_v,), "ssm_out.weight": (value_dim, E)}
        elif nh <= 0 or nkv <= 0 or nh % nkv:
            return f"the graph needs attention heads in layer {il} (head_count a multiple of head_count_kv)"
        else:
            w |= {"attn_q.weight": (E, 2 * hd * nh), "attn_k.weight": (E, hd * nkv), "attn_v.weight": (E, hd * nkv)}
            w |= {"attn_output.weight": (hd * nh, E), "attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,)}
        experts = expert_shapes(tensors, p, E, n_expert)  # qwen35moe's routed and shared experts
        if isinstance(experts, str):
            return experts
        shapes |= {p + n: shape for n, shape in (w | experts).items()}
    for il in _ple_layers(model):  # qwen4exp.cpp:189-205, :261-268
        if not (0 <= il < hp.n_layer_main and recurrent[il]):
            return f"PLE layer {il} is not a Gated DeltaNet layer of the trunk (llama.cpp refuses the file)"
        p = f"blk.{il}."
        ple = tensors.get("per_layer_token_embd.weight", ())
        if (
            len(ple) != 2
            or ple[0] * ((md.get_int(f"{a}.ple.ngram_size") or 0) - 1) * (md.get_int(f"{a}.ple.heads_per_ngram") or 0)
            != E
        ):
            return "the graph needs per_layer_token_embd.weight rows of n_embd / PLE heads values"
        kern = md.get_int(f"{a}.ple.conv_kernel") or 0
        shapes |= {p + "ple_key.weight": (E, hc * E), p + "ple_value.weight": (E, E)}
        shapes |= {p + "ple_conv1d.weight": (kern, hc * E)}
        for n in ("key", "query", "conv"):
            if p + f"ple_norm_{n}.weight" not in tensors:
                return f"the graph needs tensor {p}ple_norm_{n}.weight, which the file lacks"
    for name, shape in shapes.items():
        if name not in tensors:
            return f"the graph needs tensor {name}, which the file lacks"
        if tensors[name] != shape:
            return f"the graph needs tensor {name} of shape {list(shape)}, not {list(tensors[name])}"
    norms = [f"blk.{il}.hc_{part}_norm.weight" for il in range(hp.n_layer_main) for part in ("attn", "ffn")]
    for name in ("output_hc_norm.weight", *norms):
        if name not in tensors:
            return f"the graph needs tensor {name}, which the file lacks"
    return None
