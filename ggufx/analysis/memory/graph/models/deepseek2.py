"""``deepseek2`` (src/models/deepseek2.cpp): DeepSeek V2/V3/R1 and Kimi K2. Multi-head latent attention in
its absorbed form (``is_mla``: ``attn_k_b``/``attn_v_b``): Q from ``q_a``/``q_a_norm``/``q_b`` (V3, K2)
or one ``attn_q`` projection (V2-Lite), the compressed latent and the rope part of K written to a K-only
cache of ``kv_lora_rank + n_rot`` values per cell (``build_attn_inp_k``), attention over it as MQA whose
V is a view of K's first ``kv_lora_rank`` values, then ``attn_v_b`` decompressing each head (with flash
attention on and off); leading dense layers, then mixture-of-experts layers (softmax or sigmoid gating,
the DeepSeek V3 selection bias, expert groups, normalized and scaled weights) plus shared experts; the
NextN/MTP block is left out as llama.cpp leaves it. The MoE pieces are shared with ``glm4moe``."""

from __future__ import annotations

from dataclasses import dataclass

from ggufx.analysis.memory.graph.ggml import _T, _Graph, _type
from ggufx.analysis.memory.graph.llm import (
    _Ctx,
    _inp_embd,
    _norm,
    _w,
    _weight,
    kqv_on_host,
    model_of,
    moe_swiglu_experts,
    moe_weighted_sum,
    moe_weights_norm,
    topk_fusion,
)
from ggufx.analysis.memory.graph.models import _moe_check
from ggufx.analysis.memory.graph.models._dense import output, tied_head
from ggufx.model import GGUFModel

SOFTMAX, SIGMOID, SOFTMAX_WEIGHT = 1, 2, 3  # llama_expert_gating_func_type (llama-hparams.h)


@dataclass(frozen=True, slots=True)
class MoeParams:
    """The hyper-parameters ``build_moe_ffn`` and the MoE builders read (llama-model.cpp:1330-1380,
    deepseek2.cpp ``load_arch_hparams``, glm4-moe.cpp ``load_arch_hparams``)."""

    n_used: int  # expert_used_count
    n_lead: int  # leading_dense_block_count
    gating: int  # expert_gating_func (0: the architecture's default, resolved by the caller)
    norm_w: bool  # expert_weights_norm
    scale: float  # expert_weights_scale (0 or 1: no SCALE node)
    n_groups: int  # expert_group_count
    n_group_used: int  # expert_group_used_count
    attn_temp: bool  # attention.temperature_scale set (deepseek2: the inp_attn_scale input)
    n_vocab: int


def _num(v: object) -> float:
    return float(v) if isinstance(v, (int, float)) else 0.0


def params_of(model: GGUFModel) -> MoeParams:
    """The MoE hyper-parameters of an opened model."""
    md = model.metadata
    arch = model.architecture or ""

    def get(suffix: str) -> int:
        return md.get_int(f"{arch}.{suffix}") or 0

    n_vocab = get("vocab_size") or len(md.get("tokenizer.ggml.tokens", ()) or ())
    return MoeParams(
        get("expert_used_count"),
        get("leading_dense_block_count"),
        get("expert_gating_func"),
        bool(md.get(f"{arch}.expert_weights_norm", False)),
        _num(md.get(f"{arch}.expert_weights_scale", 0.0)),
        get("expert_group_count"),
        get("expert_group_used_count"),
        _num(md.get(f"{arch}.attention.temperature_scale", 0.0)) != 0.0,
        n_vocab,
    )


def moe_params(c: _Ctx) -> MoeParams:
    """The model's MoE hyper-parameters."""
    return params_of(model_of(c))


