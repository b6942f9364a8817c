"""``codeshell`` (src/models/codeshell.cpp: CodeShell-7B): layer norms with biases, Q/K/V (fused or
separate, with their biases where the file has them), RoPE, the output projection's bias, an FFN of up,
GELU and down with their biases (no gate); the output norm's bias and the head."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import GELU, Classic, Plain
from ggufx.model import GGUFModel

SPEC = Classic(Plain(Dense(norm="NORM"), ffn=GELU))
BIASES = ("attn_norm", "attn_output", "ffn_norm", "ffn_up", "ffn_down")


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build_classic(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    # codeshell.cpp's load_arch_tensors: the head and these biases are required (token_embd is optional
    # to it: without it the output head is the embedding, which is not simulated)
    layer = ("attn_norm", "attn_output", "ffn_norm", "ffn_up", "ffn_down")
    return _plain.needs(model, layer, ("output.weight",)) or _plain.needs_biases(model, BIASES, ("output_norm.bias",))
