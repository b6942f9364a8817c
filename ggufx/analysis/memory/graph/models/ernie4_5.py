"""``ernie4_5`` (src/models/ernie4-5.cpp), the dense ERNIE 4.5: llama.cpp's llama graph (optional Q/K/V
biases through ``build_qkv``, no output bias, no rope_freqs)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models._dense import Dense, build_dense, dense_unbuildable
from ggufx.model import GGUFModel

SPEC = Dense()


def build(c: _Ctx, g: _Graph) -> _T:
    return build_dense(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return dense_unbuildable(model, SPEC)
