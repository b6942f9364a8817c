"""``bailingmoe3`` (src/models/bailingmoe3.cpp: Ling 2.5): kimi-linear's hybrid -- Kimi-delta-attention
(KDA) layers where ``head_count_kv`` is 0 and multi-head latent attention layers on the K-only cache --
with Ling's own pieces: the KDA decay gate from one full-rank projection (``ssm_f_a``: the sigmoid of the
biased projection times ``ssm_a``, scaled by ``kda.gate_lower_bound``) and one full-rank output gate
(``ssm_g_a``); MLA with or without q_lora and with RoPE (M-RoPE where the file has
``rope.dimension_sections``), its output (no projection inside ``build_attn``) times the sigmoid of the
head-wise gate ``attn_gate`` before ``attn_output``; a dense FFN in the leading layers, then the routed
experts (the file's gating, weight normalization and scale; the selection bias) plus the shared expert;
the SwiGLU clamps ``swiglu_clamp_exp`` (experts) and ``swiglu_clamp_shexp`` (every other ``build_ffn`` of
the layer). With ``embeddings_nextn_masked`` false (llama-context.cpp:122) the last layer keeps every row:
the output norm is the MTP hidden state (``t_h_nextn``, an output), the rows are picked after it. The MTP
block is left out, as llama.cpp leaves it from the main graph."""

from __future__ import annotations

from dataclasses import replace
from typing import cast

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph, _type
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _norm, _w, _weight, model_of
from ggufx.analysis.memory.graph.models import _moe_check, deepseek2, qwen3next
from ggufx.analysis.memory.graph.models._dense import tied_head
from ggufx.analysis.memory.graph.models.deepseek2 import cache_k, cache_write, mha
from ggufx.analysis.memory.graph.models.kimi_linear import _causal_conv, _Kda, _kda_dims, kda_header
from ggufx.analysis.memory.graph.models.qwen35 import _rs
from ggufx.analysis.memory.graph.models.step35 import _clamped_swiglu, _ClampedExperts, _clamps
from ggufx.format.values import GGUFArray
from ggufx.model import GGUFModel


def _limit(c: _Ctx, key: str, il: int) -> bool:
    """Whether layer ``il``'s SwiGLU clamp ``key`` is on (``limit > 1e-6``, llama-graph.cpp ``build_ffn``
    and ``build_moe_ffn``)."""
    v = _clamps(model_of(c), f"{c.hp.arch}.{key}", il + 1)
    return len(v) > il and v[il] > 1e-6


def ffn(c: _Ctx, g: _Graph, cur: _T, il: int, part: str = "", routed: deepseek2.Routed | None = None) -> _T:
    """``build_ffn`` (SiLU, parallel gate) of the dense FFN (``part`` "") or the shared expert
    (``"_shexp"``), with the layer's ``swiglu_clamp_shexp`` (CLAMP, SILU, CLAMP, MUL) where it is on."""
    if not _limit(c, "swiglu_clamp_shexp", il):
        return deepseek2.ffn(c, g, cur, il, part, routed)
    b = f"blk.{il}.ffn_"
    up = g.mul_mat(f"ffn_up-{il}", _w(c, f"{b}up{part}.weight", il), cur)
    gate = g.mul_mat(f"ffn_gate-{il}", _w(c, f"{b}gate{part}.weight", il), cur)
    act = _clamped_swiglu(g, gate, up, "ffn_", il)
    return g.mul_mat(f"ffn_out-{il}", _w(c, f"{b}down{part}.weight", il), act)


def moe(c: _Ctx, g: _Graph, cur: _T, il: int, mp: deepseek2.MoeParams) -> _T:
    """The routed experts (``swiglu_clamp_exp``: the clamped SwiGLU) plus the shared expert, added."""
    gg = cast(_Graph, _ClampedExperts(g, il)) if _limit(c, "swiglu_clamp_exp", il) else g
    out, routed = deepseek2.moe_ffn(c, gg, cur, il, mp, mp.gating)
    return g.op(f"ffn_out-{il}", "ADD", out, ffn(c, g, cur, il, "_shexp", routed))


