"""``openelm`` (src/models/openelm.cpp): per-layer head counts, the fused QKV projection viewed as Q, K
and V heads, RMS norms of each Q and K head, the residual added before the attention output
(``ggml_add(residual, cur)``: the last layer gathers the residual's rows first)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models._dense import Dense, build_dense, dense_unbuildable
from ggufx.model import GGUFModel

SPEC = Dense(qk_norm="head", residual_first=True)


def build(c: _Ctx, g: _Graph) -> _T:
    return build_dense(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return dense_unbuildable(model, SPEC)
