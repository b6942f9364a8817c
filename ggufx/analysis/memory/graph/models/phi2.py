"""``phi2`` (src/models/phi2.cpp: Phi-2): layer norm with bias; the fused QKV projection (or the three)
with biases; partial rotary; Q scaled before attention; attention and a GELU FFN of up and down (biases,
no gate) in parallel on the one input norm, both added to the residual; the output norm's and the
head's biases."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import GELU, PHI2, Plain
from ggufx.model import GGUFModel

SPEC = Plain(Dense(norm="NORM", q_scale=True), ffn=GELU, residual=PHI2)


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    # phi2.cpp's load_arch_tensors: the output head, its bias and the output norm's are required
    return _plain.needs(model, _plain.layer_weights(SPEC), ("output_norm.bias", "output.weight", "output.bias"))
