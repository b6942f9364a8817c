"""``minimax-m2`` (src/models/minimax-m2.cpp: MiniMax-M2): the llama-style attention with RMS norms of the
whole Q and K projections before the heads are split (partial rotary: the same RoPE node), and experts
routed by the file's gating function (sigmoid as published) with the selection bias ``exp_probs_b`` and
normalized weights; no shared expert."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _moe_dense, deepseek2
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, GATINGS, ROUTER, MoeDense, routed
from ggufx.model import GGUFModel


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """minimax-m2.cpp:130-141: ``build_moe_ffn`` with the bias and ``hparams.expert_gating_func``."""
    return routed(c, g, cur, il, norm_w=True, gating=deepseek2.moe_params(c).gating)[0]


SPEC = MoeDense(_ffn, Dense(qk_norm="full"))


def build(c: _Ctx, g: _Graph) -> _T:
    return _moe_dense.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    gating = model.metadata.get_int("minimax-m2.expert_gating_func") or 0
    if gating not in GATINGS:  # 0 (not set): build_moe_ffn aborts; sqrt-softplus is not built here
        return (
            f"the graph needs minimax-m2.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not {gating}"
        )
    return _moe_dense.unbuildable(model, lambda il: (["attn_q_norm", "attn_k_norm", *ROUTER], EXPERTS))
