"""``bloom`` (src/models/bloom.cpp): a layer norm of the token rows (``token_embd_norm``, with its bias),
ALiBi in place of RoPE (the same graph: the bias is the softmax's parameter), layer norms with biases, the
fused QKV projection with its bias, the output projection's bias, an FFN of up, GELU and down with their
biases (no gate); the output norm's bias."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import GELU, Classic, Plain
from ggufx.model import GGUFModel

SPEC = Classic(Plain(Dense(norm="NORM", rope=lambda c, il: False), ffn=GELU))
BIASES = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build_classic(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    # bloom.cpp's load_arch_tensors: the embedding norm, the fused QKV and every bias are required
    layer = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")
    top = ("token_embd_norm.weight", "token_embd_norm.bias")
    return _plain.needs(model, layer, top, qkv=False) or _plain.needs_biases(model, BIASES, ("output_norm.bias",))
