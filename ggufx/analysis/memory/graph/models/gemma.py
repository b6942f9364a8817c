"""``gemma`` (src/models/gemma.cpp: Gemma 1): the embeddings scaled by sqrt(n_embd), Q scaled before the
attention, a GEGLU FFN, the output head tied to the embeddings."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models._dense import Dense, build_dense, dense_unbuildable
from ggufx.model import GGUFModel

SPEC = Dense(q_scale=True, gelu=True, embd_scale=True)


def build(c: _Ctx, g: _Graph) -> _T:
    return build_dense(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return dense_unbuildable(model, SPEC)
