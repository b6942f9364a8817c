"""``grovemoe`` (src/models/grovemoe.cpp: GroveMoE): the llama-style attention with RMS norms of each Q and K
head before RoPE; the router's logits of the FFN norm given to two ``build_moe_ffn`` calls (each its own
softmax, and, for ``LLM_ARCH_GROVEMOE``, experts picked on the sigmoid of the logits): the experts on the
normed input, then the chunk experts (``expert_count / experts_per_group`` of them, the picked experts' ids
divided by ``experts_per_group`` through two casts and a scale, the weights gathered from all the experts'
probabilities) on the experts' output; the chunk experts' output scaled by ``expert_group_scale`` and added.
For CUDA the weighted sum of each call's experts is kept alive as ``graph_optimize`` fuses it; there is no
top-k fusion (the sigmoid selection between the softmax and the argsort is not the pattern ``topk-moe``
matches)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import (
    _AttnInp,
    _Ctx,
    _inp_embd,
    _w,
    moe_swiglu_experts,
    moe_weighted_sum,
    moe_weights_norm,
)
from ggufx.analysis.memory.graph.models import _moe_check, qwen3next
from ggufx.analysis.memory.graph.models._dense import Dense, decoder, output, tied_head
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER
from ggufx.analysis.memory.graph.models._plain import attention
from ggufx.analysis.memory.graph.models.qwen3next import file_value
from ggufx.model import GGUFModel

_D = Dense(qk_norm="head")
_CHUNK = ["ffn_gate_chexps", "ffn_up_chexps", "ffn_down_chexps"]


def _moe(c: _Ctx, g: _Graph, cur: _T, logits: _T, il: int, part: str, n_used: int) -> _T:
    """``build_moe_ffn`` (llama-graph.cpp:2044-2400) with ``probs_in`` and grovemoe's selection: softmax
    probabilities, experts picked on the sigmoid of the logits (their ids divided down to the chunk
    experts' for ``part`` "_chexps"), normalized weights; SwiGLU experts; one view per used expert and their
    sum."""
    T, E = cur.ne[1], cur.ne[0]
    n_exp = logits.ne[0]
    probs = g.op(f"ffn_moe_probs-{il}", "SOFT_MAX", logits)
    sel = g.op(f"ffn_moe_probs_biased-{il}", "UNARY", logits)
    argsort = g.new(f"ffn_moe_argsort-{il}", "ARGSORT", "I32", sel.ne, sel)
    ids = g.view(argsort, (n_used, T), argsort.nb)
    if part != "_exps":  # n_expert (the chunk experts') != hparams.n_expert
        f_sel = g.new(f"ffn_moe_topk-{il} (copy)", "CPY", "F32", ids.ne, ids)
        ids = g.new(f"node_cast-{il}", "CPY", "I32", ids.ne, g.op(f"node_scale-{il}", "SCALE", f_sel))
    weights = g.new(f"ffn_moe_weights-{il}", "GET_ROWS", "F32", (1, n_used, T), g.reshape(probs, 1, n_exp, T), ids)
    weights = moe_weights_norm(g, weights, il)[-1]
    g.expand(weights)
    x = g.reshape(cur, E, 1, T)
    experts = moe_swiglu_experts(c, g, x, ids, il, n_used, part)[3]
    return moe_weighted_sum(g, experts, weights, il, E, n_used)


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """grovemoe.cpp's attention: llama's, with the RMS norms of each Q and K head before RoPE."""
    return attention(c, g, x, il, inp, _D)


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """grovemoe.cpp's FFN: the router's logits, the experts, the chunk experts on their output, scaled
    and added."""
    n_used = qwen3next.n_expert_used(c)
    per_group = file_value(c, "grovemoe.experts_per_group")
    b = f"blk.{il}."
    logits = g.mul_mat(f"ffn_moe_logits-{il}", _w(c, b + "ffn_gate_inp.weight", il), cur)
    moe = _moe(c, g, cur, logits, il, "_exps", n_used)
    n_chunk = _w(c, b + "ffn_up_chexps.weight", il).ne[2]
    assert isinstance(per_group, int) and n_chunk * per_group == logits.ne[0]
    chunk = _moe(c, g, moe, logits, il, "_chexps", min(n_used, n_chunk))
    return g.op(f"ffn_out-{il}", "ADD", moe, g.op(f"ffn_chexps-{il}", "SCALE", chunk))


def build(c: _Ctx, g: _Graph) -> _T:
    """grovemoe.cpp's ``graph::graph``: :func:`~._dense.decoder` of its attention and FFN, the head
    ``output.weight`` or the tied embeddings."""
    x = decoder(c, g, _inp_embd(c, g), _attention, _ffn, _D)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """``experts_per_group`` dividing ``expert_count`` (the loader's chunk-expert count), and per layer the
    norms, the router, the experts and the chunk experts grovemoe.cpp's loader requires."""
    md = model.metadata
    per_group = md.get_int("grovemoe.experts_per_group") or 0
    n_exp = md.get_int("grovemoe.expert_count") or 0
    if per_group <= 0 or n_exp % per_group:
        return "the graph needs grovemoe.experts_per_group > 0 dividing grovemoe.expert_count"
    roles = ["attn_norm", "attn_output", "attn_q_norm", "attn_k_norm", "ffn_norm", *ROUTER]
    return _moe_check.unbuildable(model, lambda il: (roles, [*EXPERTS, *_CHUNK]))
