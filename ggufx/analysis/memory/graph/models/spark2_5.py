"""``spark2_5`` (src/models/spark2-5.cpp): sliding-window layers (the required pattern array) on their own
cache and mask (``build_attn_inp_kv_iswa``), per-layer head counts, RoPE without frequency factors; the
attention output (no projection inside ``build_attn``) times the sigmoid of the head-wise gate
``attn_gate`` of the attention's input, then the output projection; the last layer's rows picked before
the residual; a GELU FFN with a parallel gate (one GLU node)."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _AttnInp, _Ctx, _inp_embd, _rot, _w
from ggufx.analysis.memory.graph.models import _moe_check
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _ffn, _qkv, decoder, output, tied_head
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
    x = decoder(c, g, _inp_embd(c, g), _attention, _geglu, _D, iswa=True)
    return output(c, g, x, tied_head(c))


def _geglu(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    """spark2-5.cpp's FFN: gate and up, GEGLU, down."""
    return _ffn(c, g, x, il, _D)


def unbuildable(model: GGUFModel) -> str | None:
    """Every layer's tensors as spark2-5.cpp creates them (all required by its loader): the norms, Q/K/V
    (separate or fused), the gate, the output projection and the FFN."""
    names = {t.name for t in model.tensors}
    arch = model.architecture or ""
    n_layer = model.metadata.get_int(f"{arch}.block_count") or 0
    if why := _moe_check.needs_ends(names):
        return why
    for il in range(min(n_layer, 513)):
        p = f"blk.{il}."
        qkv = ["attn_qkv"] if p + "attn_qkv.weight" in names else ["attn_q", "attn_k", "attn_v"]
        for role in ["attn_norm", *qkv, "attn_gate", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]:
            if p + role + ".weight" not in names:
                return f"the graph needs tensor {p}{role}.weight, which the file lacks"
    return None
