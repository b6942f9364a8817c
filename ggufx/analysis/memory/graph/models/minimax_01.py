"""The ``minimax-01`` hybrid (src/models/minimax-01.cpp, MiniMax-Text-01): lightning-attention layers (the
recurrent layers: ``attention.recurrent_layers``, else all but every ``full_attention_interval``-th) whose
fused QKV projection's SiLU gives Q, K and V, decayed by the position inputs (``q_decay_exp``,
``k_decay_exp``, ``diag_decay_exp``, ``n_seq_tokens``-square per head) within the micro-batch and read
against the per-head state of ``head_dim x head_dim`` (written back decayed plus the batch's), then the
RMS norm and the sigmoid gate; softmax attention with RoPE in the others; softmax-routed experts with
normalized weights in every layer, and the residuals taken from the normed inputs, scaled."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import (
    _attn_inp,
    _AttnInp,
    _Ctx,
    _inp_embd,
    _norm,
    _proj,
    _w,
    _weight,
    attn_kv_strided,
)
from ggufx.analysis.memory.graph.models._dense import output, tied_head
from ggufx.analysis.memory.graph.models.deepseek2 import SOFTMAX, moe_ffn, moe_params
from ggufx.analysis.memory.graph.models.qwen35 import _rs
from ggufx.analysis.memory.graph.models.ssm import check_shapes
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel


def recurrent(c: _Ctx, il: int) -> bool:
    """Whether layer ``il`` is a lightning-attention layer: the loader gave it the gate ``attn_gate``
    (minimax-01.cpp:45-52, for the layers ``hparams.is_recr`` marks)."""
    return f"blk.{il}.attn_gate.weight" in c.by_name


def _softmax_attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """``build_qkv`` (views of the fused projection, or the three projections), RoPE, ``build_attn`` (V
    copied contiguous where llama.cpp copies it: :func:`~ggufx.analysis.memory.graph.llm.attn_kv_strided`)
    and the output projection (minimax-01.cpp:265-290)."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    p = f"blk.{il}."
    pos = c.pos
    assert pos is not None
    if _weight(c, p + "attn_qkv.weight", il) is not None:
        qkv = _proj(c, g, f"wqkv-{il}", p + "attn_qkv", x, il)
        row = qkv.nb[1]
        q = g.view(qkv, (hd, nh, T), (4, 4 * hd, row))
        k = g.view(qkv, (hd, nkv, T), (4, 4 * hd, row))
        v = g.view(qkv, (hv, nkv, T), (4, 4 * hv, row))
    else:
        q = g.reshape(_proj(c, g, f"Qcur-{il}", p + "attn_q", x, il), hd, nh, T)
        k = g.reshape(_proj(c, g, f"Kcur-{il}", p + "attn_k", x, il), hd, nkv, T)
        v = g.reshape(_proj(c, g, f"Vcur-{il}", p + "attn_v", x, il), hv, nkv, T)
    q = g.new(f"Qcur-{il}", "ROPE", "F32", q.ne, q, pos)
    k = g.new(f"Kcur-{il}", "ROPE", "F32", k.ne, k, pos)
    out = attn_kv_strided(c, g, q, k, v, il, inp, False)
    g.expand(out.src[0].src[1].src[0] if inp.v_rot is not None else out)  # build_attn_mha's expansion
    return g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), out)


