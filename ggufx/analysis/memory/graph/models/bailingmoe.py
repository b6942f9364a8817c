"""``bailingmoe`` (src/models/bailingmoe.cpp: Ling lite/plus 1.x): the llama-style attention (rope factors
where the file has them), then in every layer experts routed by softmax (the file's weight normalization
and scale) plus the shared experts (:func:`.deepseek.routed_shared`)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _moe_dense
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, SHARED, MoeDense
from ggufx.analysis.memory.graph.models.deepseek import routed_shared
from ggufx.model import GGUFModel


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """bailingmoe.cpp:92-118."""
    return routed_shared(c, g, cur, il, norm_w=None)


SPEC = MoeDense(_ffn)


def build(c: _Ctx, g: _Graph) -> _T:
    return _moe_dense.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return _moe_dense.unbuildable(model, lambda il: ([*ROUTER, *SHARED], EXPERTS))
