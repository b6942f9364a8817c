"""``hy_v4`` (src/models/hy-v4.cpp: HY V4): DeepSeek-style absorbed multi-head latent attention with q_lora
on the K-only cache, attention sinks, and the sigmoid gate of the decompressed heads (``attn_gate``, one
value per output channel) before ``attn_output``; independent hyper-connections: the embedding repeated
into ``hyper_connection.count`` residual streams, and around the attention and the FFN of every layer the
streams reduced by sigmoid weights of an RMS-normed mix (``hc_*_fn``/``_base``/``_scale``: ``build_hc_pre``)
and the sub-layer's output distributed back onto them (``build_hc_post``), in F32 (each ``ggml_cast`` a
CPY node whose second source is itself), the streams' rows picked and collapsed by ``hc_head`` before the
output norm; a dense FFN in the leading layers, then sigmoid-routed experts (the optional selection bias,
``swiglu_clamp_exp``'s fused SWIGLU_CLAMP, which the graph sees as the GLU it replaces) plus the shared
expert. With ``attention.indexer.top_k`` > 0 (DSA): deepseek32's lightning indexer on the "full" layers of
``attention.indexer.types`` (keys layer-normed with bias and roped, without deepseek32's Hadamard
rotation), its top-k cells reused by the "shared" layers that follow, the MLA attention over the sparse
mask; with top_k 0 the plain K-only attention input (no indexer cache)."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph, _type
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _norm, _w
from ggufx.analysis.memory.graph.models import deepseek2, qwen3next
from ggufx.analysis.memory.graph.models.deepseek2 import cache_k, cache_write, mha
from ggufx.analysis.memory.graph.models.deepseek32 import _Dsa, _indexer, _sparse_mask
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel


def _top_k(c: _Ctx) -> int:
    """``indexer_top_k`` (0 unless the file sets it: hy-v4.cpp ``load_arch_hparams``)."""
    v = qwen3next.file_value(c, f"{c.hp.arch}.attention.indexer.top_k")
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _hc(c: _Ctx) -> int:
    v = qwen3next.file_value(c, f"{c.hp.arch}.hyper_connection.count")
    assert isinstance(v, int)  # unbuildable() checked it
    return v


def _cast(g: _Graph, a: _T) -> _T:
    """``ggml_cast`` to F32 (ggml.c): a CPY node of ``a``'s shape whose second source is itself."""
    t = g.new(f"{a.name} (copy)", "CPY", "F32", a.ne, a)
    t.src.append(t)
    return t


def _reduce(g: _Graph, x: _T, w: _T, hc: int) -> _T:
    """``hy_v4_hc_reduce``: the streams ``x[:, i, :]`` (of an F32 copy) times their weights ``w[i, :]``,
    summed, cast back."""
    E, nt = x.ne[0], x.ne[2]
    xf = _cast(g, x)
    out: _T | None = None
    for _ in range(hc):
        xh = g.rows(xf, E, nt)
        wh = g.view(w, (1, nt), (4, w.nb[1]))
        cur = g.op("hc_reduce_mul", "MUL", xh, wh)
        out = cur if out is None else g.op("hc_reduce_add", "ADD", out, cur)
    assert out is not None
    return _cast(g, out)


def _gate(g: _Graph, mixes: _T, hc: int, scale: _T, base: _T, post: bool) -> _T:
    """pre = sigmoid(mixes[:hc] * scale[0] + base[:hc]) + eps; post: magnitude * sigmoid(mixes[hc:2hc] *
    scale[1] + base[hc:]) + eps (MUL, ADD, SIGMOID, SCALE, then SCALE: ``ggml_scale_bias``)."""
    nt = mixes.ne[1]
    cur = g.view(mixes, (hc, nt), (4, mixes.nb[1]))
    cur = g.op("hc_gate_mul", "MUL", cur, g.view(scale, (1,), None))
    cur = g.op("hc_gate_add", "ADD", cur, g.view(base, (hc,), None))
    cur = g.op("hc_gate_sigmoid", "UNARY", cur)
    if post:
        cur = g.op("hc_post_magnitude", "SCALE", cur)
    return g.op("hc_gate", "SCALE", cur)