def _kda(c: _Ctx, g: _Graph, x: _T, il: int, s_copy: _T, d: _Kda) -> _T:
    """The KDA layer (bailingmoe3.cpp:263-306): the convolved Q, K and V (kimi-linear's, ``n_rs_seq`` 0:
    one snapshot), the gate ``lower_bound * sigmoid((f_a(x) + dt_bias) * A)``, beta's sigmoid, the
    L2-normed Q and K, the fused ``GATED_DELTA_NET`` (``build_recurrent_attn``: the state written back
    before the output is made contiguous), the RMS norm of each head times the sigmoid of ``g_a(x)``, the
    output projection."""
    T, ns = c.n_tokens, c.sp.n_seq_max
    nst = T // ns
    S, H = d.head, d.n_head
    p = f"blk.{il}."
    buft = c.cache_buft[il]
    cache_r = g.leaf(f"cache_r_l{il}", "F32", (d.n_embd_r, ns), buft=buft)
    cache_s = g.leaf(f"cache_s_l{il}", "F32", (d.n_embd_s, ns), buft=buft)
    conv_state = _rs(c, g, cache_r, s_copy, d.n_embd_r)
    q, k, v = (_causal_conv(c, g, x, i, il, d, conv_state, cache_r) for i in range(3))
    gate = g.mul_mat(f"kda_f_a-{il}", _w(c, p + "ssm_f_a.weight", il), x)
    gate = g.reshape(g.op(f"kda_f_biased-{il}", "ADD", gate, _w(c, p + "ssm_dt.bias", il)), S, H, T)
    gate = g.op(f"kda_f_a-{il}", "MUL", gate, g.reshape(_w(c, p + "ssm_a", il), 1, H, 1))
    gate = g.op(f"kda_gate-{il}", "SCALE", g.op(f"kda_gate_sigmoid-{il}", "UNARY", gate))
    gate = g.reshape(gate, S, H, nst, ns)
    beta = g.mul_mat(f"kda_beta-{il}", _w(c, p + "ssm_beta.weight", il), x)
    beta = g.op(f"beta_sigmoid-{il}", "UNARY", g.reshape(beta, 1, H, nst, ns))
    q = g.op(f"q_l2-{il}", "SCALE", g.new(f"q_norm-{il}", "RMS_NORM", "F32", q.ne, q))
    k = g.op(f"k_l2-{il}", "SCALE", g.new(f"k_norm-{il}", "RMS_NORM", "F32", k.ne, k))
    state = g.reshape(_rs(c, g, cache_s, s_copy, d.n_embd_s), S, S, H, ns)
    gdn = g.new(f"gdn-{il}", "GATED_DELTA_NET", "F32", (S * H, T + S * ns), q, k, v, gate, beta, state)
    out = g.view(gdn, (S, H, nst, ns), (4, 4 * S, 4 * S * H))
    new_state = g.view(gdn, (d.n_embd_s, ns), (4, 4 * d.n_embd_s))
    dst = g.view(cache_s, (d.n_embd_s, ns), cache_s.nb[:2])
    g.cpy(new_state, dst)
    out = g.new(f"attn_output-{il}", "CONT", "F32", out.ne, out)
    out_gate = g.mul_mat(f"kda_g_a-{il}", _w(c, p + "ssm_g_a.weight", il), x)
    normed = _norm(c, g, g.reshape(out, S, H, T), p + "ssm_norm.weight", il)
    gated = g.op(f"kda_gated-{il}", "MUL", normed, g.op(f"kda_gate-{il}", "UNARY", g.reshape(out_gate, S, H, T)))
    gated = g.new(f"kda_gated_cont-{il}", "CONT", "F32", (d.d_inner, T), gated)
    return g.mul_mat(f"kda_out-{il}", _w(c, p + "attn_output.weight", il), gated)


