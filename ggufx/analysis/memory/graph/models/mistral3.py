"""``mistral3`` (src/models/mistral3.cpp), the text decoder: llama.cpp's llama graph (optional
biases, rope_freqs). Files with ``attention.temperature_scale`` (Llama 4 attention scaling: an input
that multiplies Q) are not built (graphsim's ``unbuildable``)."""

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