def _hc_pre(c: _Ctx, g: _Graph, x: _T, il: int, part: str) -> tuple[_T, _T]:
    """``build_hc_pre`` (hy-v4.cpp:179-215) for ``part`` "attn" or "ffn": the streams RMS-normed as one
    row per token, their mix (``hc_<part>_fn``), the pre and post weights, the reduced input."""
    hc, E, nt = x.ne[1], x.ne[0], x.ne[2]
    p = f"blk.{il}.hc_{part}_"
    flat = g.op(f"hc_flat_norm-{il}", "RMS_NORM", g.reshape(x, hc * E, nt))
    mixes = g.mul_mat(f"hc_mixes-{il}", _w(c, p + "fn.weight", il), flat)
    scale, base = _w(c, p + "scale.weight", il), _w(c, p + "base.weight", il)
    pre = _gate(g, mixes, hc, scale, base, False)
    post = _gate(g, mixes, hc, scale, base, True)
    return _reduce(g, x, pre, hc), post


def _hc_post(g: _Graph, x: _T, residual: _T, post: _T) -> _T:
    """``build_hc_post`` (hy-v4.cpp:217-245): per stream the residual's (F32 copy) plus the sub-layer's
    output (F32 copy) times its post weight (F32 copy), the streams concatenated, cast back."""
    E, hc, nt = residual.ne[0], residual.ne[1], residual.ne[2]
    xf, pf, rf = _cast(g, x), _cast(g, post), _cast(g, residual)
    out: _T | None = None
    for _ in range(hc):
        res_i = g.rows(rf, E, nt)
        post_i = g.view(pf, (1, nt), (4, pf.nb[1]))
        cur = g.op("hc_post_add", "ADD", res_i, g.op("hc_post_mul", "MUL", xf, post_i))
        cur = g.reshape(cur, E, 1, nt)
        if out is None:
            out = cur
        else:
            out = g.new("hc_post_concat", "CONCAT", "F32", (E, out.ne[1] + 1, nt), out, cur)
    assert out is not None
    return _cast(g, out)


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, k_idxs: _T, mask: _T, dsa: _Dsa | None, top_k: list[_T]) -> _T:
    """``build_attention`` / ``build_attention_dsa`` (hy-v4.cpp:247-325, :402-480): q_lora (the indexer of
    a full layer between ``q_a_norm`` and ``q_b``), the compressed latent and the roped part of K, the
    absorbed ``q_nope``, the cache write, the attention with sinks over the causal or the sparse mask,
    ``attn_v_b``; then the sigmoid gate of the heads' output and ``attn_output``."""
    sp = c.sp
    T = c.n_tokens
    nh = c.hp.n_head[il]
    p = f"blk.{il}."
    pos = c.pos
    assert pos is not None
    wk_b = _w(c, p + "attn_k_b.weight", il)
    kv_a = _w(c, p + "attn_kv_a_mqa.weight", il)
    rank = _w(c, p + "attn_kv_a_norm.weight", il).ne[0]  # kv_lora_rank
    n_rot = kv_a.ne[1] - rank
    nope = wk_b.ne[0]
    hk = nope + n_rot  # n_embd_head_k_mla
    qr = g.mul_mat(f"q_a-{il}", _w(c, p + "attn_q_a.weight", il), x)
    qr = _norm(c, g, qr, p + "attn_q_a_norm.weight", il)
    if dsa is not None and il in c.hp.indexer_layers:
        top_k[:] = [_indexer(c, g, x, qr, il, dsa, _top_k(c), rotate=False)]
    q = g.mul_mat(f"q_b-{il}", _w(c, p + "attn_q_b.weight", il), qr)
    qrow = 4 * hk
    q_nope = g.view(q, (nope, nh, T), (4, qrow, qrow * nh))
    q_pe = g.view(q, (n_rot, nh, T), (4, qrow, qrow * nh))
    kv_cmpr_pe = g.mul_mat(f"kv_cmpr_pe-{il}", kv_a, x)
    row = kv_cmpr_pe.nb[1]
    kv_cmpr = g.view(kv_cmpr_pe, (rank, T), (4, row))
    k_pe = g.view(kv_cmpr_pe, (n_rot, 1, T), (4, row, row))
    q_pe = g.new(f"q_pe-{il}", "ROPE", "F32", q_pe.ne, q_pe, pos)
    k_pe = g.new(f"k_pe-{il}", "ROPE", "F32", k_pe.ne, k_pe, pos)
    kv_cmpr = _norm(c, g, kv_cmpr, p + "attn_kv_a_norm.weight", il)
    absorbed = g.permute(g.mul_mat(f"q_nope_absorbed-{il}", wk_b, g.permute(q_nope, 0, 2, 1, 3)), 0, 2, 1, 3)
    qcur = g.new(f"Qcur-{il}", "CONCAT", "F32", (rank + n_rot, nh, T), absorbed, q_pe)
    kv_cmpr = g.reshape(kv_cmpr, rank, 1, T)
    kcur = g.new(f"Kcur-{il}", "CONCAT", "F32", (rank + n_rot, 1, T), kv_cmpr, k_pe)
    for t in (qcur, kv_cmpr, kcur):
        g.expand(t)
    width = rank + n_rot
    cache, k = cache_k(c, g, f"cache_k_l{il}", width, _type(sp.type_k).name, il)
    g.expand(cache_write(c, g, cache, kcur, width, k_idxs))
    if dsa is not None:
        mask = _sparse_mask(c, g, dsa, top_k[0], il)
    cur = mha(c, g, qcur, k, mask, il, rank, _w(c, p + "attn_sinks.weight", il))
    gate = g.op(f"attn_gate-{il}", "UNARY", g.mul_mat(f"attn_gate-{il}", _w(c, p + "attn_gate.weight", il), x))
    cur = g.op(f"attn_gated-{il}", "MUL", cur, gate)
    return g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), cur)


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int, mp: deepseek2.MoeParams) -> _T:
    """hy-v4.cpp:540-575: the dense FFN in the leading layers, else the routed experts plus the shared one."""
    if il < mp.n_lead:
        return deepseek2.ffn(c, g, cur, il)
    moe, routed = deepseek2.moe_ffn(c, g, cur, il, mp, mp.gating)
    return g.op(f"ffn_out-{il}", "ADD", moe, deepseek2.ffn(c, g, cur, il, "_shexp", routed))


