"""``qwen2moe`` (src/models/qwen2moe.cpp: Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): the llama-style attention
with Q/K/V biases, experts with softmax routing and unnormalized weights, and a shared expert scaled by
its one-column gate's ``silu(x) / x`` (a sigmoid)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _w
from ggufx.analysis.memory.graph.models import _moe_dense
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, SHARED, MoeDense, routed, shared
from ggufx.model import GGUFModel


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """qwen2moe.cpp:131-172: the routed experts (weights not normalized), then the shared expert times
    ``ggml_div(ggml_silu(gate), gate)`` of its gate's projection, added to them."""
    moe, r = routed(c, g, cur, il, norm_w=False)
    gate_inp = g.mul_mat(f"ffn_shexp_gate_inp-{il}", _w(c, f"blk.{il}.ffn_gate_inp_shexp.weight", il), cur)
    gate = g.op(f"ffn_shexp_gate-{il}", "DIV", g.op(f"ffn_shexp_silu-{il}", "UNARY", gate_inp), gate_inp)
    sh = g.op(f"ffn_shexp_out-{il}", "MUL", shared(c, g, cur, il, r), gate)
    return g.op(f"ffn_out-{il}", "ADD", moe, sh)


SPEC = MoeDense(_ffn)


def build(c: _Ctx, g: _Graph) -> _T:
    return _moe_dense.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return _moe_dense.unbuildable(model, lambda il: ([*ROUTER, "ffn_gate_inp_shexp", *SHARED], EXPERTS))
