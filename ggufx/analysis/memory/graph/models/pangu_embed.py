"""``pangu-embedded`` (src/models/pangu-embed.cpp: openPangu-Embedded): the llama graph (RoPE without its
factors) with the output projection's bias (required), the FFN's biases and the head's bias where the file
has them."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._plain import Plain
from ggufx.model import GGUFModel

SPEC = Plain()


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    # pangu-embed.cpp's load_arch_tensors: the output projection's bias is required
    return _plain.needs(model, _plain.layer_weights(SPEC)) or _plain.needs_biases(model, ("attn_output",))
