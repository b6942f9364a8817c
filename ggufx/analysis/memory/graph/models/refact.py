"""``refact`` (src/models/refact.cpp: Refact-1.6B): the llama graph without RoPE (ALiBi: the softmax's
parameter, the same nodes); the graph passes no biases (the output projection's and the FFN's, optional to
the loader, are not used: a file with them is not simulated), nor the experts the loader knows."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import Classic, Plain
from ggufx.model import GGUFModel

SPEC = Classic(Plain(Dense(rope=lambda c, il: False)))
_UNUSED = ("attn_output.bias", "ffn_gate.bias", "ffn_up.bias", "ffn_down.bias")


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build_classic(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    if (model.metadata.get_int("refact.expert_count") or 0) > 0:
        return "refact graphs with experts are not simulated (refact.cpp's graph has no expert FFN)"
    unused = next((t.name for t in model.tensors if t.name.endswith(_UNUSED)), None)
    if unused:
        return f"refact graphs with tensor {unused} are not simulated (refact.cpp's graph leaves it out)"
    return _plain.needs(model, ("attn_norm", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"))
