"""``olmoe`` (src/models/olmoe.cpp: OLMoE-1B-7B): the llama-style attention with RMS norms of the whole Q
and K projections before the heads are split, and experts routed by softmax with unnormalized weights
(no shared expert, no selection bias, no scale: olmoe.cpp loads no ``expert_weights_scale``)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _moe_dense
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, MoeDense, routed
from ggufx.model import GGUFModel


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """olmoe.cpp:128-140: ``build_moe_ffn`` with softmax gating, ``norm_w`` false."""
    return routed(c, g, cur, il, norm_w=False)[0]


SPEC = MoeDense(_ffn, Dense(qk_norm="full"))


def build(c: _Ctx, g: _Graph) -> _T:
    return _moe_dense.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return _moe_dense.unbuildable(model, lambda il: (["attn_q_norm", "attn_k_norm", *ROUTER], EXPERTS))
