"""``orion`` (src/models/orion.cpp: Orion-14B): the llama graph with layer norms (biases required)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import Plain
from ggufx.model import GGUFModel

SPEC = Plain(Dense(norm="NORM"))


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return _plain.needs(model, _plain.layer_weights(SPEC))
