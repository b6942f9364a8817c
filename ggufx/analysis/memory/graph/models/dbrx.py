"""``dbrx`` (src/models/dbrx.cpp: DBRX): layer norms; the fused QKV projection clamped to ``clamp_kqv``
(``build_qkv``: CLAMP before the three views) when it is positive; RoPE; the attention and the output
projection; the FFN's layer norm (``attn_output_norm``) then the experts in every layer (softmax, normalized
weights, no scale)."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _AttnInp, _Ctx, _inp_embd, _proj, _rot, _w
from ggufx.analysis.memory.graph.models import _moe_check
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, decoder, output
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
    # ggml_view_3d(qkv, hd, n_head, T, nb1 = es * hd, nb2 = the fused row): the strides of each element, head and
    # token (a view's nb0 is the element's). V stays such a view: at partial offload the host's SET_ROWS copies
    # cpy_v's 2-D view of it (nb1 the fused row, llama-kv-cache.cpp:1403), the layout ggml_dup_tensor_layout keeps
    q = g.view(qkv, (hd, nh, T), (es, es * hd, row))
    k = g.view(qkv, (hd, nkv, T), (es, es * hd, row))
    v = g.view(qkv, (hv, nkv, T), (es, es * hv, row))
    assert c.pos is not None
    q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
    v = rot(g, v, inp.v_rot)  # the V view made contiguous for a rotated cache
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, v_rot=None), False, _D)
    g.expand(cur)  # build_attn_mha expands the attention's output before the rotation and projection
    return g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), _rot(g, cur, inp.v_rot))


def _experts(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    """dbrx.cpp's FFN: ``build_moe_ffn`` with softmax gating and normalized weights."""
    return routed(c, g, x, il, norm_w=True)[0]


def build(c: _Ctx, g: _Graph) -> _T:
    """dbrx.cpp's ``graph::graph``: :func:`~._dense.decoder` of its attention and experts (after the
    ``attn_output_norm`` layer norm), the layer-normed output, the head ``output.weight``."""
    x = decoder(c, g, _inp_embd(c, g), _attention, _experts, _D, "attn_output_norm")
    return output(c, g, x, _w(c, "output.weight", c.hp.n_layer), "NORM")


def unbuildable(model: GGUFModel) -> str | None:
    """Per layer the fused QKV projection, the FFN's norm, the router and the experts, and the output
    projection (dbrx.cpp's loader requires them)."""
    if "output.weight" not in {t.name for t in model.tensors}:
        return "the graph needs tensor output.weight, which the file lacks"
    roles = ["attn_norm", "attn_qkv", "attn_output", "attn_output_norm", *ROUTER]
    return _moe_check.unbuildable(model, lambda il: (roles, EXPERTS), qkv=False)
