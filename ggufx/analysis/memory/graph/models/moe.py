"""``build_moe_ffn`` (llama-graph.cpp:2044-2420) with the gatings and the shared expert of the hybrids:
softmax or sigmoid routing, an optional selection bias (``exp_probs_b``: the experts are picked on the
biased probabilities and weighted by the unbiased ones), normalized weights, separate gate and up
experts; and what CUDA's ``graph_optimize`` does around it (ggml-cuda.cu:4604-4712): the fused top-k
routing and weighted sum kept alive, and a shared expert's gate/up/GLU moved right after the routed
experts' GLU when the two can run as one fused kernel (``ggml_cuda_match_shared_expert``,
ggml-cuda.cu:1827-1876)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Fusion, _Graph, _type
from ggufx.analysis.memory.graph.llm import _MOE_REDUCTION_MAX, _Ctx, _w

_HOST = ("CPU", "CPU_Mapped", "CPU_REPACK")


def _on_gpu(t: _T) -> bool:
    """Whether a weight is resident in a GPU buffer (a host weight reaches the GPU as a split input
    copy, which has no buffer when ``graph_optimize`` looks: no shared-expert fusion then)."""
    return t.buft is not None and t.buft not in _HOST and not t.buft.endswith("_Host")


def shared_fuses(routed: tuple[_T, _T], shared: tuple[_T, _T]) -> bool:
    """``ggml_cuda_match_shared_expert``'s batch-independent checks on the weights: the routed gate
    and up experts resident on a GPU, quantized, of one type and shape, and the shared expert's gate
    and up of that type and of the experts' first two dimensions."""
    (gate_w, up_w), (sh_gate, sh_up) = routed, shared
    if not (_on_gpu(up_w) and _on_gpu(gate_w) and _on_gpu(sh_up) and _on_gpu(sh_gate)):
        return False
    if _type(up_w.type).block_size == 1 or up_w.type != gate_w.type or up_w.ne != gate_w.ne:
        return False
    return (
        sh_up.type == sh_gate.type == up_w.type
        and sh_up.ne == sh_gate.ne
        and sh_up.ne[:2] == up_w.ne[:2]
        and sh_up.ne[2:] == (1, 1)
    )


def moe_ffn(
    c: _Ctx,
    g: _Graph,
    cur: _T,
    il: int,
    n_used: int,
    sigmoid: bool = False,
    probs_b: _T | None = None,
    shared_glu: _T | None = None,
) -> _T:
    """The experts' output, in ``build_moe_ffn``'s expansion order: the routing first (expanded early
    so that CUDA can fuse top-k), then the experts, then one view per used expert and their sum.
    ``shared_glu``: a shared expert's GLU that CUDA moves right after the routed GLU (expanded there)."""
    T, E = cur.ne[1], cur.ne[0]
    p = f"blk.{il}."
    logits = g.mul_mat(f"ffn_moe_logits-{il}", _w(c, p + "ffn_gate_inp.weight", il), cur)
    n_exp = logits.ne[0]
    if sigmoid:
        probs = g.op(f"ffn_moe_probs-{il}", "UNARY", logits)
    else:
        probs = g.op(f"ffn_moe_probs-{il}", "SOFT_MAX", logits)
    probs3 = g.reshape(probs, 1, n_exp, T)
    selection = probs if probs_b is None else g.op(f"ffn_moe_probs_biased-{il}", "ADD", probs, probs_b)
    argsort = g.new(f"ffn_moe_argsort-{il}", "ARGSORT", "I32", (n_exp, T), selection)
    topk = g.view(argsort, (n_used, T), argsort.nb[:2])
    weights = g.new(f"ffn_moe_weights-{il}", "GET_ROWS", "F32", (1, n_used, T), probs3, topk)
    w2 = g.reshape(weights, n_used, T)
    wsum = g.new(f"ffn_moe_weights_sum-{il}", "SUM_ROWS", "F32", (1, T), w2)
    clamped = g.op(f"ffn_moe_weights_sum_clamped-{il}", "CLAMP", wsum)
    wnorm = g.op(f"ffn_moe_weights_norm-{il}", "DIV", w2, clamped)
    w3 = g.reshape(wnorm, 1, n_used, T)
    g.expand(w3)
    if n_exp in (288, 576) or (n_exp & (n_exp - 1) == 0 and n_exp <= 512):  # topk-moe.cu:403-412
        biased = [] if selection is probs else [selection]
        g.fused.append(_Fusion([probs, probs3, *biased, argsort, topk, weights, w2, wsum, clamped, wnorm, w3]))
    x = g.reshape(cur, E, 1, T)
    up_w, gate_w, down_w = (_w(c, p + f"ffn_{r}_exps.weight", il) for r in ("up", "gate", "down"))
    up = g.new(f"ffn_moe_up-{il}", "MUL_MAT_ID", "F32", (up_w.ne[1], n_used, T), up_w, x, topk)
    gate = g.new(f"ffn_moe_gate-{il}", "MUL_MAT_ID", "F32", (gate_w.ne[1], n_used, T), gate_w, x, topk)
    act = g.new(f"ffn_moe_swiglu-{il}", "GLU", "F32", gate.ne, gate, up)
    if shared_glu is not None:
        g.expand(act)
        g.expand(shared_glu)
        g.fused.append(_Fusion([shared_glu], keep=[x, topk]))  # add_alloc_dep until the shared GLU
    experts = g.new(f"ffn_moe_down-{il}", "MUL_MAT_ID", "F32", (down_w.ne[1], n_used, T), down_w, act, topk)
    weighted = g.op(f"ffn_moe_weighted-{il}", "MUL", experts, w3)
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
        out = g.new(f"ffn_moe_out-{il}", "CONT", "F32", (E, T), out)
    elif n_used <= _MOE_REDUCTION_MAX:
        g.fused.append(_Fusion([weighted, *views, *adds], keep=[experts, w3]))
    return out
