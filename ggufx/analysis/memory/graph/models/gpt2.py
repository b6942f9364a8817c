"""``gpt2`` (src/models/gpt2.cpp): learned absolute positions (``position_embd`` rows added to the token
rows), no RoPE, layer norms with biases, the fused QKV projection with its bias, the output projection's
bias, an FFN of up, GELU and down with their biases (no gate); the output norm's bias, the head (tied
embeddings without ``output``)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import GELU, Classic, Plain
from ggufx.model import GGUFModel

SPEC = Classic(Plain(Dense(norm="NORM", rope=lambda c, il: False), ffn=GELU))
# gpt2.cpp's load_arch_tensors: the positions, the fused QKV and every bias are required
BIASES = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build_classic(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    layer = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")
    top = ("position_embd.weight",)
    return _plain.needs(model, layer, top, qkv=False) or _plain.needs_biases(model, BIASES, ("output_norm.bias",))