def ffn(c: _Ctx, g: _Graph, cur: _T, il: int, part: str = "", routed: Routed | None = None) -> _T:
    """``build_ffn`` with SiLU and a parallel gate (llama-graph.cpp:1799-1990): ``up`` and ``gate``
    projections, their ``swiglu_split`` (the gate first among its sources), the ``down`` projection;
    ``part``: ``"_shexp"`` for the shared experts, whose gate, up and GLU CUDA may move next to the
    ``routed`` experts' (:func:`_shares_kernel`)."""
    p = f"blk.{il}.ffn_"
    up_w, gate_w = _w(c, f"{p}up{part}.weight", il), _w(c, f"{p}gate{part}.weight", il)
    up = g.mul_mat(f"ffn_up-{il}", up_w, cur)
    gate = g.mul_mat(f"ffn_gate-{il}", gate_w, cur)
    act = g.new(f"ffn_swiglu-{il}", "GLU", "F32", gate.ne, gate, up)
    if routed is not None and _shares_kernel(routed, gate_w, up_w):
        g.rotations.append(([routed.gate, routed.up, routed.act], [gate, up, act], [routed.x, routed.ids]))
    return g.mul_mat(f"ffn_out-{il}", _w(c, f"{p}down{part}.weight", il), act)


@dataclass(frozen=True, slots=True)
class Routed:
    """The routed experts' products of one layer (for the shared expert's grouping)."""

    gate: _T
    up: _T
    act: _T
    x: _T  # the input reshaped to one row per token
    ids: _T  # the selected experts


def _shares_kernel(r: Routed, gate_w: _T, up_w: _T) -> bool:
    """``ggml_cuda_match_shared_expert``'s batch-size independent checks (ggml-cuda.cu:1827-1880): both
    pairs of weights alike (type, shape), the routed ones quantized, the shared expert's weights of the
    routed ones' type and row count (one shared expert of the experts' width)."""
    ue, ge = r.up.src[0], r.gate.src[0]
    return (
        ue.type == ge.type
        and ue.ne == ge.ne
        and up_w.type == gate_w.type
        and up_w.ne == gate_w.ne
        and _type(ue.type).block_size > 1
        and ue.ne[3] == 1
        and up_w.type == ue.type
        and up_w.ne[0] == ue.ne[0]
        and up_w.ne[1] == ue.ne[1]
        and up_w.ne[2] == up_w.ne[3] == 1
    )


def _argsort_top_k(g: _Graph, name: str, a: _T, k: int) -> tuple[_T, _T]:
    """``ggml_argsort_top_k`` (ggml.c:5450): the ARGSORT node and its view of the first ``k``."""
    s = g.new(name, "ARGSORT", "I32", a.ne, a)
    return s, g.view(s, (k, *s.ne[1:]), s.nb)