def mla(c: _Ctx, g: _Graph, x: _T, il: int, k_idxs: _T, mask: _T, rope: bool = True) -> tuple[_T, int]:
    """The absorbed MLA of one layer up to ``build_attn``'s output (bailingmoe3.cpp:307-356): Q from
    ``q_a``/``q_a_norm``/``q_b`` or ``attn_q``, the compressed latent and the rope part of K (RoPE'd when
    ``rope``), the latent's norm, the absorbed ``q_nope``, the concatenations, the cache write, the
    attention and ``attn_v_b``. Returns the heads' output ``[v_head * n_head, T]`` and ``n_head``."""
    sp = c.sp
    T = c.n_tokens
    nh = c.hp.n_head[il]
    p = f"blk.{il}."
    wk_b = _w(c, p + "attn_k_b.weight", il)
    kv_a = _w(c, p + "attn_kv_a_mqa.weight", il)
    rank = _w(c, p + "attn_kv_a_norm.weight", il).ne[0]  # kv_lora_rank
    n_rot = kv_a.ne[1] - rank
    nope = wk_b.ne[0]
    hk = nope + n_rot  # n_embd_head_k_mla
    if _weight(c, p + "attn_q_a.weight", il) is not None:
        q = g.mul_mat(f"q_a-{il}", _w(c, p + "attn_q_a.weight", il), x)
        q = _norm(c, g, q, p + "attn_q_a_norm.weight", il)
        q = g.mul_mat(f"q_b-{il}", _w(c, p + "attn_q_b.weight", il), q)
    else:
        q = g.mul_mat(f"q-{il}", _w(c, p + "attn_q.weight", il), x)
    qrow = 4 * hk
    q_nope = g.view(q, (nope, nh, T), (4, qrow, qrow * nh))
    q_pe = g.view(q, (n_rot, nh, T), (4, qrow, qrow * nh))
    kv_all = g.mul_mat(f"kv_all-{il}", kv_a, x)
    row = kv_all.nb[1]
    kv = g.view(kv_all, (rank, T), (4, row))
    k_pe = g.view(kv_all, (n_rot, 1, T), (4, row, row))
    if rope:
        assert c.pos is not None
        q_pe = g.new(f"q_pe-{il}", "ROPE", "F32", q_pe.ne, q_pe, c.pos)
        k_pe = g.new(f"k_pe-{il}", "ROPE", "F32", k_pe.ne, k_pe, c.pos)
    kv = _norm(c, g, kv, p + "attn_kv_a_norm.weight", il)
    absorbed = g.permute(g.mul_mat(f"q_nope_absorbed-{il}", wk_b, g.permute(q_nope, 0, 2, 1, 3)), 0, 2, 1, 3)
    qcur = g.new(f"Qcur-{il}", "CONCAT", "F32", (rank + n_rot, nh, T), absorbed, q_pe)
    kv = g.reshape(kv, rank, 1, T)
    kcur = g.new(f"Kcur-{il}", "CONCAT", "F32", (rank + n_rot, 1, T), kv, k_pe)
    for t in (qcur, kv, kcur):
        g.expand(t)
    cache, k = cache_k(c, g, f"cache_k_l{il}", rank + n_rot, _type(sp.type_k).name, il)
    g.expand(cache_write(c, g, cache, kcur, rank + n_rot, k_idxs))
    return mha(c, g, qcur, k, mask, il, rank), nh


