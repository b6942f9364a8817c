"""``mimo2`` (src/models/mimo2.cpp: MiMo-V2-Flash): sliding-window layers (the pattern array) on their own
cache and mask (``build_attn_inp_kv_iswa``), per-layer head counts, K heads wider than V heads; Q/K/V as
one fused projection (three views) or three projections without biases; RoPE; the attention with the
layer's sinks where the file has them, the output projection inside ``build_attn``, then the attention
output scaled by ``attention.value_scale`` when it is set (and not 1); the FFN dense (SwiGLU, optional
biases) in layers without a router, else experts routed by sigmoid with the optional selection bias and
normalized weights. The MTP blocks (``nextn_predict_layers``) are not in the graph."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _AttnInp, _Ctx, _inp_embd, _rot, _w, _weight
from ggufx.analysis.memory.graph.models import _moe_dense, gpt_oss
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _ffn, decoder, output
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
        q = g.view(qkv, (hd, nh, T), (es, es * hd, row))
        k = g.view(qkv, (hd, nkv, T), (es, es * hd, row))
        v = g.view(qkv, (hv, nkv, T), (es, es * hv, row))
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
    hp = c.hp
    x = decoder(c, g, _inp_embd(c, g), _attention, _ffn_of, _D, iswa=True, n_layer=hp.n_layer_main)
    return output(c, g, x, _w(c, "output.weight", hp.n_layer))


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