def moe_ffn(c: _Ctx, g: _Graph, cur: _T, il: int, mp: MoeParams, gating: int) -> tuple[_T, Routed]:
    """``build_moe_ffn`` (llama-graph.cpp:2044-2420) with separate gate and up experts and SiLU: the
    router (softmax, sigmoid, or the logits themselves), the optional selection bias ``exp_probs_b``,
    the group selection (``expert_group_count`` > 1), top-k, the weights (normalized, scaled),
    expanded early; the experts; one view per used expert and their sum."""
    T, E, n_used = cur.ne[1], cur.ne[0], mp.n_used
    p = f"blk.{il}."
    logits = g.mul_mat(f"ffn_moe_logits-{il}", _w(c, p + "ffn_gate_inp.weight", il), cur)
    n_exp = logits.ne[0]
    if gating == SIGMOID:
        probs = g.op(f"ffn_moe_probs-{il}", "UNARY", logits)
    elif gating == SOFTMAX_WEIGHT:
        probs = logits
    else:
        probs = g.op(f"ffn_moe_probs-{il}", "SOFT_MAX", logits)
    members = [probs]
    sel = probs
    bias = _weight(c, p + "exp_probs_b.bias", il)
    if bias is not None:
        sel = g.op(f"ffn_moe_probs_biased-{il}", "ADD", probs, bias)
        members.append(sel)
    if mp.n_groups > 1 and T > 0:
        per = n_exp // mp.n_groups
        groups = g.reshape(sel, per, mp.n_groups, T)
        _, top2 = _argsort_top_k(g, f"ffn_moe_group_argsort-{il}", groups, 2)
        scores = g.new(
            f"node_gs-{il}", "GET_ROWS", "F32", (1, 2, mp.n_groups, T), g.reshape(groups, 1, per, mp.n_groups, T), top2
        )
        scores = g.new(f"node_gsum-{il}", "SUM_ROWS", "F32", (1, mp.n_groups, T), g.reshape(scores, 2, mp.n_groups, T))
        scores = g.reshape(scores, mp.n_groups, T)
        _, top_groups = _argsort_top_k(g, f"ffn_moe_group_topk-{il}", scores, mp.n_group_used)
        kept = g.new(f"node_gk-{il}", "GET_ROWS", "F32", (per, mp.n_group_used, T), groups, top_groups)
        filled = g.new(f"node_fill-{il}", "FILL", "F32", groups.ne, groups)
        masked = g.view(filled, filled.ne, filled.nb, "SET_ROWS")
        masked.src = [kept, top_groups, filled]
        sel = g.reshape(masked, n_exp, T)
    argsort, topk = _argsort_top_k(g, f"ffn_moe_argsort-{il}", sel, n_used)
    probs3 = g.reshape(probs, 1, n_exp, T)
    weights = g.new(f"ffn_moe_weights-{il}", "GET_ROWS", "F32", (1, n_used, T), probs3, topk)
    members += [probs3, argsort, topk, weights]
    if gating == SOFTMAX_WEIGHT:
        w2 = g.reshape(weights, n_used, T)
        weights = g.reshape(g.op(f"ffn_moe_weights_softmax-{il}", "SOFT_MAX", w2), 1, n_used, T)
        members += [w2, weights.src[0], weights]
    if mp.norm_w:
        members += moe_weights_norm(g, weights, il)
        weights = members[-1]
    if mp.scale not in (0.0, 1.0):
        weights = g.op(f"ffn_moe_weights_scaled-{il}", "SCALE", weights)
        members.append(weights)
    g.expand(weights)
    if mp.n_groups <= 1 and gating != SOFTMAX_WEIGHT:  # the group selection breaks topk-moe's pattern
        g.fused.extend(topk_fusion(n_exp, members))
    x = g.reshape(cur, E, 1, T)
    up, gate, act, experts = moe_swiglu_experts(c, g, x, topk, il, n_used)
    # Mistral 4: src1 can exceed F16 range (llama-graph.cpp build_moe_ffn: ggml_prec_set_src(experts,
    # GGML_PREC_F32, 1)), which CUDA does not run: the product goes to the CPU, its weight copied there
    experts.src1_f32 = c.hp.arch == "mistral4"
    return moe_weighted_sum(g, experts, weights, il, E, n_used), Routed(gate, up, act, x, topk)


