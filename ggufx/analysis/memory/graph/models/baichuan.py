"""``baichuan`` (src/models/baichuan.cpp): the llama graph with RoPE only in Baichuan 7B's files (llama.cpp's
``LLM_TYPE_7B``: 32 layers); the 13B's 40 layers (ALiBi: the soft-max's bias, no node of its own) and
other layer counts have none."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import Plain
from ggufx.model import GGUFModel

SPEC = Plain(Dense(rope=lambda c, il: c.hp.n_layer == 32))


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return _plain.needs(model, _plain.layer_weights(SPEC))
