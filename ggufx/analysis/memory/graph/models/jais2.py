"""``jais2`` (src/models/jais2.cpp: Jais 2): layer norms with biases, Q/K/V (fused or separate, biases
where the file has them), RoPE, the output projection's bias, an FFN of up, ReLU squared and down with their
biases (no gate); the output norm's bias, the head (tied embeddings without ``output``)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import RELU_SQR, Classic, Plain
from ggufx.model import GGUFModel

SPEC = Classic(Plain(Dense(norm="NORM"), ffn=RELU_SQR))
BIASES = ("attn_norm", "attn_output", "ffn_norm", "ffn_up", "ffn_down")


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build_classic(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    # jais2.cpp's load_arch_tensors: these biases are required
    layer = ("attn_norm", "attn_output", "ffn_norm", "ffn_up", "ffn_down")
    return _plain.needs(model, layer) or _plain.needs_biases(model, BIASES, ("output_norm.bias",))