def _mla_attn(c: _Ctx, g: _Graph, x: _T, il: int, k_idxs: _T, mask: _T, scale: _T | None) -> _T:
    """The absorbed MLA attention of one layer (deepseek2.cpp:360-470, ``build_attn`` with
    ``llm_graph_input_attn_k``, llama-graph.cpp:3056-3110, and ``build_attn_mha``, :2691-2820), up to and
    including the output projection."""
    hp, sp = c.hp, c.sp
    T = c.n_tokens
    nh = hp.n_head[il]
    p = f"blk.{il}."
    wk_b = _w(c, p + "attn_k_b.weight", il)
    kv_a = _w(c, p + "attn_kv_a_mqa.weight", il)
    rank = _w(c, p + "attn_kv_a_norm.weight", il).ne[0]  # kv_lora_rank
    n_rot = kv_a.ne[1] - rank
    nope = wk_b.ne[0]
    hk = nope + n_rot  # n_embd_head_k_mla
    pos = c.pos
    assert pos is not None
    if _weight(c, p + "attn_q_a.weight", il) is not None:
        q = g.mul_mat(f"q-{il}", _w(c, p + "attn_q_a.weight", il), x)
        q = _norm(c, g, q, p + "attn_q_a_norm.weight", il)
        q = g.mul_mat(f"q-{il}", _w(c, p + "attn_q_b.weight", il), q)
    else:
        q = g.mul_mat(f"q-{il}", _w(c, p + "attn_q.weight", il), x)
    q = g.reshape(q, hk, nh, T)
    kv_cmpr_pe = g.mul_mat(f"kv_cmpr_pe-{il}", kv_a, x)
    row = kv_cmpr_pe.nb[1]
    kv_cmpr = g.view(kv_cmpr_pe, (rank, T), (4, row))
    k_pe = g.view(kv_cmpr_pe, (n_rot, 1, T), (4, row, row))
    k_pe = g.new(f"k_pe-{il}", "ROPE", "F32", k_pe.ne, k_pe, pos)
    kv_cmpr = _norm(c, g, kv_cmpr, p + "attn_kv_a_norm.weight", il)
    q_nope = g.view(q, (nope, nh, T), q.nb[:3])
    q_pe = g.view(q, (n_rot, nh, T), q.nb[:3])
    q_pe = g.new(f"q_pe-{il}", "ROPE", "F32", q_pe.ne, q_pe, pos)
    q_nope = g.permute(q_nope, 0, 2, 1, 3)
    absorbed = g.permute(g.mul_mat(f"q_nope_absorbed-{il}", wk_b, q_nope), 0, 2, 1, 3)
    qcur = g.new(f"Qcur-{il}", "CONCAT", "F32", (rank + n_rot, nh, T), absorbed, q_pe)
    kv_cmpr = g.reshape(kv_cmpr, rank, 1, T)
    kcur = g.new(f"Kcur-{il}", "CONCAT", "F32", (rank + n_rot, 1, T), kv_cmpr, k_pe)
    vcur = kv_cmpr
    if scale is not None:
        qcur = g.op(f"Qcur_attn_temp_scaled-{il}", "MUL", qcur, scale)
    for t in (qcur, vcur, kcur):
        g.expand(t)
    cache, k = cache_k(c, g, f"cache_k_l{il}", rank + n_rot, _type(sp.type_k).name, il)
    g.expand(cache_write(c, g, cache, kcur, rank + n_rot, k_idxs))
    return mla_mha(c, g, qcur, k, mask, il, rank)


def cache_write(c: _Ctx, g: _Graph, cache: _T, cur: _T, width: int, idxs: _T) -> _T:
    """``llama_kv_cache::cpy_k`` (llama-kv-cache.cpp:1348-1381): the new keys as rows, the streams'
    caches merged into one 2D view when several, and their SET_ROWS."""
    T, ns = c.n_tokens, c.sp.n_streams
    rows = g.view(cur, (width, T), None)
    dst = g.reshape(cache, width, cache.ne[1]) if ns > 1 else cache
    out = g.view(dst, dst.ne, dst.nb, "SET_ROWS")
    out.src = [rows, idxs, dst]
    return out


def cache_k(c: _Ctx, g: _Graph, name: str, width: int, type_: str, il: int) -> tuple[_T, _T]:
    """One layer's K tensor of a cache and ``get_k``'s view of it: [width, 1 head, cells, streams]."""
    n_kv, ns = c.sp.n_kv, c.sp.n_streams
    cache = g.leaf(name, type_, (width, n_kv * ns), buft=c.cache_buft[il])
    row = cache.nb[1]
    return cache, g.view(cache, (width, 1, n_kv, ns), (cache.nb[0], row, row, row * n_kv))


