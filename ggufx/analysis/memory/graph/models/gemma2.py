"""``gemma2`` (src/models/gemma2.cpp): scaled embeddings, the query scaled before attention,
attention logit soft-capping (without flash attention: SCALE, TANH, SCALE before the soft-max),
norms after attention and after the GEGLU FFN, final logit soft-capping; every other layer on the
sliding-window cache."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models._dense import Dense, build_dense, dense_unbuildable
from ggufx.model import GGUFModel

SPEC = Dense(
    q_scale=True,
    attn_softcap=True,
    post_attn_norm=True,
    post_ffn_norm=True,
    gelu=True,
    embd_scale=True,
    logit_softcap=True,
)


def build(c: _Ctx, g: _Graph) -> _T:
    return build_dense(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return dense_unbuildable(model, SPEC)
