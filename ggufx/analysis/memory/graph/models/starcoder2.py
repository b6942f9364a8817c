"""``starcoder2`` (src/models/starcoder2.cpp): layer norms with biases, Q/K/V biases where the file has
them, the output projection's bias, and an FFN of up, GELU and down with their biases (no gate); the
output norm's bias."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import GELU, Plain
from ggufx.model import GGUFModel

SPEC = Plain(Dense(norm="NORM"), ffn=GELU)
# starcoder2.cpp's load_arch_tensors: the norms' and projections' biases are required
_BIASES = ("attn_norm", "attn_output", "ffn_norm", "ffn_up", "ffn_down")


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return _plain.needs(model, _plain.layer_weights(SPEC), ("output_norm.bias",)) or _plain.needs_biases(model, _BIASES)
