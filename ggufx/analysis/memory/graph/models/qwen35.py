"""The ``qwen35`` hybrid (src/models/qwen35.cpp): gated attention layers and Gated DeltaNet layers that
read and write the recurrent state in place (the fused ``GATED_DELTA_NET`` node), each with a dense FFN."""

from __future__ import annotations

from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import (
    _attn_inp,
    _attn_kv,
    _AttnInp,
    _Ctx,
    _Gdn,
    _inp_embd,
    _norm,
    _proj,
    _w,
)
from ggufx.analysis.memory.graph.models._dense import nextn_output
from ggufx.model import GGUFModel


def _gdn_dims(model: GGUFModel) -> _Gdn | str:
    """The Gated DeltaNet dimensions, or why the file lacks them."""
    arch = model.architecture or ""
    md = model.metadata
    keys = ("ssm.conv_kernel", "ssm.inner_size", "ssm.state_size", "ssm.group_count", "ssm.time_step_rank")
    vals = [md.get_int(f"{arch}.{k}") or 0 for k in keys]
    missing = next((k for k, v in zip(keys, vals, strict=True) if v <= 0), None)
    if missing:
        return f"the graph needs a positive {arch}.{missing}"
    d_conv, d_inner, d_state, n_group, dt_rank = vals
    if d_conv < 2:
        return f"the graph needs {arch}.ssm.conv_kernel >= 2 (a cached convolution column)"
    if d_inner != d_state * dt_rank or dt_rank % n_group:  # delta-net-base.cpp:388-390
        return (
            f"the graph needs {arch}.ssm.inner_size = ssm.state_size x ssm.time_step_rank, "
            "and ssm.time_step_rank a multiple of ssm.group_count"
        )
    return _Gdn(d_conv, d_state, n_group, dt_rank, d_state)


def _recurrent_layers(model: GGUFModel, n_layer: int) -> list[bool] | str:
    """The Gated DeltaNet layers (qwen35.cpp:16-23): the recurrent_layers array, else every layer
    but each ``full_attention_interval``-th (4 by default)."""
    md = model.metadata
    if "qwen35.attention.recurrent_layers" in md:
        return [k.is_recurrent for k in layer_kinds(model)][:n_layer]
    interval = md.get_int("qwen35.full_attention_interval")
    interval = 4 if interval is None else interval
    if interval <= 0:
        return "the graph needs a positive qwen35.full_attention_interval"
    return [(i + 1) % interval != 0 for i in range(n_layer)]


def _rs(c: _Ctx, g: _Graph, cache: _T, s_copy: _T, size: int) -> _T:
    """``build_rs`` (llama-graph.cpp:3587-3627) over the full memory: the in-place clear of state 0,
    the gather of every state, the view of the micro-batch's and the copy of the (empty) rest."""
    n_seqs = c.sp.n_seq_max
    states = g.reshape(cache, size, cache.ne[1])
    zero = g.view(states, (size,), None)
    g.expand(g.view(zero, zero.ne, zero.nb, "SCALE"))  # ggml_scale_inplace: the cache itself
    every = g.new(f"{cache.name}_rows", "GET_ROWS", "F32", (size, s_copy.ne[0]), states, s_copy)
    out = g.view(every, (size, n_seqs), every.nb[:2])
    g.expand(out)
    extra = g.view(every, (size, s_copy.ne[0] - n_seqs), every.nb[:2])
    dst = g.view(cache, extra.ne, cache.nb[:2])
    g.cpy(extra, dst)
    return out


def _copy_into(g: _Graph, src: _T, cache: _T, rows: int) -> None:
    """``ggml_cpy`` of ``src`` into the first ``rows`` rows of a recurrent cache, expanded."""
    dst = g.view(cache, (cache.ne[0], rows), cache.nb[:2])
    g.cpy(src, dst)


