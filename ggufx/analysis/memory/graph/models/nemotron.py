"""``nemotron`` (src/models/nemotron.cpp: Minitron, Nemotron-4): layer norms with biases, the optional
output projection bias, an FFN of up, ReLU squared and down (optional biases, no gate)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import RELU_SQR, Plain
from ggufx.model import GGUFModel

SPEC = Plain(Dense(norm="NORM"), ffn=RELU_SQR)


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return _plain.needs(model, _plain.layer_weights(SPEC))
