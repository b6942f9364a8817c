"""``chatglm`` (src/models/chatglm.cpp: ChatGLM3, GLM-4-9B's chatglm files): the llama-style attention (the
fused QKV and its bias, or the three), an FFN of one up projection of twice the width, ``ggml_swiglu``
over its halves (no gate tensor) and down."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import Plain
from ggufx.model import GGUFModel

SPEC = Plain(Dense(fused_up=True))


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return _plain.needs(model, ("attn_norm", "attn_output", "ffn_norm", "ffn_up", "ffn_down"))
