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

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Fusion, _Graph
from ggufx.analysis.memory.graph.llm import _MOE_REDUCTION_MAX, _attn_inp, _Ctx, _inp_embd, _w, _weight
from ggufx.analysis.memory.graph.models import _moe_check, qwen3next
from ggufx.analysis.memory.graph.models._dense import Dense, _n
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
    p = f"blk.{il}."
    n_exp = logits.ne[0]
    probs = g.op(f"ffn_moe_probs-{il}", "SOFT_MAX", logits)
    sel = g.op(f"ffn_moe_probs_biased-{il}", "UNARY", logits)
    argsort = g.new(f"ffn_moe_argsort-{il}", "ARGSORT", "I32", sel.ne, sel)
    ids = g.view(argsort, (n_used, T), argsort.nb)
    if part != "_exps":  # n_expert (the chunk experts') != hparams.n_expert
        f_sel = g.new(f"ffn_moe_topk-{il} (copy)", "CPY", "F32", ids.ne, ids)
        ids = g.new(f"node_cast-{il}", "CPY", "I32", ids.ne, g.op(f"node_scale-{il}", "SCALE", f_sel))
    weights = g.new(f"ffn_moe_weights-{il}", "GET_ROWS", "F32", (1, n_used, T), g.reshape(probs, 1, n_exp, T), ids)
    w2 = g.reshape(weights, n_used, T)
    wsum = g.new(f"ffn_moe_weights_sum-{il}", "SUM_ROWS", "F32", (1, T), w2)
    clamped = g.op(f"ffn_moe_weights_sum_clamped-{il}", "CLAMP", wsum)
    weights = g.reshape(g.op(f"ffn_moe_weights_norm-{il}", "DIV", w2, clamped), 1, n_used, T)
    g.expand(weights)
    x = g.reshape(cur, E, 1, T)
    up_w, gate_w, down_w = (_w(c, p + f"ffn_{r}{part}.weight", il) for r in ("up", "gate", "down"))
    up = g.new(f"ffn_moe_up-{il}", "MUL_MAT_ID", "F32", (up_w.ne[1], n_used, T), up_w, x, ids)
    gate = g.new(f"ffn_moe_gate-{il}", "MUL_MAT_ID", "F32", (gate_w.ne[1], n_used, T), gate_w, x, ids)
    act = g.new(f"ffn_moe_swiglu-{il}", "GLU", "F32", gate.ne, gate, up)
    experts = g.new(f"ffn_moe_down-{il}", "MUL_MAT_ID", "F32", (down_w.ne[1], n_used, T), down_w, act, ids)
    weighted = g.op(f"ffn_moe_weighted-{il}", "MUL", experts, weights)
    g.expand(weighted)
    views = [g.view(weighted, (E, T), (weighted.nb[0], weighted.nb[2])) for _ in range(n_used)]
    for v in views:
        g.expand(v)
    out = views[0]
    adds = []
    for v in views[1:]:
        out = g.op(f"ffn_moe_out-{il}", "ADD", out, v)
        g.expand(out)
        adds.append(out)
    if n_used == 1:
        return g.new(f"ffn_moe_out-{il}", "CONT", "F32", (E, T), out)
    if n_used <= _MOE_REDUCTION_MAX:  # CUDA's weighted sum of the experts (ggml_cuda_match_moe_weighted_reduction)
        g.fused.append(_Fusion([weighted, *views, *adds], keep=[experts, weights]))
    return out


def build(c: _Ctx, g: _Graph) -> _T:
    """grovemoe.cpp's ``graph::graph``."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    n_used = qwen3next.n_expert_used(c)
    per_group = file_value(c, "grovemoe.experts_per_group")
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        cur = attention(c, g, _n(c, g, x, b + "attn_norm.weight", il, _D), il, inp, _D)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _D)
        logits = g.mul_mat(f"ffn_moe_logits-{il}", _w(c, b + "ffn_gate_inp.weight", il), cur)
        moe = _moe(c, g, cur, logits, il, "_exps", n_used)
        n_chunk = _w(c, b + "ffn_up_chexps.weight", il).ne[2]
        assert isinstance(per_group, int) and n_chunk * per_group == logits.ne[0]
        chunk = _moe(c, g, moe, logits, il, "_chexps", min(n_used, n_chunk))
        cur = g.op(f"ffn_out-{il}", "ADD", moe, g.op(f"ffn_chexps-{il}", "SCALE", chunk))
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
    """``experts_per_group`` dividing ``expert_count`` (the loader's chunk-expert count), and per layer the
    norms, the router, the experts and the chunk experts grovemoe.cpp's loader requires."""
    md = model.metadata
    per_group = md.get_int("grovemoe.experts_per_group") or 0
    n_exp = md.get_int("grovemoe.expert_count") or 0
    if per_group <= 0 or n_exp % per_group:
        return "the graph needs grovemoe.experts_per_group > 0 dividing grovemoe.expert_count"
    roles = ["attn_norm", "attn_output", "attn_q_norm", "attn_k_norm", "ffn_norm", *ROUTER]
    return _moe_check.unbuildable(model, lambda il: (roles, [*EXPERTS, *_CHUNK]))
