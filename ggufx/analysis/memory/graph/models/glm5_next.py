"""``glm5-next`` (src/models/glm5-next.cpp, GLM-5.3-Flash): Kimi-delta-attention layers (no KV heads: the Q, K
and V short convolutions, the fused ``GATED_DELTA_NET``, the low-rank ``g_a``/``g_b`` output gate; the decay gate
with or without ``kda.gate_lower_bound``) and nope-only MLA layers on a K-only cache of the ``kv_lora_rank``
latent, sparse over a k-pool DSA indexer (``build_kpool_select``: the token keys and pool gates written into
``llama_memory_hybrid_idx``'s indexer cache, the new pools softmax-pooled and scattered into their pooled
slots, every pooled key gathered, the fused lightning indexer, the top pools ordered by score, their member
cells and the tail; the selection scattered as zeros into an all ``-inf`` mask), between mHC residual streams
(``build_hc_pre``: an RMS norm over the streams, the mixes, the pre and post weights, the fused ``DSV4_HC_COMB``
Sinkhorn and ``DSV4_HC_PRE``; ``build_hc_post``: the fused ``DSV4_HC_POST``), a dense first layer then
sigmoid-routed experts with the selection bias plus the shared expert; the output rows picked before the
streams' mean, the output norm. The NextN block is not run by the main graph.

On the CPU build llama.cpp's ``resolve_fused_ops`` keeps the fused ops on (one device). The reserve sizes the
k-pool inputs for its full memory context (every pool new). Micro-batches of at most 16 tokens over a context
wider than the selection take the gather path (``inp_kpool->gather``: the selected latents gathered from the
MLA cache, attended per token)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph, _type
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _norm, _w, model_of
from ggufx.analysis.memory.graph.models import qwen3next
from ggufx.analysis.memory.graph.models._dense import tied_head
from ggufx.analysis.memory.graph.models.deepseek2 import (
    SIGMOID,
    cache_k,
    cache_write,
    ffn,
    mla_mha,
    moe_ffn,
    moe_params,
)
from ggufx.analysis.memory.graph.models.hy_v4 import _cast
from ggufx.analysis.memory.graph.models.kimi_k3 import kda
from ggufx.analysis.memory.graph.models.kimi_linear import _kda_dims
from ggufx.analysis.memory.graph.sched import OP_OFFLOAD_MIN_BATCH, _Sched
from ggufx.analysis.memory.hparams import hparams
from ggufx.analysis.memory.placement import host_buft
from ggufx.format.values import GGUFArray
from ggufx.model import GGUFModel

HC_MULT = 4  # glm5-next.cpp load_arch_hparams: mHC with hc_mult != 4 is not supported


def _key(c: _Ctx, suffix: str) -> object:
    return qwen3next.file_value(c, f"{c.hp.arch}.{suffix}")


def _int(c: _Ctx, suffix: str) -> int:
    v = _key(c, suffix)
    assert isinstance(v, int)  # unbuildable() checked it
    return v


# -- mHC --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fused:
    """``cparams.fused_dsv4_hc_pre``/``_comb``/``_post`` as ``resolve_fused_ops`` leaves them (:func:`fused_hc`)."""

    pre: bool = True
    comb: bool = True
    post: bool = True


ALL_FUSED = Fused()


def hc_pre(c: _Ctx, g: _Graph, x: _T, part: str, il: int, fused: Fused = ALL_FUSED) -> tuple[_T, _T, _T]:
    """``build_hc_pre`` (glm5-next.cpp:389-508): the streams ``[n_embd, hc, T]`` flattened and RMS-normed, the
    ``hc_{part}_fn`` mixes ``[(2 + hc) hc, T]``; the pre weights (a view times the scale, plus the base, SIGMOID,
    SCALE) and the post weights (the same, not expanded here); the Sinkhorn comb ``[hc, hc, T]`` (the fused
    ``DSV4_HC_COMB``, or its ops); the mixed stream ``[n_embd, T]`` (the fused ``DSV4_HC_PRE``, or per stream a
    MUL by its weight, summed)."""
    E, hc = c.hp.n_embd, HC_MULT
    nt = x.ne[2]
    p = f"blk.{il}.hc_{part}_"
    flat = g.op(f"hc_flat_norm-{il}", "RMS_NORM", g.reshape(x, hc * E, nt))
    mixes = g.mul_mat(f"hc_mixes-{il}", _w(c, p + "fn.weight", il), flat)
    scale, base = _w(c, p + "scale.weight", il), _w(c, p + "base.weight", il)

    def weights(name: str) -> _T:
        w = g.view(mixes, (hc, nt), mixes.nb[:2])
        w = g.op(f"{name}-{il}", "ADD", g.op(f"{name}-{il}", "MUL", w, g.view(scale, (1,))), g.view(base, (hc,)))
        return g.op(f"{name}-{il}", "SCALE", g.op(f"{name}-{il}", "UNARY", w))

    pre = weights("hc_pre")
    post = weights("hc_post")
    if fused.comb:
        comb = g.new(f"hc_comb-{il}", "DSV4_HC_COMB", "F32", (hc, hc, nt), mixes, scale, base)
    else:
        comb = _sinkhorn(c, g, mixes, scale, base, il)
    if fused.pre:
        return g.new(f"hc_{part}_pre-{il}", "DSV4_HC_PRE", "F32", (E, nt), x, pre), post, comb
    out: _T | None = None
    for _ in range(hc):  # glm5-next.cpp:405-412
        xh = g.rows(x, E, nt)
        cur = g.op(f"hc_{part}_pre-{il}", "MUL", xh, g.view(pre, (1, nt), pre.nb[:2]))
        out = cur if out is None else g.op(f"hc_{part}_pre-{il}", "ADD", out, cur)
    assert out is not None
    return out, post, comb


def _sinkhorn(c: _Ctx, g: _Graph, mixes: _T, scale: _T, base: _T, il: int) -> _T:
    """The comb without ``DSV4_HC_COMB`` (glm5-next.cpp:498-503, ``build_hc_sinkhorn`` :416-448): the comb's
    view of the mixes times the scale plus the base, ``[hc, hc, T]``; a row softmax plus eps, one column
    normalization, then ``sinkhorn_iterations`` - 1 row and column normalizations."""
    hc, nt = HC_MULT, mixes.ne[1]
    w = g.view(mixes, (hc * hc, nt), mixes.nb[:2])
    w = g.op(f"hc_comb-{il}", "ADD", g.op(f"hc_comb-{il}", "MUL", w, g.view(scale, (1,))), g.view(base, (hc * hc,)))
    comb = g.op(f"hc_comb-{il}", "SOFT_MAX", g.reshape(w, hc, hc, nt))
    eps = g.new(f"hc_eps-{il}", "FILL", "F32", (1,), g.leaf(f"hc_eps_leaf-{il}", "F32", (1,)))
    comb = g.op(f"hc_comb-{il}", "ADD", comb, eps)

    def normed(cur: _T, cols: bool) -> _T:
        src = g.new(f"hc_comb-{il}", "CONT", "F32", cur.ne, g.permute(cur, 1, 0, 2, 3)) if cols else cur
        total = g.new(f"hc_comb-{il}", "SUM_ROWS", "F32", (1, hc, nt), src)
        total = g.op(f"hc_comb-{il}", "ADD", total, eps)
        return g.op(f"hc_comb-{il}", "DIV", cur, g.permute(total, 1, 0, 2, 3) if cols else total)

    comb = normed(comb, True)
    iters = _key(c, "hyper_connection.sinkhorn_iterations")
    for _ in range(1, iters if isinstance(iters, int) else 1):
        comb = normed(normed(comb, False), True)
    return comb


def hc_post(g: _Graph, x: _T, residual: _T, post: _T, comb: _T, name: str, fused: Fused = ALL_FUSED) -> _T:
    """``build_hc_post`` (glm5-next.cpp:511-545), ``[n_embd, hc, T]``: the fused ``DSV4_HC_POST``, or per
    destination stream the sub-layer's output times its post weight plus each source stream times its comb
    weight (MUL, then MUL and ADD per source), the streams CONCATenated."""
    if fused.post:
        return g.new(name, "DSV4_HC_POST", "F32", residual.ne, x, residual, post, comb)
    E, hc, nt = residual.ne[0], residual.ne[1], residual.ne[2]
    out: _T | None = None
    for _ in range(hc):
        cur = g.op(name, "MUL", x, g.view(post, (1, nt), post.nb[:2]))
        for _ in range(hc):
            res = g.rows(residual, E, nt)
            cur = g.op(name, "ADD", cur, g.op(name, "MUL", res, g.rows(comb, 1, nt)))
        cur = g.reshape(cur, E, 1, nt)
        out = cur if out is None else g.new(name, "CONCAT", "F32", (E, out.ne[1] + 1, nt), out, cur)
    assert out is not None
    return out


# the fused HC ops resolve_fused_ops checks, in its order (llama-context.cpp:577-583)
_PROBES = (("pre", "DSV4_HC_PRE"), ("comb", "DSV4_HC_COMB"), ("post", "DSV4_HC_POST"))
_RESOLVED: weakref.WeakKeyDictionary[GGUFModel, dict[object, Fused]] = weakref.WeakKeyDictionary()


def _gpu_names(c: _Ctx) -> list[str]:
    """The scheduler's GPUs in order (``c.host`` of them): the devices holding layers, weights or caches; where
    they are named as ggufx names them (``CUDA0``, ``CUDA1``...), every index up to ``c.host`` (a GPU that holds
    nothing still takes its place, and op offload's first GPU)."""
    held = {b for b in (*c.layer_buft, *c.cache_buft, *(b for _, b in c.weights)) if b and not _host(b)}
    prefixes = {b.rstrip("0123456789") for b in held}
    if len(prefixes) == 1 and all(b[len(p) :].isdigit() for b in held for p in prefixes):
        (prefix,) = prefixes
        return [f"{prefix}{i}" for i in range(c.host)]
    return sorted(held)


def _host(buft: str) -> bool:
    return buft.startswith("CPU") or buft.endswith("_Host")


def fused_hc(c: _Ctx) -> Fused:
    """``resolve_fused_ops``' DeepSeek V4 HC probes (llama-context.cpp:509-583): for the pre, comb and post ops
    in turn (each probe built with the ones before it resolved), the graph of one token per sequence is reserved
    and the fused op kept only if the scheduler puts every layer's fused node on that layer's device
    (``model.dev_layer(il)``, :func:`hc_mismatch`). On the CPU build (one device) they stay on."""
    if c.host <= 0:
        return ALL_FUSED
    model = model_of(c)
    key = (tuple(c.layer_buft), tuple(c.cache_buft), c.sp, c.host)
    done = _RESOLVED.get(model, {}).get(key)
    if done is not None:
        return done
    flags = ALL_FUSED
    for field, op in _PROBES:
        if hc_mismatch(c, flags, op) is not None:
            flags = replace(flags, **{field: False})
    _RESOLVED.setdefault(model, {})[key] = flags
    return flags


def hc_mismatch(c: _Ctx, fused: Fused, op: str) -> int | None:
    """The first layer whose fused ``op`` node the scheduler puts on another device than the layer's in the
    probe graph of ``resolve_fused_ops`` (one token per sequence, every layer, the HC ops fused as ``fused``
    says); None where every one is on its layer's device. At ``-ngl 3`` of GLM5-Next the last host layer's
    ``DSV4_HC_POST`` has no weight among its sources and the next layer's CUDA nodes expand up onto it: llama.cpp
    warns "layer 4 is assigned to device CPU but fused DeepSeek V4 HC post is assigned to device CUDA0" and
    builds every layer's post unfused."""
    gpus = _gpu_names(c)
    if not gpus:  # no layer, cache or weight on a GPU (-ngl 0): the probe's few tokens stay below op offload's batch,
        return None  # so every node runs on the host, each layer's device
    n = c.sp.n_seq_max
    device = [gpus.index(b) if b in gpus else len(gpus) for b in c.layer_buft]
    full = all(d < len(gpus) for d in device)
    pin = device if n < OP_OFFLOAD_MIN_BATCH or full else [-1] * len(device)  # graph_get_cb (llama-context.cpp)
    probe = replace(c, n_tokens=n, n_outputs=n, pin=pin, layers=list(range(c.hp.n_layer)), pos=None)
    weights = list(c.weights.values())
    kept = [w.backend for w in weights]
    try:
        g = _Graph()
        g.expand(_build(probe, g, fused))
        _Sched(gpus, host_buft(gpus[0]), 1).assign(g)
    finally:  # the weights' backends: the simulation's scheduler sets them
        for w, b in zip(weights, kept, strict=True):
            w.backend = b
    for node in g.nodes:
        if node.op == op:
            il = int(node.name.rsplit("-", 1)[1])  # hc_attn_pre-4, hc_comb-4, l_out-4...
            if node.backend != device[il]:
                return il
    return None


# -- the KDA layer ----------------------------------------------------------------------------------------------


# -- the DSA layer ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Kpool:
    """``build_inp_kpool`` (glm5-next.cpp:287-362) over the reserve's full memory context
    (llama-memory-hybrid-idx.cpp:515-535): every pool the cache holds, ``n_pool_real`` = cells per stream /
    kpool x n_seq_max, all new; ``n_pool`` = ``kpool_pad`` (one more, padded to 64); ``n_sel`` = kpool x
    min(n_pool, top_k / kpool), plus kpool - 1 with ``kpool_select_tail`` (llama_hparams' default: on)."""

    kpool: int
    idx_dim: int
    n_pool: int
    n_new: int
    n_top: int
    n_sel: int
    k_idxs: _T
    pool_cells: _T
    pool_idxs: _T
    pool_mask: _T
    tail_idxs: _T
    gather_mask: _T
    new_pool_idxs: _T
    new_pool_rep: _T
    gather: bool  # micro-batches of at most 16 tokens over a context wider than the selection


def _inp_kpool(c: _Ctx, g: _Graph) -> _Kpool:
    T = c.n_tokens
    kpool, idx_dim, top_k = _int(c, "attention.indexer.kpool"), _int(c, "attention.indexer.key_length"), _top_k(c)
    n_pool_real = c.sp.n_kv // kpool * c.sp.n_seq_max
    n_pool = max(64, -(-(n_pool_real + 1) // 64) * 64)
    n_new = max(n_pool_real, 1)
    n_top = min(n_pool, top_k // kpool)
    tail = _key(c, "attention.indexer.kpool_select_tail")
    n_sel = kpool * n_top + (kpool - 1 if tail is None or tail else 0)  # llama_hparams: true unless the key says
    k_idxs = g.input("idx_inp_k_idxs", "I64", T)
    pool_cells = g.input("pool_cells", "I32", n_pool)
    pool_idxs = g.input("pool_idxs", "I32", kpool, n_pool)
    pool_mask = g.input("pool_mask", "F16", n_pool, T)  # the fused lightning indexer's F16 mask
    tail_idxs = g.input("tail_idxs", "I32", kpool - 1, T)
    for t in (pool_cells, pool_idxs, pool_mask, tail_idxs):
        g.expand(t)
    gather_mask = g.input("gather_mask", "F32", n_sel, 1, 1, T)
    g.expand(gather_mask)
    new_idxs = g.input("new_pool_idxs", "I32", kpool, n_new)
    new_rep = g.input("new_pool_rep", "I64", n_new)
    return _Kpool(
        kpool,
        idx_dim,
        n_pool,
        n_new,
        n_top,
        n_sel,
        k_idxs,
        pool_cells,
        pool_idxs,
        pool_mask,
        tail_idxs,
        gather_mask,
        new_idxs,
        new_rep,
        c.sp.n_ubatch <= 16 and c.sp.n_kv * c.sp.n_streams > top_k + kpool - 1,
    )


def _top_k(c: _Ctx) -> int:
    return _int(c, "attention.indexer.top_k")


def _kpool_select(c: _Ctx, g: _Graph, cur: _T, qr: _T, kq_mask: _T, il: int, kp: _Kpool) -> _T:
    """``build_kpool_select`` (glm5-next.cpp:782-925) on the scatter path: the mask ``[n_kv, T]`` of the
    selected cells plus the causal mask."""
    T = c.n_tokens
    p = f"blk.{il}.indexer"
    d, kpool, n_new, n_pool, n_top, n_sel = kp.idx_dim, kp.kpool, kp.n_new, kp.n_pool, kp.n_top, kp.n_sel
    n_cells = c.sp.n_kv * c.sp.n_streams
    storage = g.leaf(f"cache_idx_k_l{il}", _type(c.sp.type_k).name, (3 * d, n_cells), buft=c.cache_buft[il])
    iq = g.mul_mat(f"indexer_q-{il}", _w(c, p + ".attn_q_b.weight", il), qr)
    iq = g.reshape(iq, d, iq.ne[0] // d, T)
    ik = g.mul_mat(f"indexer_k-{il}", _w(c, p + ".attn_k.weight", il), cur)
    ik = g.op(f"norm-{il}", "NORM", ik)
    ik.backend = c.pin[il]
    ik = g.op(f"norm_w-{il}", "MUL", ik, _w(c, p + ".k_norm.weight", il))
    ik = g.op(f"indexer_k-{il}", "ADD", ik, _w(c, p + ".k_norm.bias", il))
    ig = g.mul_mat(f"indexer_gate-{il}", _w(c, p + "_compressor_gate.weight", il), cur)
    pzero = g.new(f"pzero-{il}", "FILL", "F32", (d, T), g.leaf(f"pzero_leaf-{il}", "F32", (d, T)))
    packed = g.new(f"packed-{il}", "CONCAT", "F32", (2 * d, T), ik, ig)
    packed = g.new(f"packed-{il}", "CONCAT", "F32", (3 * d, T), packed, pzero)
    g.expand(cache_write(c, g, storage, g.reshape(packed, 3 * d, 1, T), 3 * d, kp.k_idxs))
    row = storage.nb[1]
    key_gate = g.view(storage, (2 * d, n_cells), (storage.nb[0], row))
    pooled_view = g.view(storage, (d, n_cells), (storage.nb[0], row))
    rows = g.new(
        f"indexer_rows-{il}",
        "GET_ROWS",
        "F32",
        (2 * d, kpool * n_new),
        key_gate,
        g.reshape(kp.new_pool_idxs, kpool * n_new),
    )
    rows = g.reshape(rows, 2 * d, kpool, n_new)
    pk = g.view(rows, (d, kpool, n_new), rows.nb[:3])
    pg = g.view(rows, (d, kpool, n_new), rows.nb[:3])
    logits = g.op(f"pool_logits-{il}", "ADD", pg, _w(c, p + "_compressor_ape.weight", il))
    logits = g.new(f"pool_logits-{il}", "CONT", "F32", (kpool, d, n_new), g.permute(logits, 1, 0, 2, 3))
    probs = g.op(f"pool_probs-{il}", "SOFT_MAX", g.reshape(logits, kpool, d * n_new))
    probs = g.reshape(probs, kpool, d, n_new)
    pk = g.new(f"pool_k-{il}", "CONT", "F32", (kpool, d, n_new), g.permute(pk, 1, 0, 2, 3))
    pooled_new = g.new(f"pool_k_new-{il}", "SUM_ROWS", "F32", (1, d, n_new), g.op(f"pool_w-{il}", "MUL", probs, pk))
    pooled_new = g.reshape(pooled_new, d, n_new)
    scatter = g.view(pooled_view, pooled_view.ne, pooled_view.nb, "SET_ROWS")
    scatter.src = [pooled_new, kp.new_pool_rep, pooled_view]
    g.expand(scatter)
    pooled = g.new(f"indexer_pool_k-{il}", "GET_ROWS", "F32", (d, n_pool), pooled_view, kp.pool_cells)
    pooled = g.reshape(pooled, d, 1, n_pool)
    weights = g.mul_mat(f"indexer_weights-{il}", _w(c, p + ".proj.weight", il), cur)
    weights = g.op(f"indexer_weights-{il}", "SCALE", weights)
    score = g.new(f"indexer_score-{il}", "LIGHTNING_INDEXER", "F32", (n_pool, T), iq, pooled, weights, kp.pool_mask)
    top = g.new(f"indexer_top_k-{il}", "TOP_K", "I32", (n_top, T), score)
    sel_score = g.new(f"sel_score-{il}", "GET_ROWS", "F32", (1, n_top, T), g.reshape(score, 1, n_pool, T), top)
    order = g.new(f"sel_order-{il}", "ARGSORT", "I32", (n_top, T), g.reshape(sel_score, n_top, T))
    top_f = g.reshape(_cast(g, top), 1, n_top, T)
    top = g.new(f"sel_top-{il}", "GET_ROWS", "F32", (1, n_top, T), top_f, order)
    top = g.new(f"sel_top-{il}", "CONT", "F32", (n_top, T), g.reshape(top, n_top, T))
    top_i = g.new(f"indexer_top_k-{il}", "CPY", "I32", top.ne, top)
    top_i.src.append(top_i)
    sel = g.new(f"sel_idx-{il}", "GET_ROWS", "I32", (kpool, n_top * T), kp.pool_idxs, g.reshape(top_i, n_top * T))
    sel = g.reshape(sel, kpool * n_top, T)
    if sel.ne[0] != n_sel:  # kpool_select_tail: the incomplete tail, n_kv for missing cells
        sel = g.new(f"sel_idx-{il}", "CONCAT", "I32", (n_sel, T), sel, kp.tail_idxs)
    if kp.gather:  # the selected cells themselves (I32 [n_sel, T])
        return sel
    g.expand(sel)
    n_kv, mt = kq_mask.ne[0], kq_mask.type
    mask_all = g.new(f"mask_all-{il}", "FILL", mt, (n_kv + n_sel,), g.leaf(f"mask_all_leaf-{il}", mt, (n_kv + n_sel,)))
    mask_all = g.reshape(g.new(f"mask_all-{il}", "REPEAT", mt, (n_kv + n_sel, T), mask_all), 1, n_kv + n_sel, T)
    zeros = g.new(f"zeros-{il}", "FILL", mt, (n_sel,), g.leaf(f"zeros_leaf-{il}", mt, (n_sel,)))
    zeros = g.reshape(g.new(f"zeros-{il}", "REPEAT", mt, (n_sel, T), zeros), 1, n_sel, T)
    live = g.op(f"live-{il}", "UNARY", g.reshape(kp.gather_mask, n_sel, T))  # ggml_exp: a unary op
    dump = g.new(f"dump-{il}", "ARANGE", "F32", (n_sel,))
    idx_f = _cast(g, sel)
    idx_f = g.op(f"idx_f-{il}", "ADD", g.op(f"idx_f-{il}", "MUL", g.op(f"idx_f-{il}", "SUB", idx_f, dump), live), dump)
    sel_i = g.new(f"{idx_f.name} (copy)", "CPY", "I32", idx_f.ne, idx_f)
    sel_i.src.append(sel_i)
    scattered = g.view(mask_all, mask_all.ne, mask_all.nb, "SET_ROWS")
    scattered.src = [zeros, g.reshape(sel_i, n_sel, T, 1), mask_all]
    first = g.rows(scattered, n_kv, T)
    return g.op(f"indexer_sel-{il}", "ADD", first, g.reshape(kq_mask, n_kv, T))


def _dsa(c: _Ctx, g: _Graph, cur: _T, il: int, k_idxs: _T, kq_mask: _T, kp: _Kpool, prev: list[_T]) -> _T:
    """``build_dsa_layer`` (glm5-next.cpp:929-1003) on the scatter path: q through q_lora, the normed latent,
    the absorbed query, the selection (this layer's indexer, or the last full layer's for a shared one), the
    latent written into the MLA cache, deepseek2's MLA attention over the selection's mask, the output."""
    T = c.n_tokens
    nh = c.hp.n_head[il]
    p = f"blk.{il}."
    wk_b = _w(c, p + "attn_k_b.weight", il)
    rank = _w(c, p + "attn_kv_a_norm.weight", il).ne[0]  # kv_lora_rank (nope-only: no rope part)
    nope = wk_b.ne[0]
    qr = g.mul_mat(f"q_resid-{il}", _w(c, p + "attn_q_a.weight", il), cur)
    qr = _norm(c, g, qr, p + "attn_q_a_norm.weight", il)
    q = g.reshape(g.mul_mat(f"q-{il}", _w(c, p + "attn_q_b.weight", il), qr), nope, nh, T)
    kv = g.mul_mat(f"kv_cmpr-{il}", _w(c, p + "attn_kv_a_mqa.weight", il), cur)
    kv = g.reshape(_norm(c, g, kv, p + "attn_kv_a_norm.weight", il), rank, 1, T)
    absorbed = g.permute(g.mul_mat(f"q_absorbed-{il}", wk_b, g.permute(q, 0, 2, 1, 3)), 0, 2, 1, 3)
    if il in _full_layers(c):
        prev[:] = [_kpool_select(c, g, cur, qr, kq_mask, il, kp)]
    sel = prev[0]
    g.expand(absorbed)
    g.expand(kv)
    cache, k = cache_k(c, g, f"cache_k_l{il}", rank, _type(c.sp.type_k).name, il)
    g.expand(cache_write(c, g, cache, kv, rank, k_idxs))
    if kp.gather:
        g.expand(kq_mask)
        return _gathered(c, g, absorbed, cache, sel, kp, il, rank)
    mask = g.reshape(sel, *kq_mask.ne)
    return mla_mha(c, g, absorbed, k, mask, il, rank)


def _gathered(c: _Ctx, g: _Graph, absorbed: _T, cache: _T, sel: _T, kp: _Kpool, il: int, rank: int) -> _T:
    """The gather path of ``build_dsa_layer`` (glm5-next.cpp:968-990): the selected latents gathered from the
    MLA cache (``gather_mla_rows``), the scores per token over them with the slot mask, their transposed copy
    as V, ``attn_v_b``, the heads made contiguous, the output projection."""
    T, nh, n_sel = c.n_tokens, absorbed.ne[1], kp.n_sel
    rows = g.view(cache, (rank, cache.ne[1]), cache.nb[:2])
    k_g = g.new(f"kv_gathered-{il}", "GET_ROWS", "F32", (rank, n_sel * T), rows, g.reshape(sel, n_sel * T))
    k_g = g.reshape(k_g, rank, n_sel, 1, T)
    q_g = g.permute(absorbed, 0, 2, 3, 1)
    kq = g.mul_mat(f"kq-{il}", k_g, q_g)
    kq = g.op(f"kq_soft_max_gathered-{il}", "SOFT_MAX", kq, kp.gather_mask)
    v_t = g.new(f"v_t-{il}", "CONT", "F32", (n_sel, rank, 1, T), g.permute(k_g, 1, 0, 2, 3))
    kqv = g.mul_mat(f"kqv-{il}", v_t, kq)
    kqv = g.mul_mat(f"kqv_gathered-{il}", _w(c, f"blk.{il}.attn_v_b.weight", il), kqv)
    out = g.new(f"kqv_out-{il}", "CONT", "F32", (kqv.ne[0], nh, 1, T), g.permute(kqv, 0, 2, 1, 3))
    out = g.reshape(out, kqv.ne[0] * nh, T)
    return g.mul_mat(f"attn_out-{il}", _w(c, f"blk.{il}.attn_output.weight", il), out)


def _full_layers(c: _Ctx) -> set[int]:
    """The layers with an indexer of their own (``is_indexer_full``: ``attention.indexer.types``, every one
    without it)."""
    v = _types(model_of(c), c.hp.n_layer_main)
    return {il for il, full in enumerate(v) if full}


def _types(model: GGUFModel, n_main: int) -> list[bool]:
    key = f"{model.architecture}.attention.indexer.types"
    v = model.metadata.get(key)
    if isinstance(v, GGUFArray):
        return [bool(x) for x in v.tolist()]
    return [bool(v) if v is not None else True] * n_main


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (glm5-next.cpp:562-688): the embeddings repeated into the streams; per layer the mHC
    pre, the attention norm, KDA or the sparse MLA, the mHC post, the mHC pre, the FFN norm, the dense FFN or the
    experts plus the shared expert, the mHC post; the output rows, the streams' mean, the output norm. The mHC
    ops fused as ``resolve_fused_ops`` leaves them (:func:`fused_hc`)."""
    return _build(c, g, fused_hc(c))


def _build(c: _Ctx, g: _Graph, fused: Fused) -> _T:
    hp, sp = c.hp, c.sp
    T, n_out, E, hc = c.n_tokens, c.n_outputs, hp.n_embd, HC_MULT
    ns = sp.n_streams
    mp = moe_params(c)
    gating = mp.gating or SIGMOID
    d = _kda_dims(c)
    last = hp.n_layer_main - 1
    x = _inp_embd(c, g)
    s_copy = g.input("rs_s_copy", "I32", sp.n_seq_max)
    k_idxs = g.input("attn_inp_k_idxs", "I64", T)
    kq_mask = g.input("attn_inp_kq_mask", "F16" if sp.flash_attn else "F32", sp.n_kv, T // ns, 1, ns)
    kp = _inp_kpool(c, g)
    out_ids = g.input("out_ids", "I32", n_out)
    res = g.new("hc_init", "REPEAT", "F32", (E, hc, T), g.reshape(x, E, 1, T))
    prev: list[_T] = []
    for p, il in enumerate(c.layers):
        if il > last:  # the NextN block: not run by the main graph
            continue
        g.at(p)
        cur, post, comb = hc_pre(c, g, res, "attn", il, fused)
        cur = _norm(c, g, cur, f"blk.{il}.attn_norm.weight", il)
        g.expand(cur)
        if hp.n_head_kv[il] == 0:
            cur = kda(c, g, cur, il, s_copy, d)  # kimi-k3's KDA layer with glm5-next's low-rank output gate
        else:
            cur = _dsa(c, g, cur, il, k_idxs, kq_mask, kp, prev)
        res = hc_post(g, cur, res, post, comb, f"hc_attn_post-{il}", fused)
        cur, post, comb = hc_pre(c, g, res, "ffn", il, fused)
        cur = _norm(c, g, cur, f"blk.{il}.ffn_norm.weight", il)
        if il < mp.n_lead:
            cur = ffn(c, g, cur, il)
        else:
            moe_out, routed = moe_ffn(c, g, cur, il, mp, gating)
            cur = g.op(f"ffn_out-{il}", "ADD", moe_out, ffn(c, g, cur, il, "_shexp", routed))
        res = hc_post(g, cur, res, post, comb, f"l_out-{il}", fused)
    g.at(GLOBAL)
    flat = g.new("hc_rows", "GET_ROWS", "F32", (E * hc, n_out), g.reshape(res, E * hc, T), out_ids)
    res = g.reshape(flat, E, hc, n_out)
    acc = g.rows(res, E, n_out)
    for _ in range(1, hc):
        acc = g.op("hc_mean", "ADD", acc, g.rows(res, E, n_out))
    cur = g.op("hc_head", "SCALE", acc)
    cur = g.op("norm", "RMS_NORM", cur)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT  # t_h_nextn, t_embd
    out_w = tied_head(c)
    logits = g.mul_mat("result_output", out_w, cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Why the glm5-next graph cannot be built from this file (None when it can): the hyper-parameters
    glm5-next.cpp requires (the mHC streams, the k-pool, the KDA head), a first MLA layer with an indexer,
    nope-only MLA, and the tensors the main graph reads."""
    md = model.metadata
    a = model.architecture or "glm5-next"

    def get(suffix: str) -> int:
        return md.get_int(f"{a}.{suffix}") or 0

    if get("hyper_connection.count") != HC_MULT:
        return f"the graph needs {a}.hyper_connection.count {HC_MULT} (glm5-next.cpp asserts it)"
    kpool, top_k = get("attention.indexer.kpool"), get("attention.indexer.top_k")
    if kpool < 2 or top_k <= 0 or top_k % kpool:
        return "the graph needs attention.indexer.kpool above 1 dividing attention.indexer.top_k"
    for key in ("attention.indexer.key_length", "attention.indexer.head_count", "kda.head_dim", "ssm.conv_kernel"):
        if get(key) <= 0:
            return f"the graph needs {a}.{key}, which the file lacks"
    if get("rope.dimension_count"):
        return "the graph needs nope-only MLA (rope.dimension_count 0: glm5-next.cpp asserts it)"
    n_used, n_expert = get("expert_used_count"), get("expert_count")
    if not 0 < n_used <= n_expert <= 1024:
        return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
    hp = hparams(model)
    n_main = hp.n_layer_main
    full = _types(model, n_main)
    attn = [il for il in range(n_main) if hp.n_head_kv[il] > 0]
    if attn and not full[attn[0]]:
        return "the first MLA layer has no indexer (llama.cpp asserts: a shared layer needs an earlier full one)"
    names = {t.name for t in model.tensors}
    need = ["token_embd.weight", "output_norm.weight"]
    for il in range(min(n_main, 513)):
        b = f"blk.{il}."
        need += [b + n + ".weight" for n in ("attn_norm", "ffn_norm", "attn_output")]
        need += [b + f"hc_{part}_{n}.weight" for part in ("attn", "ffn") for n in ("fn", "base", "scale")]
        if hp.n_head_kv[il] == 0:
            need += [b + f"ssm_conv1d_{n}.weight" for n in "qkv"]
            need += [b + f"attn_{n}.weight" for n in "qkv"]
            need += [b + n + ".weight" for n in ("ssm_f_a", "ssm_f_b", "ssm_beta", "ssm_g_a", "ssm_g_b", "ssm_norm")]
            need += [b + "ssm_a", b + "ssm_dt.bias"]
        else:
            need += [b + n + ".weight" for n in ("attn_q_a", "attn_q_a_norm", "attn_q_b", "attn_kv_a_mqa")]
            need += [b + n + ".weight" for n in ("attn_kv_a_norm", "attn_k_b", "attn_v_b")]
            if full[il]:
                need += [b + "indexer." + n for n in ("k_norm.weight", "k_norm.bias", "proj.weight", "attn_k.weight")]
                need += [b + "indexer.attn_q_b.weight", b + "indexer_compressor_gate.weight"]
                need += [b + "indexer_compressor_ape.weight"]
        if b + "ffn_gate_inp.weight" in names:
            need += [b + f"ffn_{n}_exps.weight" for n in ("gate", "up", "down")]
            need += [b + f"ffn_{n}_shexp.weight" for n in ("gate", "up", "down")]
        else:
            need += [b + f"ffn_{n}.weight" for n in ("gate", "up", "down")]
    missing = next((n for n in need if n not in names), None)
    if missing:
        return f"the graph needs tensor {missing}, which the file lacks"
    return None
