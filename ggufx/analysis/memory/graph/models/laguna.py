"""``laguna`` (src/models/laguna.cpp: Poolside Laguna XS.2 / M.1): per-layer query heads, RMS norms of each Q and
K head, RoPE; the attention output (no projection inside ``build_attn``) times the softplus of the gate
``attn_gate`` of the attention's input (one value per head, or per element), then the output projection;
the leading dense layers' SwiGLU FFN, then the routed experts (the file's gating, sigmoid when unset; the
selection bias; the file's weight normalization and scale) plus the shared expert; with
``attention.sliding_window`` (XS.2) the sliding-window layers of the pattern (every fourth layer full, the
first of each four) on their own cache."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _AttnInp, _Ctx, _inp_embd, _rot, _w
from ggufx.analysis.memory.graph.models import _moe_dense, deepseek2, qwen3next
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _ffn, _n, _qkv, decoder, output, tied_head
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, GATINGS, ROUTER, SHARED, shared
from ggufx.analysis.memory.graph.models._plain import rot
from ggufx.analysis.memory.graph.models.deepseek2 import SIGMOID
from ggufx.model import GGUFModel

_D = Dense()


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp, iswa: bool) -> _T:
    """laguna.cpp's attention block."""
    hp, T = c.hp, c.n_tokens
    nh, hv = hp.n_head[il], hp.head_v
    p = f"blk.{il}."
    q, k, v = _qkv(c, g, x, il, reshape=True)
    gate_w = _w(c, p + "attn_gate.weight", il)
    q = _n(c, g, q, p + "attn_q_norm.weight", il, _D)
    k = _n(c, g, k, p + "attn_k_norm.weight", il, _D)
    assert c.pos is not None
    q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
    v = rot(g, v, inp.v_rot)  # a V view of the fused QKV made contiguous for a rotated cache
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, v_rot=None), iswa, _D)
    g.expand(cur)  # build_attn_mha expands the attention's output before the rotation
    cur = _rot(g, cur, inp.v_rot)
    gate = g.op(f"attn_gate-{il}", "UNARY", g.mul_mat(f"attn_gate-{il}", gate_w, x))  # softplus
    if gate_w.ne[1] == nh:  # one gate per head
        gated = g.op(f"attn_gated-{il}", "MUL", g.reshape(cur, hv, nh, T), g.reshape(gate, 1, nh, T))
        cur = g.reshape(gated, hv * nh, T)
    else:
        cur = g.op(f"attn_gated-{il}", "MUL", cur, gate)
    return g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), cur)


def _ffn_of(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """The leading dense layers' ``build_ffn``, else ``build_moe_ffn`` plus the shared expert."""
    mp = deepseek2.moe_params(c)
    if il < mp.n_lead:
        return _ffn(c, g, cur, il, _D)
    mp = replace(mp, n_used=qwen3next.n_expert_used(c))
    moe, r = deepseek2.moe_ffn(c, g, cur, il, mp, mp.gating or SIGMOID)
    return g.op(f"ffn_out-{il}", "ADD", moe, shared(c, g, cur, il, r))


def _attn(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """:func:`_attention` over the layer's cache (a model with sliding-window layers has two)."""
    return _attention(c, g, x, il, inp, any(c.swa))


def build(c: _Ctx, g: _Graph) -> _T:
    """laguna.cpp's ``graph::graph``: :func:`~._dense.decoder` of its attention and FFN, the head
    ``output.weight`` or the tied embeddings."""
    x = decoder(c, g, _inp_embd(c, g), _attn, _ffn_of, _D, iswa=any(c.swa))
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """The gating, and per layer the tensors laguna.cpp's loader requires."""
    md = model.metadata
    gating = md.get_int("laguna.expert_gating_func") or 0
    if gating not in (0, *GATINGS):
        return f"the graph needs laguna.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not {gating}"
    n_dense = md.get_int("laguna.leading_dense_block_count") or 0
    attn = ["attn_q_norm", "attn_k_norm", "attn_gate"]

    def needed(il: int) -> tuple[list[str], list[str]]:
        if il < n_dense:
            return [*attn, "ffn_gate", "ffn_up", "ffn_down"], []
        return [*attn, *ROUTER, *SHARED], EXPERTS

    why = _moe_dense.unbuildable(model, needed)
    if why:
        return why
    names = {t.name for t in model.tensors}
    n_layer = md.get_int("laguna.block_count") or 0
    biases = (f"blk.{il}.exp_probs_b.bias" for il in range(n_dense, min(n_layer, 513)))
    bias = next((n for n in biases if n not in names), None)
    return f"the graph needs tensor {bias}, which the file lacks" if bias else None
