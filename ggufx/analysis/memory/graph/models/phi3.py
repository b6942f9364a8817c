"""``phi3`` (src/models/phi3.cpp): the fused QKV projection (or separate ones), the query scaled
before attention, the fused gate-up FFN (one ``ffn_up`` of 2 n_ff, ``ggml_swiglu`` over its halves),
optional norm and output biases, the residual added first after the FFN. llama.cpp turns its sliding window off (phi3.cpp:13-24)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models._dense import Dense, build_dense, dense_unbuildable
from ggufx.model import GGUFModel

SPEC = Dense(q_scale=True, fused_up=True, ffn_residual_first=True)


def build(c: _Ctx, g: _Graph) -> _T:
    return build_dense(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return dense_unbuildable(model, SPEC)
