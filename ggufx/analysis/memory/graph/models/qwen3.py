"""``qwen3`` (src/models/qwen3.cpp): the llama graph with an RMS norm of each Q and K head before
RoPE. In an embedding run (Qwen3-Embedding: pooling last; Qwen3-Reranker: rank) the pooling nodes follow
the logits, over ``result_norm`` (qwen3.cpp: ``res->t_embd``)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, with_pooling
from ggufx.analysis.memory.graph.models._dense import Dense, build_dense, dense_unbuildable
from ggufx.model import GGUFModel

SPEC = Dense(qk_norm="head")


def build(c: _Ctx, g: _Graph) -> _T:
    logits = build_dense(c, g, SPEC)
    if c.sp.pooling is None:
        return logits
    norm = logits
    while norm.name != "result_norm":  # the logits' matrix product (and its bias) over result_norm
        norm = norm.src[1] if norm.op == "MUL_MAT" else norm.src[0]
    return with_pooling(c, g, logits, norm)


def unbuildable(model: GGUFModel) -> str | None:
    return dense_unbuildable(model, SPEC)
