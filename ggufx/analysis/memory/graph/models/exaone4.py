"""``exaone4`` (src/models/exaone4.cpp): no pre-norms; RMS norms of each Q and K head; RoPE only
in the sliding-window layers when there are any (exaone4.cpp: ``use_rope``); norms after attention
and after the FFN. Files with NextN layers are not built."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models._dense import Dense, build_dense, dense_unbuildable
from ggufx.model import GGUFModel

SPEC = Dense(
    attn_norm=False,
    ffn_norm=False,
    qk_norm="head",
    rope=lambda c, il: c.swa[il] or not any(c.swa),
    post_attn_norm=True,
    post_ffn_norm=True,
)


def build(c: _Ctx, g: _Graph) -> _T:
    return build_dense(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    if (model.metadata.get_int("exaone4.nextn_predict_layers") or 0) > 0:  # the graph stops before them
        return "exaone4 graphs with NextN layers are not simulated"
    return dense_unbuildable(model, SPEC)