def _lightning(c: _Ctx, g: _Graph, x: _T, il: int, s_copy: _T, decays: tuple[_T, _T, _T, _T]) -> _T:
    """The lightning-attention layer (minimax-01.cpp:291-430)."""
    hp, T = c.hp, c.n_tokens
    E, ns = hp.n_embd, c.sp.n_seq_max
    nst = T // ns
    hd, H = hp.head_k, hp.n_head[il]
    n_embd_s = hd * hd * H  # llama_hparams::n_embd_s for n_embd_head_la (llama-hparams.cpp:249-254)
    p = f"blk.{il}."
    slopes, q_exp, k_exp, diag_exp = decays
    buft = c.cache_buft[il]
    cache_r = g.leaf(f"cache_r_l{il}", "F32", (hp.n_embd_r, ns), buft=buft)
    cache_s = g.leaf(f"cache_s_l{il}", "F32", (n_embd_s, ns), buft=buft)
    _rs(c, g, cache_r, s_copy, hp.n_embd_r)  # the (empty) convolution state, read and expanded
    slope_rate = g.op(f"slope_rate-{il}", "SCALE", slopes)
    cur = g.reshape(x, E, nst, 1, ns)
    qkv = g.op(f"QKVcur_silu-{il}", "UNARY", g.mul_mat(f"QKVcur-{il}", _w(c, p + "attn_qkv.weight", il), cur))
    qkv = g.reshape(qkv, hd * 3, H, nst, ns)
    q, k, v = (g.view(qkv, (hd, H, nst, ns), (4, *qkv.nb[1:])) for _ in range(3))
    kv_old = g.reshape(_rs(c, g, cache_s, s_copy, n_embd_s), hd, hd, H, ns)
    q_decay, k_decay, diag_decay = (
        g.op(f"{n}-{il}", "UNARY", g.op(f"{n}_scaled-{il}", "SCALE", t))
        for n, t in (("q_decay", q_exp), ("k_decay", k_exp), ("diag_decay", diag_exp))
    )
    q_s = g.permute(g.op(f"q_s-{il}", "MUL", q, q_decay), 0, 2, 1, 3)
    none_diag = g.mul_mat(f"qkv_none_diag-{il}", kv_old, q_s)
    qk = g.mul_mat(f"qk-{il}", g.permute(k, 0, 2, 1, 3), g.permute(q, 0, 2, 1, 3))
    qk = g.op(f"qk_s-{il}", "MUL", qk, diag_decay)
    vt = g.permute(v, 1, 2, 0, 3)
    v_trans = g.new(f"v_trans-{il}", "CONT", "F32", vt.ne, vt)
    diag = g.mul_mat(f"qkv_diag-{il}", v_trans, qk)
    out = g.op(f"qkv-{il}", "ADD", none_diag, diag)
    g.expand(out)
    block_decay = g.op(f"block_decay-{il}", "UNARY", g.op(f"slopes_neg-{il}", "SCALE", slope_rate))
    kv_old_s = g.op(f"kv_old_s-{il}", "MUL", kv_old, g.reshape(block_decay, 1, 1, H))
    kd = g.permute(g.op(f"k_after_decay-{il}", "MUL", k, k_decay), 1, 2, 0, 3)
    kd = g.new(f"k_after_decay_trans-{il}", "CONT", "F32", kd.ne, kd)
    kv_new = g.op(f"kv_new-{il}", "ADD", kv_old_s, g.mul_mat(f"kv_cur-{il}", kd, v_trans))
    dst = g.view(cache_s, (n_embd_s * ns,), None)
    g.cpy(kv_new, dst)
    perm = g.permute(out, 0, 2, 1, 3)
    out = g.new(f"qkv_permuted-{il}", "CONT", "F32", perm.ne, perm)
    out = g.reshape(out, hd * H, nst, 1, ns)
    normed = _norm(c, g, out, p + "attn_norm_2.weight", il)
    gate = g.op(f"g_sigm-{il}", "UNARY", g.mul_mat(f"g-{il}", _w(c, p + "attn_gate.weight", il), cur))
    cur = g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), g.op(f"gated-{il}", "MUL", gate, normed))
    return g.reshape(cur, E, T)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (minimax-01.cpp:215-484)."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    ns = sp.n_seq_max
    nst = T // ns
    H = hp.n_head[0]
    # build_moe_ffn(..., norm_w true, expert_weights_scale (not read: 0), softmax): minimax-01.cpp:449-461
    mp = replace(moe_params(c), n_lead=0, gating=SOFTMAX, norm_w=True, scale=0.0, n_groups=0)
    x = _inp_embd(c, g)
    s_copy = g.input("rs_s_copy", "I32", ns)
    inp = _attn_inp(c, g, sp.n_kv)
    c.pos = g.input("inp_pos", "I32", T)
    out_ids = g.input("out_ids", "I32", n_out)
    decays = (
        g.input("slopes", "F32", H),
        g.input("q_decay_exp", "F32", 1, H, nst, ns),
        g.input("k_decay_exp", "F32", 1, H, nst, ns),
        g.input("diag_decay_exp", "F32", nst, nst, H, ns),
    )
    last = hp.n_layer - 1
    for p, il in enumerate(c.layers):
        g.at(p)
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        residual = cur
        if recurrent(c, il):
            cur = _lightning(c, g, cur, il, s_copy, decays)
        else:
            cur = _softmax_attention(c, g, cur, il, inp)
        if il == last:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            residual = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), residual, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, g.op(f"residual_scaled_attn-{il}", "SCALE", residual))
        cur = _norm(c, g, ffn_inp, f"blk.{il}.ffn_norm.weight", il)
        residual = cur
        cur, _ = moe_ffn(c, g, cur, il, mp, SOFTMAX)
        x = g.op(f"ffn_out-{il}", "ADD", cur, g.op(f"residual_scaled_ffn-{il}", "SCALE", residual))
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """Why the minimax-01 graph cannot be built from this file (None when it can): one head count and
    head size for every layer, the expert counts, and every tensor the graph reads in the shape
    minimax-01.cpp:28-58 creates it."""
    md = model.metadata
    hp = hparams(model)
    E, hd, H = hp.n_embd, hp.head_k, hp.n_head[0]
    if H <= 0 or min(hp.n_head) != max(hp.n_head) or hd <= 0 or hd != hp.head_v:
        return "the graph needs one head count, and attention.key_length = value_length (minimax-01.cpp:218)"
    n_exp, n_used = (md.get_int(f"minimax-01.{k}") or 0 for k in ("expert_count", "expert_used_count"))
    if not 0 < n_used <= n_exp <= 1024:
        return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    n_ff = hp.n_ff
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,)}
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        nkv = hp.n_head_kv[il]
        w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,), "ffn_norm.weight": (E,)}
        w |= {"attn_output.weight": (hd * H, E), "ffn_gate_inp.weight": (E, n_exp)}
        w |= {"ffn_gate_exps.weight": (E, n_ff, n_exp), "ffn_up_exps.weight": (E, n_ff, n_exp)}
        w |= {"ffn_down_exps.weight": (n_ff, E, n_exp)}
        if p + "attn_gate.weight" in tensors:
            w |= {"attn_norm_2.weight": (hd * H,), "attn_qkv.weight": (E, 3 * hd * H), "attn_gate.weight": (E, hd * H)}
        elif nkv <= 0 or H % nkv:
            return f"layer {il} has {H} query heads for {nkv} KV heads, which the graph cannot lay out"
        elif p + "attn_qkv.weight" in tensors:
            w |= {"attn_qkv.weight": (E, hd * H + 2 * hd * nkv)}
        else:
            w |= {"attn_q.weight": (E, hd * H), "attn_k.weight": (E, hd * nkv), "attn_v.weight": (E, hd * nkv)}
        shapes |= {p + n: ne for n, ne in w.items()}
    return check_shapes(model, shapes)
