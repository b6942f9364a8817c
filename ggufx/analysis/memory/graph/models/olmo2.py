"""``olmo2`` (src/models/olmo2.cpp): no pre-norms; RMS norms of the whole Q and K projections
before the reshape to heads; norms after attention and after the FFN; a sliding-window cache when
the file sets a window."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models._dense import Dense, build_dense, dense_unbuildable
from ggufx.model import GGUFModel

SPEC = Dense(attn_norm=False, ffn_norm=False, qk_norm="full", post_attn_norm=True, post_ffn_norm=True)


def build(c: _Ctx, g: _Graph) -> _T:
    return build_dense(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return dense_unbuildable(model, SPEC)