def _gated_delta_net(c: _Ctx, g: _Graph, x: _T, il: int, s_copy: _T, d: _Gdn, cont_tail: bool = False) -> _T:
    """``build_layer_attn_linear`` (qwen35.cpp:349-482): the joint QKV and gate projections, the
    convolution over the cached last ``d_conv - 1`` columns (``build_conv_state``,
    delta-net-base.cpp:449-525), the fused ``GATED_DELTA_NET`` node (llama-context.cpp:235 keeps
    fused_gdn_ar/_ch on; delta-net-base.cpp:373-423) whose output rows carry the new state, the
    state write-back (:527-550) and the gated RMS norm."""
    hp, T = c.hp, c.n_tokens
    ns = c.sp.n_seq_max
    nst = T // ns
    p = f"blk.{il}."
    buft = c.cache_buft[il]
    cache_r = g.leaf(f"cache_r_l{il}", "F32", (hp.n_embd_r, ns), buft=buft)
    cache_s = g.leaf(f"cache_s_l{il}", "F32", (hp.n_embd_s, ns), buft=buft)
    qkv = g.mul_mat(f"qkv_mixed-{il}", _w(c, p + "attn_qkv.weight", il), x)
    channels = qkv.ne[0]
    qkv = g.reshape(qkv, channels, nst, ns)
    z = g.mul_mat(f"z-{il}", _w(c, p + "attn_gate.weight", il), x)
    beta = g.reshape(g.mul_mat(f"beta-{il}", _w(c, p + "ssm_beta.weight", il), x), 1, d.n_v_heads, nst, ns)
    beta = g.op(f"beta_sigmoid-{il}", "UNARY", beta)
    alpha = g.reshape(g.mul_mat(f"alpha-{il}", _w(c, p + "ssm_alpha.weight", il), x), d.n_v_heads, nst, ns)
    alpha = g.op(f"alpha_biased-{il}", "ADD", alpha, _w(c, p + "ssm_dt.bias", il))
    alpha = g.op(f"a_softplus-{il}", "UNARY", alpha)
    gate = g.op(f"gate-{il}", "MUL", alpha, _w(c, p + "ssm_a", il))
    gate = g.reshape(gate, 1, d.n_v_heads, nst, ns)
    # build_conv_state: the cached columns, then the micro-batch's, the last ones written back
    conv = g.reshape(_rs(c, g, cache_r, s_copy, hp.n_embd_r), d.d_conv - 1, channels, ns)
    conv_in = g.new(
        f"conv_input-{il}", "CONCAT", "F32", (d.d_conv - 1 + nst, channels, ns), conv, g.permute(qkv, 1, 0, 2, 3)
    )
    last = g.view(conv_in, (d.d_conv - 1, channels, ns), conv_in.nb[:3])
    if cont_tail:  # qwen4exp's build_conv_state_at (qwen4exp.cpp:1299-1340) writes them back through a CONT
        last = g.new(f"conv_tail-{il}", "CONT", "F32", last.ne, last)
    _copy_into(g, last, cache_r, ns)
    for _ in range(c.sp.n_rs_seq):  # the rollback snapshots: one more view of the last columns each
        _copy_into(g, g.view(conv_in, (d.d_conv - 1, channels, ns), conv_in.nb[:3]), cache_r, ns)
    state = _rs(c, g, cache_s, s_copy, hp.n_embd_s)
    state = g.reshape(state, d.head_v, d.head_v, d.n_v_heads, ns)
    out = g.new(
        f"conv_output_raw-{il}", "SSM_CONV", "F32", (channels, nst, ns), conv_in, _w(c, p + "ssm_conv1d.weight", il)
    )
    out = g.op(f"conv_output_silu-{il}", "UNARY", out)
    row = out.nb[1]
    heads = []
    for n_heads in (d.n_k_heads, d.n_k_heads):  # build_gdn_l2_norm (models.h:14): RMS_NORM, SCALE
        qk = g.view(out, (d.head_k, n_heads, nst, ns), (4, 4 * d.head_k, row, row * nst))
        heads.append(g.op(f"qk_conv-{il}", "SCALE", g.new(f"qk_norm-{il}", "RMS_NORM", "F32", qk.ne, qk)))
    v = g.view(out, (d.head_v, d.n_v_heads, nst, ns), (4, 4 * d.head_v, row, row * nst))
    S, H = d.head_v, d.n_v_heads
    k = c.sp.n_rs_seq + 1  # the state slots the op writes (ggml_gated_delta_net's K: one, or the snapshots)
    gdn = g.new(
        f"gdn-{il}", "GATED_DELTA_NET", "F32", (S * H, T + S * ns * k), heads[0], heads[1], v, gate, beta, state
    )
    if k == 1:
        new_state = g.view(gdn, (S, S, H, ns), (4, 4 * S, 4 * S * S))
        _copy_into(g, new_state, cache_s, ns)
    else:  # build_recurrent_attn with snapshots: the last min(tokens, K) states of each sequence, one copy
        size, written = S * S * H, min(nst, k)
        src = g.view(gdn, (size, ns, written), (4, 4 * size, 4 * size * ns))
        dst = g.view(cache_s, (size, ns, written), (4, cache_s.nb[1], cache_s.nb[1] * ns))
        g.cpy(src, dst)
    o = g.view(gdn, (S, H, nst, ns), (4, 4 * S, 4 * S * H))
    o = _norm(c, g, o, p + "ssm_norm.weight", il)  # build_norm_gated (qwen35.cpp:257-266)
    o = g.op(f"attn_gated-{il}", "MUL", o, g.op(f"z_silu-{il}", "UNARY", g.reshape(z, S, H, nst, ns)))
    o = g.mul_mat(f"linear_attn_out-{il}", _w(c, p + "ssm_out.weight", il), g.reshape(o, S * H, nst, ns))
    return g.reshape(o, hp.n_embd, T)


