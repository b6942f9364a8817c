"""``deepseek`` (src/models/deepseek.cpp: DeepSeek-MoE 16B, V1): the llama-style attention (rope factors
where the file has them); dense FFNs in the ``leading_dense_block_count`` first layers, then experts routed
by softmax with unnormalized weights (scaled by the file's ``expert_weights_scale``) plus the shared
experts."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _moe_dense, deepseek2, qwen3next
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._dense import _ffn as dense_ffn
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, SHARED, MoeDense, shared
from ggufx.analysis.memory.graph.models.deepseek2 import SOFTMAX
from ggufx.model import GGUFModel

_DENSE = Dense()


def routed_shared(c: _Ctx, g: _Graph, cur: _T, il: int, norm_w: bool | None) -> _T:
    """``build_moe_ffn`` (softmax; ``norm_w`` the given one, or the file's ``expert_weights_norm`` when
    None; the file's ``expert_weights_scale``) plus the shared experts' ``build_ffn``."""
    mp = deepseek2.moe_params(c)
    mp = replace(mp, n_used=qwen3next.n_expert_used(c), norm_w=mp.norm_w if norm_w is None else norm_w)
    moe, r = deepseek2.moe_ffn(c, g, cur, il, mp, SOFTMAX)
    return g.op(f"ffn_out-{il}", "ADD", moe, shared(c, g, cur, il, r))


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """deepseek.cpp:95-126."""
    if il < deepseek2.moe_params(c).n_lead:
        return dense_ffn(c, g, cur, il, _DENSE)
    return routed_shared(c, g, cur, il, norm_w=False)


SPEC = MoeDense(_ffn)


def build(c: _Ctx, g: _Graph) -> _T:
    return _moe_dense.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    n_lead = model.metadata.get_int("deepseek.leading_dense_block_count") or 0

    def needed(il: int) -> tuple[list[str], list[str]]:
        return (["ffn_gate", "ffn_up", "ffn_down"], []) if il < n_lead else ([*ROUTER, *SHARED], EXPERTS)

    return _moe_dense.unbuildable(model, needed)
