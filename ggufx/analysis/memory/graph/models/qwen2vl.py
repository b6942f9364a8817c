"""``qwen2vl`` (src/models/qwen2vl.cpp), the text decoder of Qwen2-VL and Qwen2.5-VL: the qwen2 graph
with M-RoPE (``ggml_rope_multi``: four positions per token, so a positions input four times as long)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models._dense import Dense, build_dense, dense_unbuildable
from ggufx.model import GGUFModel

SPEC = Dense(n_pos=4)


def build(c: _Ctx, g: _Graph) -> _T:
    return build_dense(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return dense_unbuildable(model, SPEC)