def _gated_attn(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """``build_layer_attn`` (qwen35.cpp:268-347): one projection yields Q and its gate, interleaved
    per head; Q and K are normed and roped (M-RoPE), the attention output is multiplied by the
    gate's sigmoid before the output projection."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd = hp.n_head[il], hp.n_head_kv[il], hp.head_k
    p = f"blk.{il}."
    pos = c.pos
    assert pos is not None
    qg = g.mul_mat(f"Qcur_full-{il}", _w(c, p + "attn_q.weight", il), x)
    q = g.view(qg, (hd, nh, T), (4, 8 * hd, 8 * hd * nh))
    q = _norm(c, g, q, p + "attn_q_norm.weight", il)
    k = g.mul_mat(f"Kcur-{il}", _w(c, p + "attn_k.weight", il), x)
    k = _norm(c, g, g.reshape(k, hd, nkv, T), p + "attn_k_norm.weight", il)
    gate = g.new(f"gate-{il}", "CONT", "F32", (hd * nh, T), g.view(qg, (hd, nh, T), (4, 8 * hd, 8 * hd * nh)))
    v = g.reshape(g.mul_mat(f"Vcur-{il}", _w(c, p + "attn_v.weight", il), x), hp.head_v, nkv, T)
    q = g.new(q.name, "ROPE", "F32", q.ne, q, pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, pos)
    cur = _attn_kv(c, g, q, k, v, il, inp, False)
    cur = g.op(f"attn_gated-{il}", "MUL", cur, g.op(f"gate_sigmoid-{il}", "UNARY", gate))
    return g.mul_mat(f"attn_output-{il}", _w(c, p + "attn_output.weight", il), cur)


def _qwen35(c: _Ctx, g: _Graph, d: _Gdn) -> _T:
    """The hybrid of src/models/qwen35.cpp: attention or Gated DeltaNet, the post-attention norm,
    a dense FFN; the final norm (``h_nextn``) stays an output before the rows are picked. The MTP block
    (``nextn_predict_layers``) is never run by this graph: the loop stops at ``hparams.n_layer()``, with or
    without ``--spec-type draft-mtp``."""
    sp = c.sp
    T, n_out = c.n_tokens, c.n_outputs
    x = _inp_embd(c, g)
    s_copy = g.input("rs_s_copy", "I32", sp.n_seq_max)  # get_n_rs of the full memory (llama-memory-recurrent.cpp:1336)
    full = _attn_inp(c, g, sp.n_kv)
    # build_inp_pos (llama-graph.cpp:2540): n_pos_per_embd = 4 M-RoPE positions per token
    c.pos = g.input("inp_pos", "I32", T * 4)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        if il >= c.hp.n_layer_main:  # the MTP block: loaded as extra layers, not run (qwen35.cpp:158-159)
            continue
        g.at(p)
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        g.expand(cur)
        if c.recurrent[il]:
            cur = _gated_delta_net(c, g, cur, il, s_copy, d)
        else:
            cur = _gated_attn(c, g, cur, il, full)
        res = g.op(f"attn_residual-{il}", "ADD", cur, x)
        cur = _norm(c, g, res, f"blk.{il}.post_attention_norm.weight", il)
        gate = _proj(c, g, f"ffn_gate-{il}", f"blk.{il}.ffn_gate", cur, il)
        up = _proj(c, g, f"ffn_up-{il}", f"blk.{il}.ffn_up", cur, il)
        cur = _proj(
            c, g, f"ffn_out-{il}", f"blk.{il}.ffn_down", g.new(f"ffn_glu-{il}", "GLU", "F32", gate.ne, gate, up), il
        )
        x = g.op(f"l_out-{il}", "ADD", cur, res)
    return nextn_output(c, g, x, out_ids)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (:func:`_qwen35`)."""
    assert c.gdn is not None
    return _qwen35(c, g, c.gdn)