def build(c: _Ctx, g: _Graph) -> _T:
    """hy-v4.cpp ``graph::graph``: the embedding repeated into the streams; per layer the hyper-connected
    attention and FFN; the rows picked, ``hc_head``, the output norm and the head."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    hc = _hc(c)
    mp = replace(deepseek2.moe_params(c), n_used=qwen3next.n_expert_used(c), n_groups=0)
    inp_embd = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    dsa = _Dsa(c, g) if _top_k(c) > 0 else None  # build_attn_inp_k_dsa, else build_attn_inp_k:
    if dsa is not None:
        k_idxs, mask = dsa.k_idxs, dsa.mask
    else:  # the MLA cache's rows and mask only
        k_idxs = g.input("attn_inp_k_idxs", "I64", T)
        mask = g.input(
            "attn_inp_kq_mask", "F16" if sp.flash_attn else "F32", sp.n_kv, T // sp.n_streams, 1, sp.n_streams
        )
    out_ids = g.input("out_ids", "I32", n_out)
    x = g.new("hc_init", "REPEAT", inp_embd.type, (E, hc, T), g.reshape(inp_embd, E, 1, T))
    top_k: list[_T] = []
    for p, il in enumerate(c.layers):
        g.at(p)
        residual = x
        cur, post = _hc_pre(c, g, x, il, "attn")
        cur = _norm(c, g, cur, f"blk.{il}.attn_norm.weight", il)
        cur = _attention(c, g, cur, il, k_idxs, mask, dsa, top_k)
        x = _hc_post(g, cur, residual, post)
        residual = x
        cur, post = _hc_pre(c, g, x, il, "ffn")
        cur = _norm(c, g, cur, f"blk.{il}.ffn_norm.weight", il)
        cur = _ffn(c, g, cur, il, mp)
        x = _hc_post(g, cur, residual, post)
    g.at(GLOBAL)
    flat = g.new("hc_rows", "GET_ROWS", "F32", (E * hc, n_out), g.reshape(x, E * hc, T), out_ids)
    x = g.reshape(flat, E, hc, n_out)
    flat = g.op("hc_head_norm", "RMS_NORM", g.reshape(x, hc * E, n_out))
    mixes = g.mul_mat("hc_head_mixes", _w(c, "output_hc_fn.weight", hp.n_layer), flat)
    pre = g.op("hc_head_mul", "MUL", mixes, _w(c, "output_hc_scale.weight", hp.n_layer))
    pre = g.op("hc_head_add", "ADD", pre, _w(c, "output_hc_base.weight", hp.n_layer))
    pre = g.op("hc_head_pre", "SCALE", g.op("hc_head_sigmoid", "UNARY", pre))
    cur = _reduce(g, x, pre, hc)
    cur = g.op("norm", "RMS_NORM", cur)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    logits = g.mul_mat("result_output", _w(c, "output.weight", hp.n_layer), cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Why the hy_v4 graph cannot be built from this file (None when it can): the hyper-connection count,
    the gating (``build_moe_ffn`` aborts on none), the expert counts, with DSA the indexer keys and types
    (layer 0 full: hy-v4.cpp throws otherwise), and per layer the tensors the graph reads."""
    md = model.metadata
    a = model.architecture or ""

    def get(key: str) -> int:
        return md.get_int(f"{a}.{key}") or 0

    n_layer, hc = get("block_count"), get("hyper_connection.count")
    if hc <= 0:
        return f"the graph needs a positive {a}.hyper_connection.count"
    gating = get("expert_gating_func")
    if gating not in (deepseek2.SOFTMAX, deepseek2.SIGMOID, deepseek2.SOFTMAX_WEIGHT):
        return f"the graph needs {a}.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not {gating}"
    n_exp, n_used, n_lead = get("expert_count"), get("expert_used_count"), get("leading_dense_block_count")
    if n_lead < n_layer and not 0 < n_used <= n_exp <= 1024:
        return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
    dsa = get("attention.indexer.top_k") > 0
    full: tuple[int, ...] = ()
    if dsa:
        for key in ("attention.indexer.head_count", "attention.indexer.key_length", "attention.indexer.types"):
            if f"{a}.{key}" not in md:
                return f"the graph needs {a}.{key}, which the file lacks"
        full = hparams(model).indexer_layers
        if n_layer and 0 not in full:
            return "the first layer has no indexer (hy-v4.cpp refuses: a shared layer needs an earlier full one)"
    names = {t.name for t in model.tensors}
    need = ["token_embd.weight", "output_norm.weight", "output.weight"]
    need += [f"output_hc_{n}.weight" for n in ("fn", "base", "scale")]
    for il in range(min(n_layer, 513)):
        roles = ["attn_norm", "attn_sinks", "attn_q_a", "attn_q_a_norm", "attn_q_b", "attn_kv_a_mqa"]
        roles += ["attn_kv_a_norm", "attn_k_b", "attn_v_b", "attn_output", "attn_gate", "ffn_norm"]
        roles += [f"hc_{part}_{n}" for part in ("attn", "ffn") for n in ("fn", "base", "scale")]
        if il < n_lead:
            roles += ["ffn_gate", "ffn_up", "ffn_down"]
        else:
            roles += ["ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
            roles += ["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]
        if il in full:
            roles += ["indexer.attn_q_b", "indexer.attn_k", "indexer.k_norm", "indexer.proj"]
        need += [f"blk.{il}.{r}.weight" for r in roles]
        if il in full:
            need.append(f"blk.{il}.indexer.k_norm.bias")
    missing = next((n for n in need if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
