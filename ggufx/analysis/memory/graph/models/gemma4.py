"""``gemma4`` (src/models/gemma4.cpp): Gemma 4's decoder (E2B, E4B, 26B-A4B, 31B), Gemma 3's layer with
what Gemma 4 changes:

- two attention geometries: the sliding-window layers' head size (``key_length_swa``) and KV heads, the
  full-attention layers' own (``key_length``, fewer KV heads: a ``head_count_kv`` array) with RoPE
  frequency factors (``rope_freqs``); each cache its own Hadamard rotations with a quantized cache;
- Q, K heads RMS-normed with weights, V RMS-normed without one; ``attention_k_eq_v``: a layer without
  ``attn_v`` uses K's projection as V (normed apart); no query scaling (``f_attention_scale`` 1);
- shared KV: the last ``attention.shared_kv_layers`` layers compute Q only and attend over the cache of
  the last sliding-window / full-attention layer before them (llama-model.cpp:2796-2803), writing nothing;
- per-layer embeddings (E2B/E4B: ``embedding_length_per_layer_input``): the rows of
  ``per_layer_token_embd`` for the tokens, scaled, plus the embeddings projected by ``per_layer_model_proj``,
  normed and scaled, one ``[n_embd_per_layer, n_tokens]`` slice per layer, gated into the residual after
  the FFN (``inp_gate``, GELU, ``proj``, ``post_norm``);
- mixture of experts (26B-A4B): every layer's dense FFN (the shared expert) beside routed experts whose
  router reads the attention output RMS-normed, scaled and multiplied by ``ffn_gate_inp.scale``;
  softmax gating, normalized weights, GEGLU experts (``ffn_gate_up_exps`` fused, or gate and up apart),
  ``ffn_down_exps.scale`` per expert; the two branches normed apart and added;
- the layer scalar (``layer_output_scale``), the output norm kept as an output (``h_nextn``, the MTP
  drafter's input), the output rows gathered after it, final logit soft-capping.

The graph's node order is ``ggml_build_forward_expand``'s: only the expansions gemma4.cpp, ``build_attn``
and ``build_moe_ffn`` make are made here."""

from __future__ import annotations

import math

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph, _ne, _strides, _type
from ggufx.analysis.memory.graph.llm import (
    _AttnInp,
    _Ctx,
    _inp_embd,
    _rot,
    _w,
    _weight,
    attn_no_flash,
    merged_streams,
    model_of,
    moe_select,
    moe_weighted_sum,
    set_rows,
)
from ggufx.analysis.memory.graph.models._dense import tied_head
from ggufx.analysis.memory.graph.models.qwen3next import n_expert_used
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

ARCH = "gemma4"


def kv_from_start(n_layer: int, shared: int) -> int:
    """``n_layer_kv_from_start`` (gemma4.cpp load_arch_hparams): the first layer without its own KV."""
    return n_layer - shared


def _shared(c: _Ctx) -> int:
    n = model_of(c).metadata.get_int(f"{ARCH}.attention.shared_kv_layers")
    return max(n or 0, 0)


def _per_layer(c: _Ctx) -> int:
    n = model_of(c).metadata.get_int(f"{ARCH}.embedding_length_per_layer_input")
    return max(n or 0, 0)


def _dims(c: _Ctx, il: int) -> tuple[int, int, int, int]:
    """Layer ``il``'s query heads, KV heads, K and V head sizes (``llama_hparams::n_embd_head_k(il)``:
    the sliding-window layers' own)."""
    hp = c.hp
    swa = c.swa[il]
    return (
        hp.n_head[il],
        hp.n_head_kv[il],
        hp.head_k_swa if swa else hp.head_k,
        hp.head_v_swa if swa else hp.head_v,
    )


def _v_gqa_max(c: _Ctx) -> int:
    """``n_embd_v_gqa_max`` over every layer: the width of a transposed V cache (TAG_V_CACHE_VARIABLE)."""
    hp = c.hp
    return max(hp.n_head_kv[il] * (hp.head_v_swa if c.swa[il] else hp.head_v) for il in range(hp.n_layer))


