"""``falcon`` (src/models/falcon.cpp: Falcon 7B/40B/180B): layer norms with biases, the fused QKV
projection (one KV head at 7B), RoPE, attention and an FFN of up, GELU and down (no gate, no biases) in
parallel on the one input norm, ``(FFN + attention) + x``; Falcon-40B/180B's attention reads a second norm
of the input (``attn_norm_2``, optional); the output norm's bias and the head."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import FALCON, GELU, Classic, Plain
from ggufx.model import GGUFModel

SPEC = Classic(Plain(Dense(norm="NORM"), ffn=GELU), residual=FALCON)


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build_classic(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    # falcon.cpp's load_arch_tensors: the norms' biases and the fused QKV are required
    layer = ("attn_norm", "attn_qkv", "attn_output", "ffn_up", "ffn_down")
    return _plain.needs(model, layer, qkv=False) or _plain.needs_biases(model, ("attn_norm",), ("output_norm.bias",))
