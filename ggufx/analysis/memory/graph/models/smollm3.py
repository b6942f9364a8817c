"""``smollm3`` (src/models/smollm3.cpp): the llama graph without RoPE in every fourth layer
(``n_no_rope_layer_step`` = 4, smollm3.cpp:5)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models._dense import Dense, build_dense, dense_unbuildable
from ggufx.model import GGUFModel

SPEC = Dense(rope=lambda c, il: (il + 1) % 4 != 0)


def build(c: _Ctx, g: _Graph) -> _T:
    return build_dense(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return dense_unbuildable(model, SPEC)
