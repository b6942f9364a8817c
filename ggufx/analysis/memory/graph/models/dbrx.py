"""``dbrx`` (src/models/dbrx.cpp: DBRX): layer norms; the fused QKV projection clamped to ``clamp_kqv``
(``build_qkv``: CLAMP before the three views) when it is positive; RoPE; the attention and the output
projection; the FFN's layer norm (``attn_output_norm``) then the experts in every layer (softmax, normalized
weights, no scale)."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _proj, _rot, _w
from ggufx.analysis.memory.graph.models import _moe_check
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _n
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, routed
from ggufx.analysis.memory.graph.models._plain import rot
from ggufx.analysis.memory.graph.models.qwen3next import file_value
from ggufx.model import GGUFModel

_D = Dense(norm="NORM")


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """dbrx.cpp:70-94 with ``build_qkv``'s fused path (llama-graph.cpp:1700-1725)."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    p = f"blk.{il}."
    qkv = _proj(c, g, f"wqkv-{il}", p + "attn_qkv", x, il)
    clamp = file_value(c, "dbrx.attention.clamp_kqv")
    if isinstance(clamp, (int, float)) and clamp > 0:
        qkv = g.op(f"wqkv_clamped-{il}", "CLAMP", qkv)
    es, row = qkv.nb[0], qkv.nb[1]
    q = g.view(qkv, (hd, nh, T), (es * hd, row))
    k = g.view(qkv, (hd, nkv, T), (es * hd, row))
    v = g.view(qkv, (hv, nkv, T), (es * hv, row))
    assert c.pos is not None
    q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
    v = rot(g, v, inp.v_rot)  # the V view made contiguous for a rotated cache
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, v_rot=None), False, _D)
    g.expand(cur)  # build_attn_mha expands the attention's output before the rotation and projection
    return g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), _rot(g, cur, inp.v_rot))


def build(c: _Ctx, g: _Graph) -> _T:
    """dbrx.cpp's ``graph::graph``."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        cur = _attention(c, g, _n(c, g, x, b + "attn_norm.weight", il, _D), il, inp)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur, _ = routed(c, g, _n(c, g, ffn_inp, b + "attn_output_norm.weight", il, _D), il, norm_w=True)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    logits = g.mul_mat("result_output", _w(c, "output.weight", hp.n_layer), cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Per layer the fused QKV projection, the FFN's norm, the router and the experts, and the output
    projection (dbrx.cpp's loader requires them)."""
    if "output.weight" not in {t.name for t in model.tensors}:
        return "the graph needs tensor output.weight, which the file lacks"
    roles = ["attn_norm", "attn_qkv", "attn_output", "attn_output_norm", *ROUTER]
    return _moe_check.unbuildable(model, lambda il: (roles, EXPERTS), qkv=False)