def mha(c: _Ctx, g: _Graph, qcur: _T, k: _T, mask: _T, il: int, rank: int, sinks: _T | None = None) -> _T:
    """``build_attn_mha`` over the MLA cache view ``k`` (V its first ``rank`` values) and ``attn_v_b``
    decompressing each head (llama-graph.cpp:2691-2820), without the output projection (:func:`mla_mha` adds
    it; ``build_attn``'s ``wo`` is null in Ling 2.5 and HY V4); ``sinks``: the attention sinks, a source of the
    flash attention or of the softmax (``ggml_flash_attn_ext_add_sinks``, ``ggml_soft_max_add_sinks``)."""
    extra = [sinks] if sinks is not None else []
    ns, fa = c.sp.n_streams, c.sp.flash_attn
    T, nh, n_kv = c.n_tokens, qcur.ne[1], k.ne[2]
    wv_b = _w(c, f"blk.{il}.attn_v_b.weight", il)
    width = qcur.ne[0]
    v = g.view(k, (rank, 1, n_kv, ns), k.nb)
    qv = g.view(qcur, (width, nh, T // ns, ns), (qcur.nb[0], qcur.nb[1], qcur.nb[2], qcur.nb[2] * (T // ns)))
    qp, kp, vp = g.permute(qv, 0, 2, 1, 3), g.permute(k, 0, 2, 1, 3), g.permute(v, 0, 2, 1, 3)
    if fa:
        out = g.new(f"node_fa-{il}", "FLASH_ATTN_EXT", "F32", (rank, nh, T // ns, ns), qp, kp, vp, mask, *extra)
        out = g.permute(out, 0, 2, 1, 3)
        out = g.mul_mat(f"fattn_mla-{il}", wv_b, out)
        out = g.permute(out, 0, 2, 1, 3)
        out = g.new(f"node_cont-{il}", "CONT", "F32", out.ne, out)
        cur = g.reshape(out, out.ne[0] * out.ne[1], out.ne[2] * out.ne[3])
    else:
        kq = g.mul_mat(f"kq-{il}", kp, qp)
        kq = g.op(f"kq_soft_max-{il}", "SOFT_MAX", kq, mask, *extra)
        vt = g.permute(vp, 1, 0, 2, 3)  # ggml_transpose
        vc = g.new(f"v_cont-{il}", "CONT", vt.type, vt.ne, vt)
        kqv = g.mul_mat(f"kqv-{il}", vc, kq)
        kqv = g.mul_mat(f"kqv_mla-{il}", wv_b, kqv)
        perm = g.permute(kqv, 0, 2, 1, 3)
        cur = g.new(f"kqv_out-{il}", "CONT", "F32", (perm.ne[0] * perm.ne[1], perm.ne[2] * perm.ne[3]), perm)
        kqv_on_host(c, cur)
    g.expand(cur)
    return cur


def mla_mha(c: _Ctx, g: _Graph, qcur: _T, k: _T, mask: _T, il: int, rank: int) -> _T:
    """:func:`mha` then the output projection: deepseek2's and deepseek32's layers alike."""
    return g.mul_mat(f"attn_out-{il}", _w(c, f"blk.{il}.attn_output.weight", il), mha(c, g, qcur, k, mask, il, rank))


def build(c: _Ctx, g: _Graph) -> _T:
    """The transformer of ``deepseek2`` (deepseek2.cpp ``graph::graph``): the trunk's layers (NextN left
    out), attention as :func:`_mla_attn`, a dense FFN in the leading layers, then the routed experts plus
    the shared ones."""
    hp, sp = c.hp, c.sp
    mp = moe_params(c)
    gating = mp.gating or SOFTMAX
    if not mp.gating and hp.n_layer_main in (47, 48) and mp.n_vocab == 154880:  # GLM 4.7 Lite
        gating = SIGMOID
    ns = sp.n_streams
    T, n_out = c.n_tokens, c.n_outputs
    last = hp.n_layer_main - 1
    x = _inp_embd(c, g)
    scale = g.input("inp_attn_scale", "F32", 1, 1, T) if mp.attn_temp else None
    c.pos = g.input("inp_pos", "I32", T)
    k_idxs = g.input("attn_inp_k_idxs", "I64", T)
    mask = g.input("attn_inp_kq_mask", "F16" if sp.flash_attn else "F32", sp.n_kv, T // ns, 1, ns)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        if il > last:  # the NextN/MTP block: not part of the decoder graph
            continue
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        cur = _mla_attn(c, g, cur, il, k_idxs, mask, scale)
        x = layer_tail(c, g, cur, inp_sa, il, il == last, out_ids, mp, gating)
    return output_head(c, g, x)


def layer_tail(
    c: _Ctx, g: _Graph, cur: _T, inp_sa: _T, il: int, last: bool, out_ids: _T, mp: MoeParams, gating: int
) -> _T:
    """A trunk layer after its attention (deepseek2.cpp, deepseek32.cpp, glm-dsa.cpp): the last layer's
    rows picked, the residual, the FFN norm, a dense FFN in the leading layers or the routed experts plus
    the shared ones, the residual again."""
    if last:
        n = (c.hp.n_embd, c.n_outputs)
        cur = g.new("node_rows", "GET_ROWS", "F32", n, cur, out_ids)
        inp_sa = g.new("node_rows", "GET_ROWS", "F32", n, inp_sa, out_ids)
    ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
    cur = _norm(c, g, ffn_inp, f"blk.{il}.ffn_norm.weight", il)
    if il < mp.n_lead:
        cur = ffn(c, g, cur, il)
    else:
        moe_out, routed = moe_ffn(c, g, cur, il, mp, gating)
        shexp = ffn(c, g, cur, il, "_shexp", routed)
        cur = g.op(f"ffn_out-{il}", "ADD", moe_out, shexp)
    return g.op(f"l_out-{il}", "ADD", cur, ffn_inp)


def output_head(c: _Ctx, g: _Graph, x: _T) -> _T:
    """The output norm (an output too) and the logits, over ``output.weight`` or the tied embedding."""
    return output(c, g, x, tied_head(c))


__all__ = [
    "MoeParams",
    "Routed",
    "build",
    "cache_k",
    "cache_write",
    "ffn",
    "mha",
    "moe_ffn",
    "moe_params",
    "params_of",
    "topk_fusion",
    "unbuildable",
]


def unbuildable(model: GGUFModel) -> str | None:
    """Why the deepseek2 graph cannot be built from this file (None when it can): the absorbed MLA form
    (``attn_k_b``/``attn_v_b``; legacy files with one ``attn_kv_b`` are not simulated), every trunk layer's
    tensors in the shapes deepseek2.cpp creates them, experts split into gate and up."""
    md = model.metadata
    arch = model.architecture or ""
    if not (md.get_int(f"{arch}.attention.key_length_mla") and md.get_int(f"{arch}.attention.value_length_mla")):
        return "deepseek2 graphs without attention.key_length_mla/value_length_mla (no absorbed MLA) are not simulated"
    n_layer = md.get_int(f"{arch}.block_count") or 0
    n_main = n_layer - (md.get_int(f"{arch}.nextn_predict_layers") or 0)
    n_lead = md.get_int(f"{arch}.leading_dense_block_count") or 0
    if n_lead < n_main and (why := _moe_check.expert_counts(model)):
        return why
    dims = {t.name: len(t.shape) for t in model.tensors}
    if why := _moe_check.expert_groups(model) or _moe_check.needs_ends(dims):
        return why
    for il in range(min(n_main, 513)):
        p = f"blk.{il}."
        if p + "ffn_gate_up_exps.weight" in dims:
            return "deepseek2 graphs with merged gate_up experts are not simulated"
        need = ["attn_norm", "attn_kv_a_norm", "attn_kv_a_mqa", "attn_output", "ffn_norm"]
        need += ["attn_q_a", "attn_q_a_norm", "attn_q_b"] if p + "attn_q_a.weight" in dims else ["attn_q"]
        three = ["attn_k_b", "attn_v_b"]
        if il < n_lead:
            need += ["ffn_gate", "ffn_up", "ffn_down"]
        else:
            need += ["ffn_gate_inp", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]
            three += ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
        for role in need + three:
            if p + role + ".weight" not in dims:
                return f"the graph needs tensor {p}{role}.weight, which the file lacks"
        for role in three:
            if dims[p + role + ".weight"] != 3:
                return f"the graph needs a three-dimensional tensor {p}{role}.weight"
    return None
