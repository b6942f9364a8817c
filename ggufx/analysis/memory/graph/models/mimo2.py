"""``mimo2`` (src/models/mimo2.cpp: MiMo-V2-Flash): sliding-window layers (the pattern array) on their own
cache and mask (``build_attn_inp_kv_iswa``), per-layer head counts, K heads wider than V heads; Q/K/V as
one fused projection (three views) or three projections without biases; RoPE; the attention with the
layer's sinks where the file has them, the output projection inside ``build_attn``, then the attention
output scaled by ``attention.value_scale`` when it is set (and not 1); the FFN dense (SwiGLU, optional
biases) in layers without a router, else experts routed by sigmoid with the optional selection bias and
normalized weights. The MTP blocks (``nextn_predict_layers``) are not in the graph."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _rot, _w, _weight
from ggufx.analysis.memory.graph.models import _moe_dense, gpt_oss
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _ffn, _n
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, routed
from ggufx.analysis.memory.graph.models._plain import rot
from ggufx.analysis.memory.graph.models.deepseek2 import SIGMOID
from ggufx.analysis.memory.graph.models.qwen3next import file_value
from ggufx.model import GGUFModel

_D = Dense()


def _v_scale(c: _Ctx) -> bool:
    """mimo2.cpp's ``load_arch_hparams``: ``f_attn_value_scale`` set when the key is there and not 1."""
    v = file_value(c, "mimo2.attention.value_scale")
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v not in (0, 1)


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """mimo2.cpp:183-245."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    p = f"blk.{il}."
    if _weight(c, p + "attn_qkv.weight", il) is not None:
        qkv = g.mul_mat(f"wqkv-{il}", _w(c, p + "attn_qkv.weight", il), x)
        es, row = qkv.nb[0], qkv.nb[1]
        q = g.view(qkv, (hd, nh, T), (es * hd, row))
        k = g.view(qkv, (hd, nkv, T), (es * hd, row))
        v = g.view(qkv, (hv, nkv, T), (es * hv, row))
    else:
        q = g.reshape(g.mul_mat(f"Qcur-{il}", _w(c, p + "attn_q.weight", il), x), hd, nh, T)
        k = g.reshape(g.mul_mat(f"Kcur-{il}", _w(c, p + "attn_k.weight", il), x), hd, nkv, T)
        v = g.reshape(g.mul_mat(f"Vcur-{il}", _w(c, p + "attn_v.weight", il), x), hv, nkv, T)
    assert c.pos is not None
    q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
    v = rot(g, v, inp.v_rot)  # a V view of the fused QKV made contiguous for a rotated cache (_plain.rot)
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, v_rot=None), True, _D)
    sinks = _weight(c, p + "attn_sinks.weight", il)
    if sinks is not None:
        gpt_oss._add_sinks(cur, sinks)
    g.expand(cur)  # build_attn_mha expands the attention's output before the rotation and projection
    cur = g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), _rot(g, cur, inp.v_rot))
    return g.op(f"attn_out-{il}", "SCALE", cur) if _v_scale(c) else cur


def _ffn_of(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """mimo2.cpp:256-279: ``build_ffn`` without a router, else ``build_moe_ffn`` (sigmoid, normalized)."""
    if _weight(c, f"blk.{il}.ffn_gate_inp.weight", il) is None:
        return _ffn(c, g, cur, il, _D)
    return routed(c, g, cur, il, norm_w=True, gating=SIGMOID)[0]


def build(c: _Ctx, g: _Graph) -> _T:
    """mimo2.cpp's ``graph::graph`` without the MTP outputs (``crop_last_layer``: the last trunk layer's
    rows picked before its FFN)."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    last = hp.n_layer_main - 1
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        if il > last:  # an MTP block: not in the graph
            continue
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, _D)
        cur = _attention(c, g, cur, il, swa if c.swa[il] else full)
        if il == last:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _ffn_of(c, g, _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _D), il)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    logits = g.mul_mat("result_output", _w(c, "output.weight", hp.n_layer), cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """The sliding window, and per trunk layer the tensors the graph reads (all optional to mimo2.cpp's
    loader but the norms and the output projection: a layer without them would not run)."""
    md = model.metadata
    if (md.get_int("mimo2.attention.sliding_window") or 0) <= 0:
        return "the mimo2 graph needs a positive mimo2.attention.sliding_window"
    n_trunk = (md.get_int("mimo2.block_count") or 0) - (md.get_int("mimo2.nextn_predict_layers") or 0)
    names = {t.name for t in model.tensors}

    def needed(il: int) -> tuple[list[str], list[str]]:
        if il >= n_trunk:
            return [], []
        if f"blk.{il}.ffn_gate_inp.weight" in names:
            return list(ROUTER), EXPERTS
        return ["ffn_gate", "ffn_up", "ffn_down"], []

    if "output.weight" not in names:
        return "the graph needs tensor output.weight, which the file lacks"
    return _moe_dense.unbuildable(model, needed)