def _gated_mla(c: _Ctx, g: _Graph, x: _T, il: int, k_idxs: _T, mask: _T) -> _T:
    """The MLA layer (bailingmoe3.cpp:307-363): :func:`mla`, then the sigmoid of the head-wise gate
    ``attn_gate(x)`` times each head, made contiguous, and the output projection."""
    T = c.n_tokens
    p = f"blk.{il}."
    cur, nh = mla(c, g, x, il, k_idxs, mask)
    gate = g.mul_mat(f"attn_gate-{il}", _w(c, p + "attn_gate.weight", il), x)
    gate = g.op(f"attn_gate_sigmoid-{il}", "UNARY", g.reshape(gate, 1, nh, T))
    cur = g.op(f"attn_gated-{il}", "MUL", g.reshape(cur, cur.ne[0] // nh, nh, T), gate)
    cur = g.new(f"attn_gated_cont-{il}", "CONT", "F32", (cur.ne[0] * nh, T), cur)
    return g.mul_mat(f"mla_out-{il}", _w(c, p + "attn_output.weight", il), cur)


def _mrope(c: _Ctx) -> bool:
    """``llama_hparams::use_mrope``: the first two ``rope.dimension_sections`` positive (a VL file)."""
    v = model_of(c).metadata.get(f"{c.hp.arch}.rope.dimension_sections")
    s = v.tolist() if isinstance(v, GGUFArray) else []
    return len(s) >= 2 and s[0] > 0 and s[1] > 0


def build(c: _Ctx, g: _Graph) -> _T:
    """bailingmoe3.cpp ``graph::graph``: per trunk layer the attention norm, KDA or gated MLA, the
    residual, the FFN norm, the dense FFN (leading layers) or the experts plus the shared expert, the
    residual; then the output norm (``t_h_nextn``), the rows, the head."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    ns = sp.n_streams
    mp = deepseek2.moe_params(c)
    mp = replace(mp, n_used=qwen3next.n_expert_used(c), n_groups=0)
    d = _kda_dims(c)
    last = hp.n_layer_main - 1
    x = _inp_embd(c, g)
    s_copy = g.input("rs_s_copy", "I32", sp.n_seq_max)  # build_inp_mem_hybrid_k: the recurrent input first
    k_idxs = g.input("attn_inp_k_idxs", "I64", T)
    mask = g.input("attn_inp_kq_mask", "F16" if sp.flash_attn else "F32", sp.n_kv, T // ns, 1, ns)
    c.pos = g.input("inp_pos", "I32", T * (4 if _mrope(c) else 1))
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        if il > last:  # the MTP block: not in the main graph
            continue
        g.at(p)
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        if hp.n_head_kv[il] == 0:
            cur = _kda(c, g, cur, il, s_copy, d)
        else:
            cur = _gated_mla(c, g, cur, il, k_idxs, mask)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, x)
        cur = _norm(c, g, ffn_inp, f"blk.{il}.ffn_norm.weight", il)
        cur = ffn(c, g, cur, il) if il < mp.n_lead else moe(c, g, cur, il, mp)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("h_nextn", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT  # t_h_nextn (llm_graph_result::set_outputs)
    cur = g.new("result_norm", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
    cur.flags |= OUTPUT  # t_embd
    out_w = tied_head(c)
    logits = g.mul_mat("result_output", out_w, cur)
    logits.flags |= OUTPUT
    return logits


def _conv_ok(shape: tuple[int, ...], d_conv: int, d_inner: int) -> bool:
    """A ``[d_conv, 1, d_inner, 1]`` convolution weight (the trailing ones may be dropped)."""
    return shape[:1] == (d_conv,) and tuple(x for x in shape if x != 1) == (d_conv, d_inner)


def unbuildable(model: GGUFModel) -> str | None:
    """Why the bailingmoe3 graph cannot be built from this file (None when it can): the KDA dimensions,
    the gating (``build_moe_ffn`` aborts on none), the expert counts, and per trunk layer the tensors the
    graph reads (the KDA ones in the shapes bailingmoe3.cpp:82-94 creates them)."""
    md = model.metadata
    a = model.architecture or ""

    def get(key: str) -> int:
        return md.get_int(f"{a}.{key}") or 0

    n_main = get("block_count") - get("nextn_predict_layers")
    h = kda_header(model, n_main)
    if isinstance(h, str):
        return h
    E, d_conv, head, n_head, n_lead, hp = h.n_embd, h.d_conv, h.head, h.n_head, h.n_lead, h.hp
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    d_inner = head * n_head
    kda: dict[str, tuple[int, ...]] = {
        "attn_q.weight": (E, d_inner),
        "attn_k.weight": (E, d_inner),
        "attn_v.weight": (E, d_inner),
    }
    kda |= {"ssm_f_a.weight": (E, d_inner), "ssm_beta.weight": (E, n_head), "ssm_g_a.weight": (E, d_inner)}
    kda |= {"ssm_dt.bias": (d_inner,), "ssm_norm.weight": (head,), "attn_output.weight": (d_inner, E)}
    if why := _moe_check.needs_ends(tensors):
        return why
    for il in range(min(n_main, 513)):
        p = f"blk.{il}."
        need = ["attn_norm.weight", "ffn_norm.weight"]
        if hp.n_head_kv[il] == 0:
            for n, shape in kda.items():
                if tensors.get(p + n) != shape:
                    return f"the graph needs tensor {p}{n} of shape {list(shape)}"
            for n in ("q", "k", "v"):
                if not _conv_ok(tensors.get(f"{p}ssm_conv1d_{n}.weight", ()), d_conv, d_inner):
                    return f"the graph needs tensor {p}ssm_conv1d_{n}.weight of shape [{d_conv}, 1, {d_inner}, 1]"
            need.append("ssm_a")
        else:
            q = ["attn_q_a.weight", "attn_q_a_norm.weight", "attn_q_b.weight"]
            need += q if p + "attn_q_a.weight" in tensors else ["attn_q.weight"]
            need += [f"{n}.weight" for n in ("attn_kv_a_mqa", "attn_kv_a_norm", "attn_k_b", "attn_v_b")]
            need += ["attn_gate.weight", "attn_output.weight"]
        if il < n_lead:
            need += ["ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"]
        else:
            need += ["ffn_gate_inp.weight", "exp_probs_b.bias"]
            need += [f"ffn_{r}_shexp.weight" for r in ("gate", "up", "down")]
            for r in ("gate", "up", "down"):
                if len(tensors.get(f"{p}ffn_{r}_exps.weight", ())) != 3:
                    return f"the graph needs a three-dimensional tensor {p}ffn_{r}_exps.weight"
        missing = next((n for n in need if p + n not in tensors), None)
        if missing:
            return f"the graph needs tensor {p}{missing}, which the file lacks"
    return None
