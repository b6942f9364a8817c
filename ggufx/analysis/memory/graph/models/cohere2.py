"""``cohere2`` (src/models/cohere2.cpp): layer norm (``LLM_NORM``), attention and FFN in
parallel on the one input norm, RoPE only in the sliding-window layers, the logits scaled by
``logit_scale``."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models._dense import Dense, build_dense, dense_unbuildable
from ggufx.model import GGUFModel

SPEC = Dense(norm="NORM", ffn_norm=False, rope=lambda c, il: c.swa[il], parallel=True, logit_scale=True)


def build(c: _Ctx, g: _Graph) -> _T:
    return build_dense(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return dense_unbuildable(model, SPEC)
