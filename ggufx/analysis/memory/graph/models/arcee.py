"""``arcee`` (src/models/arcee.cpp: AFM-4.5B): llama.cpp's llama graph (rope_freqs optional, an optional
output projection bias) with an FFN of up, ReLU squared and down, without a gate."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._plain import RELU_SQR, Plain
from ggufx.model import GGUFModel

SPEC = Plain(ffn=RELU_SQR)


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return _plain.needs(model, _plain.layer_weights(SPEC))
