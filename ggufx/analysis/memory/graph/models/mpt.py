"""``mpt`` (src/models/mpt.cpp: MPT 7B/30B): ALiBi in place of RoPE (the same nodes), the learned positions
where the file has ``position_embd``, layer norms (biases optional), the fused QKV projection (bias
optional), an FFN of up, GELU and down (biases optional, no gate); the head (tied embeddings without
``output``); ``attention.clamp_kqv`` clamps the fused projection. Not simulated: the layer norms of Q and K,
the FFN's activation scales (``ffn_act``)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import GELU, Classic, Plain
from ggufx.model import GGUFModel

SPEC = Classic(Plain(Dense(norm="NORM", rope=lambda c, il: False), ffn=GELU), clamp=True)


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build_classic(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    odd = next((t.name for t in model.tensors if t.name.endswith(("attn_q_norm.weight", "ffn_act.scales"))), None)
    if odd:
        return f"mpt graphs with tensor {odd} are not simulated"
    return _plain.needs(model, ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"), qkv=False)
