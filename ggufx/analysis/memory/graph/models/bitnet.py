"""``bitnet`` (src/models/bitnet.cpp: BitNet b1.58): llama's layer with two more RMS norms, of the attention's
output before ``attn_output`` (``attn_sub_norm``) and of the SwiGLU before ``ffn_down`` (``ffn_sub_norm``);
every projection times its optional per-tensor scale (``build_lora_mm``'s ``w_s``: a MUL after the
MUL_MAT); the head is the token embeddings."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _AttnInp, _Ctx, _inp_embd, _rot, _w, _weight
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _n, decoder, output
from ggufx.model import GGUFModel

SPEC = Dense()
LAYER = ("attn_norm", "attn_sub_norm", "attn_q", "attn_k", "attn_v", "attn_output") + (
    "ffn_norm",
    "ffn_sub_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)


def _mm(c: _Ctx, g: _Graph, name: str, prefix: str, x: _T, il: int) -> _T:
    """``build_lora_mm(w, x, w_s)``: the product, times the scale where the file has one."""
    cur = g.mul_mat(name, _w(c, prefix + ".weight", il), x)
    s = _weight(c, prefix + ".scale", il)
    return g.op(name, "MUL", cur, s) if s is not None else cur


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """Q/K/V (their scales), RoPE, the attention without output projection (``build_attn`` with
    ``wo`` NULL: its output, rotated back for a quantized V cache), the sub-norm, ``attn_output``."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    p = f"blk.{il}."
    q = g.reshape(_mm(c, g, f"Qcur-{il}", p + "attn_q", x, il), hd, nh, T)
    k = g.reshape(_mm(c, g, f"Kcur-{il}", p + "attn_k", x, il), hd, nkv, T)
    v = g.reshape(_mm(c, g, f"Vcur-{il}", p + "attn_v", x, il), hv, nkv, T)
    assert c.pos is not None
    q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
    v = _plain.rot(g, v, inp.v_rot)
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, v_rot=None), False, SPEC)
    g.expand(cur)
    cur = _rot(g, cur, inp.v_rot)
    cur = _n(c, g, cur, p + "attn_sub_norm.weight", il, SPEC)
    cur = _mm(c, g, f"attn_out-{il}", p + "attn_output", cur, il)
    b = _weight(c, p + "attn_output.bias", il)
    return g.op(f"attn_out-{il}", "ADD", cur, b) if b is not None else cur


def _ffn(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    """``build_ffn`` of up and gate (their scales), SwiGLU, no down projection; then the sub-norm and
    ``ffn_down``."""
    p = f"blk.{il}."
    up = _mm(c, g, f"ffn_up-{il}", p + "ffn_up", x, il)
    gate = _mm(c, g, f"ffn_gate-{il}", p + "ffn_gate", x, il)
    cur = g.new(f"ffn_swiglu-{il}", "GLU", "F32", gate.ne, gate, up)
    cur = _n(c, g, cur, p + "ffn_sub_norm.weight", il, SPEC)
    return _mm(c, g, f"ffn_down-{il}", p + "ffn_down", cur, il)


def build(c: _Ctx, g: _Graph) -> _T:
    """bitnet.cpp's ``graph::graph``: :func:`~._dense.decoder` of its attention and FFN, the head the
    token embeddings."""
    x = decoder(c, g, _inp_embd(c, g), _attention, _ffn, SPEC)
    return output(c, g, x, _w(c, "token_embd.weight", c.hp.n_layer))


def unbuildable(model: GGUFModel) -> str | None:
    # bitnet.cpp's load_arch_tensors: the sub-norms and separate Q/K/V are required
    return _plain.needs(model, LAYER, qkv=False)
