"""``ernie4_5-moe`` (src/models/ernie4-5-moe.cpp: ERNIE-4.5-21B-A3B, -300B-A47B): the llama-style
attention (optional Q/K/V and output biases), dense FFNs in the ``leading_dense_block_count`` first
layers, then, every ``interleave_moe_layer_step``-th layer, the routed experts (softmax, the selection
bias ``exp_probs_b``, normalized weights) plus the shared experts when the file has them."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _weight
from ggufx.analysis.memory.graph.models import _moe_dense, deepseek2
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._dense import _ffn as dense_ffn
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, SHARED, MoeDense, routed, shared
from ggufx.analysis.memory.graph.models.qwen3next import file_value
from ggufx.model import GGUFModel

_DENSE = Dense()
_STEP = "ernie4_5-moe.interleave_moe_layer_step"


def _is_moe(il: int, n_lead: int, step: int) -> bool:
    """ernie4-5-moe.cpp:63-64."""
    return il >= n_lead and (il + 1) % step == 0


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """ernie4-5-moe.cpp:66-105: ``build_ffn`` in a dense layer; else the routed experts and, when the
    file has them (``n_ff_shexp`` > 0), the shared experts' ``build_ffn``, summed."""
    step = file_value(c, _STEP)
    assert isinstance(step, int)
    if not _is_moe(il, deepseek2.moe_params(c).n_lead, step):
        return dense_ffn(c, g, cur, il, _DENSE)
    moe, r = routed(c, g, cur, il, norm_w=True)
    if _weight(c, f"blk.{il}.ffn_up_shexp.weight", il) is None:
        return moe
    return g.op(f"ffn_out-{il}", "ADD", moe, shared(c, g, cur, il, r))


SPEC = MoeDense(_ffn)


def build(c: _Ctx, g: _Graph) -> _T:
    return _moe_dense.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    md = model.metadata
    step = md.get_int(_STEP) or 0
    if step <= 0:  # ernie4-5-moe.cpp:26: GGML_ASSERT(n_moe_layer_step > 0)
        return f"the graph needs a positive {_STEP}"
    n_lead = md.get_int("ernie4_5-moe.leading_dense_block_count") or 0
    n_layer = min(md.get_int("ernie4_5-moe.block_count") or 0, 513)
    names = {t.name for t in model.tensors}

    def needed(il: int) -> tuple[list[str], list[str]]:
        if not _is_moe(il, n_lead, step):
            return ["ffn_gate", "ffn_up", "ffn_down"], []
        sh = SHARED if f"blk.{il}.ffn_up_shexp.weight" in names else []
        return [*ROUTER, *sh], EXPERTS

    no_gate = next(
        (il for il in range(n_layer) if _is_moe(il, n_lead, step) and f"blk.{il}.ffn_gate_exps.weight" not in names),
        None,
    )
    if no_gate is not None:  # optional to the loader (ernie4-5.cpp:52): up experts and SiLU alone, not built here
        return f"ernie4_5-moe graphs without gate experts (blk.{no_gate}.ffn_gate_exps.weight) are not simulated"
    return _moe_dense.unbuildable(model, needed)
