"""``build_moe_ffn`` (llama-graph.cpp:2044-2420) with the gatings and the shared expert of the hybrids:
softmax or sigmoid routing, an optional selection bias (``exp_probs_b``: the experts are picked on the
biased probabilities and weighted by the unbiased ones), normalized weights, separate gate and up
experts; and what CUDA's ``graph_optimize`` does around it (ggml-cuda.cu:4604-4712): the fused top-k
routing and weighted sum kept alive, and a shared expert's gate/up/GLU moved right after the routed
experts' GLU when the two can run as one fused kernel (``ggml_cuda_match_shared_expert``,
ggml-cuda.cu:1827-1876)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph, _type
from ggufx.analysis.memory.graph.llm import _Ctx, _moe_ffn

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
    ``shared_glu``: a shared expert's GLU that CUDA moves right after the routed GLU (expanded there).
    (:func:`ggufx.analysis.memory.graph.llm._moe_ffn`.)"""
    return _moe_ffn(c, g, cur, il, n_used, sigmoid, probs_b, shared_glu)