def _attn_inp(c: _Ctx, g: _Graph, n_kv: int, hd: int) -> _AttnInp:
    """One cache's inputs (``build_attn_inp_kv_iswa``): the rows to write, the mask, and the Hadamard
    rotations of a quantized cache (llama-kv-cache.cpp:316-352: K's of the cache's head size ``hd`` when
    layer 0's is a multiple of 64, V's of 64)."""
    hp, sp, T = c.hp, c.sp, c.n_tokens
    tk, tv = _type(sp.type_k), _type(sp.type_v)
    h0k = hp.head_k_swa if c.swa[0] else hp.head_k
    h0v = hp.head_v_swa if c.swa[0] else hp.head_v
    k_rot = None
    if tk.block_size > 1 and h0k % 64 == 0 and hd > 0:
        n = 64
        while hd % (2 * n) == 0:
            n *= 2
        k_rot = g.input("attn_inp_k_rot", "F32", n, n)
        k_rot.ne, k_rot.nb = _ne(n, n), _strides(_ne(n, n), "F32")
    v_rot = g.input("attn_inp_v_rot", "F32", 64, 64) if tv.block_size > 1 and h0v % 64 == 0 else None
    k_idxs = g.input("attn_inp_k_idxs", "I64", T)
    v_idxs = g.input("attn_inp_v_idxs", "I64", T * (_v_gqa_max(c) if not sp.flash_attn else 1))
    ns = sp.n_streams
    mask = g.input("attn_inp_kq_mask", "F16" if sp.flash_attn else "F32", n_kv, T // ns, 1, ns)
    return _AttnInp(n_kv, k_idxs, v_idxs, mask, k_rot, v_rot)


def _norm(c: _Ctx, g: _Graph, x: _T, weight: str, il: int, pin: bool = True) -> _T:
    """``build_norm`` with RMS: the norm (pinned to layer ``il``'s device by ``graph_get_cb`` when
    gemma4.cpp passes the layer: ``pin``), times its weight (layer ``il``'s copy; -1: the input layer's,
    ``n_layer``: the output layer's)."""
    cur = g.op(f"norm-{il}", "RMS_NORM", x)
    if pin:
        cur.backend = c.pin[il]
    return g.op(f"normed-{il}", "MUL", cur, _w(c, weight, il))


def _mha(c: _Ctx, g: _Graph, q: _T, il: int, src_il: int, inp: _AttnInp) -> _T:
    """``build_attn_mha`` over layer ``src_il``'s cache (the layer's own, or the one a shared-KV layer
    reuses): flash attention, or K*Q, soft_max, V*KQ over the transposed V cache."""
    sp = c.sp
    T, ns = c.n_tokens, sp.n_streams
    nh, nkv, hd, hv = _dims(c, il)
    fa = sp.flash_attn
    n_kv = inp.n_kv
    v_gqa = _v_gqa_max(c)
    buft = c.cache_buft[src_il]
    cache_k = g.leaf(f"cache_k_l{src_il}", sp.type_k, (hd * nkv, n_kv * ns), buft=buft)
    cache_v = g.leaf(f"cache_v_l{src_il}", sp.type_v, ((hv * nkv) if fa else v_gqa, n_kv * ns), buft=buft)
    qv = g.permute(g.view(q, (hd, nh, T // ns, ns), (q.nb[0], q.nb[1], q.nb[2], q.nb[2] * (T // ns))), 0, 2, 1, 3)
    krow = cache_k.nb[1]
    kp = g.permute(g.view(cache_k, (hd, nkv, n_kv, ns), (cache_k.nb[0], krow // nkv, krow, krow * n_kv)), 0, 2, 1, 3)
    if fa:
        vrow = cache_v.nb[1]
        vview = g.view(cache_v, (hv, nkv, n_kv, ns), (cache_v.nb[0], vrow // nkv, vrow, vrow * n_kv))
        out = g.new(
            f"node_fa-{il}", "FLASH_ATTN_EXT", "F32", (hv, nh, T // ns, ns), qv, kp, g.permute(vview, 0, 2, 1, 3)
        )
        out.src.append(inp.mask)
        cur = g.reshape(out, hv * nh, T)
    else:
        es = cache_v.nb[0]
        vview = g.view(cache_v, (n_kv, nkv, hv, ns), (es, es * n_kv * hv, es * n_kv, es * n_kv * v_gqa))
        vp = g.permute(vview, 0, 2, 1, 3)
        cur = attn_no_flash(c, g, qv, kp, vp, inp.mask, il)
    return cur


def _store(c: _Ctx, g: _Graph, k: _T, v: _T, il: int, inp: _AttnInp) -> None:
    """``cpy_k`` / ``cpy_v`` (llama-kv-cache.cpp): SET_ROWS of K and V into views of layer ``il``'s cache
    (V padded to the transposed cache's width where the layer's is narrower)."""
    sp = c.sp
    T, ns = c.n_tokens, sp.n_streams
    _, nkv, hd, hv = _dims(c, il)
    fa = sp.flash_attn
    n_kv = inp.n_kv
    v_gqa = _v_gqa_max(c)
    buft = c.cache_buft[il]
    cache_k = g.leaf(f"cache_k_l{il}", sp.type_k, (hd * nkv, n_kv * ns), buft=buft)
    cache_v = g.leaf(f"cache_v_l{il}", sp.type_v, ((hv * nkv) if fa else v_gqa, n_kv * ns), buft=buft)
    g.expand(set_rows(g, merged_streams(g, cache_k, ns), g.rows(k, hd * nkv, T), inp.k_idxs))
    if fa:
        set_v = set_rows(g, merged_streams(g, cache_v, ns), g.rows(v, hv * nkv, T), inp.v_idxs)
    else:
        v2 = g.reshape(v, hv * nkv, T)
        if hv * nkv < v_gqa:  # [TAG_V_CACHE_VARIABLE]
            v2 = g.new(f"Vcur_pad-{il}", "PAD", "F32", (v_gqa, T), v2)
        set_v = set_rows(g, g.reshape(cache_v, 1, math.prod(cache_v.ne)), g.reshape(v2, 1, v2.ne[0] * T), inp.v_idxs)
    g.expand(set_v)


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp, kv_from: int) -> _T:
    """Q (normed, roped), then K and V into the cache (a layer with its own KV) and the attention over
    its cache or the one it reuses, then the output projection (``build_attn``, llama-graph.cpp:3190)."""
    T = c.n_tokens
    nh, nkv, hd, hv = _dims(c, il)
    b = f"blk.{il}."
    assert c.pos is not None
    freqs = None if c.swa[il] else _weight(c, "rope_freqs.weight", il)
    rope_src = [c.pos, *([freqs] if freqs is not None else [])]
    q = g.reshape(g.mul_mat(f"Qcur-{il}", _w(c, b + "attn_q.weight", il), x), hd, nh, T)
    q = _norm(c, g, q, b + "attn_q_norm.weight", il)
    q = g.new(f"Qcur_pos-{il}", "ROPE", "F32", q.ne, q, *rope_src)
    if il < kv_from:
        kmat = g.mul_mat(f"Kcur-{il}", _w(c, b + "attn_k.weight", il), x)
        wv = _weight(c, b + "attn_v.weight", il)
        vmat = g.mul_mat(f"Vcur-{il}", wv, x) if wv is not None else kmat  # attention_k_eq_v
        k = _norm(c, g, g.reshape(kmat, hd, nkv, T), b + "attn_k_norm.weight", il)
        v = g.op(f"Vcur_normed-{il}", "RMS_NORM", g.reshape(vmat, hv, nkv, T))
        k = g.new(f"Kcur_pos-{il}", "ROPE", "F32", k.ne, k, *rope_src)
        q, k, v = _rot(g, q, inp.k_rot), _rot(g, k, inp.k_rot), _rot(g, v, inp.v_rot)
        for t in (q, k, v):
            g.expand(t)
        _store(c, g, k, v, il, inp)
        src_il = il
    else:  # llama-model.cpp:2801: the last sliding-window / full-attention layer with its own KV
        q = _rot(g, q, inp.k_rot)
        g.expand(q)
        src_il = kv_from - (2 if c.swa[il] else 1)
    cur = _mha(c, g, q, il, src_il, inp)
    cur = _rot(g, cur, inp.v_rot)
    g.expand(cur)  # build_attn_mha expands the attention's output before the output projection
    return g.mul_mat(f"attn_out-{il}", _w(c, b + "attn_output.weight", il), cur)


def _ffn(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    """``build_ffn`` with GELU and a parallel gate: gate, up, GEGLU (one GLU node), down."""
    b = f"blk.{il}."
    gate = g.mul_mat(f"ffn_gate-{il}", _w(c, b + "ffn_gate.weight", il), x)
    up = g.mul_mat(f"ffn_up-{il}", _w(c, b + "ffn_up.weight", il), x)
    act = g.new(f"ffn_geglu-{il}", "GLU", "F32", gate.ne, gate, up)
    return g.mul_mat(f"ffn_out-{il}", _w(c, b + "ffn_down.weight", il), act)


def _moe(c: _Ctx, g: _Graph, cur: _T, logits: _T, il: int) -> _T:
    """``build_moe_ffn`` with the router's logits given, softmax gating, normalized weights, GEGLU
    experts (fused gate-up or apart) and the per-expert down scale (``build_lora_mm_id``: the scale
    repeated per token, its rows for the chosen experts, multiplied in), in its expansion order."""
    n_used = n_expert_used(c)
    T, E = cur.ne[1], cur.ne[0]
    p = f"blk.{il}."
    n_exp = logits.ne[0]
    topk, w3 = moe_select(g, logits, il, n_used)
    x = g.reshape(cur, E, 1, T)
    gate_up_w = _weight(c, p + "ffn_gate_up_exps.weight", il)
    if gate_up_w is not None:
        gate_up = g.new(f"ffn_moe_gate_up-{il}", "MUL_MAT_ID", "F32", (gate_up_w.ne[1], n_used, T), gate_up_w, x, topk)
        n_ff = gate_up.ne[0] // 2
        gate = g.view(gate_up, (n_ff, n_used, T), gate_up.nb[:3])  # ggml_view_3d: nb1, nb2 of gate_up
        up = g.view(gate_up, (n_ff, n_used, T), gate_up.nb[:3])  # ggml_view_3d: nb1, nb2 of gate_up
    else:
        up_w, gate_w = _w(c, p + "ffn_up_exps.weight", il), _w(c, p + "ffn_gate_exps.weight", il)
        up = g.new(f"ffn_moe_up-{il}", "MUL_MAT_ID", "F32", (up_w.ne[1], n_used, T), up_w, x, topk)
        gate = g.new(f"ffn_moe_gate-{il}", "MUL_MAT_ID", "F32", (gate_w.ne[1], n_used, T), gate_w, x, topk)
    act = g.new(f"ffn_moe_geglu-{il}", "GLU", "F32", gate.ne, gate, up)
    down_w = _w(c, p + "ffn_down_exps.weight", il)
    experts = g.new(f"ffn_moe_down-{il}", "MUL_MAT_ID", "F32", (down_w.ne[1], n_used, T), down_w, act, topk)
    scale = _weight(c, p + "ffn_down_exps.scale", il)
    if scale is not None:
        s = g.new(f"ffn_moe_down_s-{il}", "REPEAT", "F32", (1, n_exp, T), g.reshape(scale, 1, n_exp, 1))
        s = g.new(f"ffn_moe_down_s-{il}", "GET_ROWS", "F32", (1, n_used, T), s, topk)
        experts = g.op(f"ffn_moe_down_scaled-{il}", "MUL", experts, s)
    return moe_weighted_sum(g, experts, w3, il, E, n_used)


def layer_kind(il: int) -> None:
    """The layers' differences are all in what the layer signatures see (heads, sliding window, weights)
    but the shared KV, which graphsim's plan cannot tell from here; the allocator's periodicity checks
    refuse a shortened replay that would leave out a layer unlike the ones it keeps."""
    return None


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph of gemma4.cpp."""
    hp, sp = c.hp, c.sp
    T, n_out, E, L = c.n_tokens, c.n_outputs, hp.n_embd, hp.n_layer
    kv_from = kv_from_start(L, _shared(c))
    n_pl = _per_layer(c)
    x = _inp_embd(c, g)  # build_inp_embd(tok_embd, sqrt(n_embd)): the token rows times inp_scale_rows
    x = g.op("inp_scaled", "MUL", x, g.input("inp_scale_rows", "F32", 1, T))
    g.expand(x)
    c.pos = g.input("inp_pos", "I32", T)
    full = _attn_inp(c, g, sp.n_kv, hp.head_k)
    swa = _attn_inp(c, g, c.n_kv_swa, hp.head_k_swa)
    out_ids = g.input("out_ids", "I32", n_out)
    per_layer: _T | None = None
    if n_pl and _weight(c, "per_layer_token_embd.weight", -1) is not None:
        # build_inp_per_layer: [n_embd_per_layer, n_layer, n_tokens], expanded at once
        rows = g.new("inp_per_layer", "GET_ROWS", "F32", (n_pl * L, T), _w(c, "per_layer_token_embd.weight", -1))
        rows.src.append(g.input("inp_per_layer_tokens", "I32", T))
        sel = g.op("inp_per_layer_selected", "SCALE", g.reshape(rows, n_pl, L, T))
        g.expand(sel)
        # project_per_layer_inputs: [n_embd_per_layer, n_tokens, n_layer] (computed where first read);
        # per_layer_model_proj and its norm are layer 0's tensors (llama-arch.cpp: LAYER_REPEATING)
        proj = g.mul_mat("per_layer_proj", _w(c, "per_layer_model_proj.weight", 0), x)
        proj = g.reshape(g.op("per_layer_proj", "SCALE", proj), n_pl, L, T)
        proj = _norm(c, g, proj, "per_layer_proj_norm.weight", 0, pin=False)
        per_layer = g.op("inp_per_layer", "SCALE", g.op("inp_per_layer", "ADD", proj, sel))
        pp = g.permute(per_layer, 0, 2, 1, 3)
        per_layer = g.new("inp_per_layer", "CONT", "F32", pp.ne, pp)
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        cur = _norm(c, g, x, b + "attn_norm.weight", il)
        cur = _attention(c, g, cur, il, swa if c.swa[il] else full, kv_from)
        cur = _norm(c, g, cur, b + "post_attention_norm.weight", il)
        attn_out = g.op(f"attn_out-{il}", "ADD", cur, x)
        if _weight(c, b + "ffn_gate_inp.weight", il) is not None:
            mlp = _ffn(c, g, _norm(c, g, attn_out, b + "ffn_norm.weight", il), il)
            mlp = _norm(c, g, mlp, b + "post_ffw_norm_1.weight", il)
            moe_in = _norm(c, g, attn_out, b + "pre_ffw_norm_2.weight", il)
            tmp = g.op(f"ffn_moe_router-{il}", "SCALE", g.op(f"ffn_moe_router-{il}", "RMS_NORM", attn_out))
            tmp = g.op(f"ffn_moe_router-{il}", "MUL", tmp, _w(c, b + "ffn_gate_inp.scale", il))
            logits = g.mul_mat(f"ffn_moe_logits-{il}", _w(c, b + "ffn_gate_inp.weight", il), tmp)
            moe = _norm(c, g, _moe(c, g, moe_in, logits, il), b + "post_ffw_norm_2.weight", il)
            cur = g.op(f"ffn_moe_combined-{il}", "ADD", mlp, moe)
        else:
            cur = _ffn(c, g, _norm(c, g, attn_out, b + "ffn_norm.weight", il), il)
        cur = _norm(c, g, cur, b + "post_ffw_norm.weight", il, pin=False)  # built with il = -1
        cur = g.op(f"pe_in-{il}", "ADD", cur, attn_out)
        if per_layer is not None:
            pe_in = cur
            gate = g.op(f"pe_gelu-{il}", "UNARY", g.mul_mat(f"pe_gate-{il}", _w(c, b + "inp_gate.weight", il), cur))
            this = g.view(per_layer, per_layer.ne[:2], per_layer.nb[:2])  # gemma4_view_2d_slice
            cur = g.mul_mat(f"pe_proj-{il}", _w(c, b + "proj.weight", il), g.op(f"pe_mul-{il}", "MUL", gate, this))
            cur = _norm(c, g, cur, b + "post_norm.weight", il)
            cur = g.op(f"pe_out-{il}", "ADD", pe_in, cur)
        scalar = _weight(c, b + "layer_output_scale.weight", il)
        if scalar is not None:
            cur = g.op(f"out_scaled-{il}", "MUL", cur, scalar)
        x = cur
    g.at(GLOBAL)
    h = _norm(c, g, x, "output_norm.weight", L, pin=False)
    h.flags |= OUTPUT  # t_h_nextn (gemma4.cpp: the MTP drafter's input), an output of every graph
    res = g.new("result_norm", "GET_ROWS", "F32", (E, n_out), h, out_ids)
    res.flags |= OUTPUT
    out_w = tied_head(c)
    logits = g.mul_mat("result_output", out_w, res)
    cap = model_of(c).metadata.get(f"{ARCH}.final_logit_softcapping")
    if isinstance(cap, (int, float)) and not isinstance(cap, bool) and cap:
        logits = g.op("result_output", "UNARY", g.op("result_output", "SCALE", logits))
        logits = g.op("result_output", "SCALE", logits)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Why the gemma4 graph cannot be built from this file (None when it can): a tensor the graph reads
    that the file lacks or of another shape than gemma4.cpp creates (llama.cpp refuses the file), the
    shared-KV layers without the two layers they reuse, and the parts not rebuilt here (a fused
    ``attn_qkv``, NVFP4's per-tensor scales)."""
    md = model.metadata
    hp = hparams(model)
    E, L = hp.n_embd, hp.n_layer
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    if any(".attn_qkv." in n for n in tensors):
        return "gemma4 graphs with a fused attn_qkv projection are not simulated"
    odd = next(
        (
            n
            for n in tensors
            if n.endswith((".scale", ".input_scale")) and not n.endswith(("ffn_gate_inp.scale", "ffn_down_exps.scale"))
        ),
        None,
    )
    if odd is not None:
        return f"gemma4 graphs with tensor {odd} are not simulated"
    from ggufx.analysis.layers import swa_layers

    swa = swa_layers(model, L)
    shared = max(md.get_int(f"{ARCH}.attention.shared_kv_layers") or 0, 0)
    kv_from = kv_from_start(L, shared)
    if shared and (kv_from < 2 or not swa[kv_from - 2] or swa[kv_from - 1]):
        return "the shared-KV layers need a sliding-window then a full-attention layer before them"
    if hp.head_k != hp.head_v or hp.head_k_swa != hp.head_v_swa:
        return "the graph needs equal K and V head sizes (gemma4.cpp load_arch_tensors)"
    n_pl = max(md.get_int(f"{ARCH}.embedding_length_per_layer_input") or 0, 0)
    needed: dict[str, tuple[int, ...]] = {"token_embd.weight": (), "output_norm.weight": (E,)}
    if n_pl:
        needed |= {
            "per_layer_token_embd.weight": (n_pl * L, hp.n_vocab) if hp.n_vocab else (),
            "per_layer_model_proj.weight": (E, n_pl * L),
            "per_layer_proj_norm.weight": (n_pl,),
        }
    if not all(swa[:L]):
        needed["rope_freqs.weight"] = ()
    moe_layers = [il for il in range(L) if f"blk.{il}.ffn_gate_inp.weight" in tensors]
    if moe_layers:
        n_expert = md.get_int(f"{ARCH}.expert_count") or 0
        n_used = md.get_int(f"{ARCH}.expert_used_count") or 0
        if not 0 < n_used <= n_expert <= 1024:  # llama-model.cpp: LLAMA_MAX_EXPERTS
            return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
    for il in range(L):
        b = f"blk.{il}."
        nh, nkv = hp.n_head[il], hp.n_head_kv[il]
        hd = hp.head_k_swa if swa[il] else hp.head_k
        w: dict[str, tuple[int, ...]] = {
            "attn_norm.weight": (E,),
            "attn_q.weight": (E, hd * nh),
            "attn_output.weight": (hd * nh, E),
            "attn_q_norm.weight": (hd,),
            "post_attention_norm.weight": (E,),
            "ffn_norm.weight": (E,),
            "ffn_gate.weight": (),
            "ffn_up.weight": (),
            "ffn_down.weight": (),
            "post_ffw_norm.weight": (E,),
        }
        if il < kv_from:
            w |= {"attn_k.weight": (E, hd * nkv), "attn_k_norm.weight": (hd,)}
        if n_pl:
            w |= {"inp_gate.weight": (E, n_pl), "proj.weight": (n_pl, E), "post_norm.weight": (E,)}
        if il in moe_layers:
            w |= {
                "ffn_gate_inp.scale": (E,),
                "pre_ffw_norm_2.weight": (E,),
                "post_ffw_norm_1.weight": (E,),
                "post_ffw_norm_2.weight": (E,),
                "ffn_down_exps.weight": (),
            }
            if b + "ffn_gate_up_exps.weight" not in tensors:
                w |= {"ffn_gate_exps.weight": (), "ffn_up_exps.weight": ()}
        needed |= {b + n: s for n, s in w.items()}
    for name, shape in needed.items():
        if name not in tensors:
            return f"the graph needs tensor {name}, which the file lacks"
        if shape and tensors[name] != shape:
            return f"the graph needs tensor {name} of shape {list(shape)}, not {list(tensors[name])}"
    return None
