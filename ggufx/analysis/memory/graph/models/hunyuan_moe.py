"""``hunyuan-moe`` (src/models/hunyuan-moe.cpp: Hunyuan-A13B): the llama-style attention whose Q and K
heads are RMS-normed after RoPE, and an FFN of the routed experts (softmax, normalized weights) plus a
dense shared MLP."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _moe_dense
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, SHARED, MoeDense, routed, shared
from ggufx.model import GGUFModel


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """hunyuan-moe.cpp:137-165: the shared MLP (``ffn_*_shexp``) and the routed experts, summed."""
    moe, r = routed(c, g, cur, il, norm_w=True)
    return g.op(f"ffn_out-{il}", "ADD", moe, shared(c, g, cur, il, r))


SPEC = MoeDense(_ffn, qk_norm_after_rope=True)


def build(c: _Ctx, g: _Graph) -> _T:
    return _moe_dense.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return _moe_dense.unbuildable(model, lambda il: (["attn_q_norm", "attn_k_norm", *ROUTER, *SHARED], EXPERTS))
