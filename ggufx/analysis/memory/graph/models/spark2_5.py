"""``spark2_5`` (src/models/spark2-5.cpp): sliding-window layers (the required pattern array) on their own
cache and mask (``build_attn_inp_kv_iswa``), per-layer head counts, RoPE without frequency factors; the
attention output (no projection inside ``build_attn``) times the sigmoid of the head-wise gate
``attn_gate`` of the attention's input, then the output projection; the last layer's rows picked before
the residual; a GELU FFN with a parallel gate (one GLU node)."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _rot, _w, _weight
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _ffn, _n, _qkv
from ggufx.analysis.memory.graph.models._plain import rot
from ggufx.model import GGUFModel

_D = Dense(gelu=True)


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """spark2-5.cpp:76-117: Q/K/V (``build_qkv``), RoPE of Q and K, ``build_attn`` without the output
    projection, the gate (``attn_gate`` times the attention's input, its sigmoid) applied per head, then
    the output projection."""
    hp, T = c.hp, c.n_tokens
    nh, hv = hp.n_head[il], hp.head_v
    p = f"blk.{il}."
    q, k, v = _qkv(c, g, x, il, reshape=True)
    assert c.pos is not None
    q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
    v = rot(g, v, inp.v_rot)
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, v_rot=None), True, _D)
    g.expand(cur)  # build_attn_mha expands the attention's output before the rotation
    cur = _rot(g, cur, inp.v_rot)
    gate = g.op(f"attn_gate-{il}", "UNARY", g.mul_mat(f"attn_gate-{il}", _w(c, p + "attn_gate.weight", il), x))
    gated = g.op(f"attn_gated-{il}", "MUL", g.reshape(cur, hv, nh, T), g.reshape(gate, 1, nh, T))
    return g.mul_mat(f"attn_out_proj-{il}", _w(c, p + "attn_output.weight", il), g.reshape(gated, hv * nh, T))


def build(c: _Ctx, g: _Graph) -> _T:
    """spark2-5.cpp ``graph::graph``."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    last = hp.n_layer - 1
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        cur = _attention(c, g, _n(c, g, x, b + "attn_norm.weight", il, _D), il, swa if c.swa[il] else full)
        if il == last:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _ffn(c, g, _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _D), il, _D)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    out_w = _weight(c, "output.weight", hp.n_layer) or _w(c, "token_embd.weight", hp.n_layer)
    logits = g.mul_mat("result_output", out_w, cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Every layer's tensors as spark2-5.cpp creates them (all required by its loader): the norms, Q/K/V
    (separate or fused), the gate, the output projection and the FFN."""
    names = {t.name for t in model.tensors}
    arch = model.architecture or ""
    n_layer = model.metadata.get_int(f"{arch}.block_count") or 0
    for name in ("token_embd.weight", "output_norm.weight"):
        if name not in names:
            return f"the graph needs tensor {name}, which the file lacks"
    for il in range(min(n_layer, 513)):
        p = f"blk.{il}."
        qkv = ["attn_qkv"] if p + "attn_qkv.weight" in names else ["attn_q", "attn_k", "attn_v"]
        for role in ["attn_norm", *qkv, "attn_gate", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]:
            if p + role + ".weight" not in names:
                return f"the graph needs tensor {p}{role}.weight, which the file lacks"
    return None
