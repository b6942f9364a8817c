"""``jais`` (src/models/jais.cpp: Jais 13B/30B): ALiBi in place of RoPE (the same nodes), layer norms with
biases, the fused QKV projection with its bias, the output projection's bias, SwiGLU with the biases of
gate, up and down; the output norm's bias and the head."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import Classic, Plain
from ggufx.model import GGUFModel

SPEC = Classic(Plain(Dense(norm="NORM", rope=lambda c, il: False)))
BIASES = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build_classic(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    # jais.cpp's load_arch_tensors: the head, the fused QKV and every bias are required
    layer = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    top = ("output.weight",)
    return _plain.needs(model, layer, top, qkv=False) or _plain.needs_biases(model, BIASES, ("output_norm.bias",))
