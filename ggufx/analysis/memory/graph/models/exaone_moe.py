"""``exaone-moe`` (src/models/exaone-moe.cpp: K-EXAONE): sliding-window layers (three of every four) on their
own cache and mask, RMS norms of each Q and K head, RoPE only in the sliding-window layers (with the file's
rope factors); dense FFNs in the ``leading_dense_block_count`` first layers, then the routed experts (the
file's gating, the selection bias where the file has it, the file's weight normalization and scale) plus
the shared expert (:func:`.dots1.ffn`). The NextN blocks are not in the graph."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _AttnInp, _Ctx, _inp_embd, _proj, _rot, _w
from ggufx.analysis.memory.graph.models import _moe_dense, dots1
from ggufx.analysis.memory.graph.models._dense import (
    Dense,
    _attn_kv,
    _n,
    _qkv,
    decoder,
    output,
    rope_factors,
    rope_qk,
)
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, GATINGS, ROUTER, SHARED
from ggufx.analysis.memory.graph.models._plain import rot
from ggufx.model import GGUFModel

_D = Dense()


def swa_attention(
    c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp, rope: bool, proj: bool = True, qk_norm: bool = True
) -> _T:
    """Q/K/V (``build_qkv``), the RMS norms of each Q and K head (with ``qk_norm``), RoPE where ``rope``
    (with the file's rope factors), ``build_attn`` over a sliding-window model's caches (Q, K, V expanded
    in that order), then the output projection and its bias where the file has it (not with ``proj``
    false)."""
    p = f"blk.{il}."
    q, k, v = _qkv(c, g, x, il, reshape=True)
    if qk_norm:
        q = _n(c, g, q, p + "attn_q_norm.weight", il, _D)
        k = _n(c, g, k, p + "attn_k_norm.weight", il, _D)
    if rope:
        q, k = rope_qk(g, q, k, c.pos, rope_factors(c, il))
    v = rot(g, v, inp.v_rot)  # a V view of a fused QKV made contiguous for a rotated cache
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, v_rot=None), True, _D)
    g.expand(cur)  # build_attn_mha expands the attention's output before the rotation and projection
    cur = _rot(g, cur, inp.v_rot)
    return _proj(c, g, f"attn_out-{il}", p + "attn_output", cur, il) if proj else cur


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """exaone-moe.cpp's attention: RoPE in the sliding-window layers only."""
    return swa_attention(c, g, x, il, inp, rope=c.swa[il])


def build(c: _Ctx, g: _Graph) -> _T:
    """exaone-moe.cpp's ``graph::graph`` over the trunk (``hparams.n_layer()``: the NextN blocks excluded):
    :func:`~._dense.decoder` of its attention and dots1's FFN, the head ``output.weight``."""
    hp = c.hp
    x = decoder(c, g, _inp_embd(c, g), _attention, dots1.ffn, _D, iswa=True, n_layer=hp.n_layer_main)
    return output(c, g, x, _w(c, "output.weight", hp.n_layer))


def unbuildable(model: GGUFModel) -> str | None:
    """The gating function (``build_moe_ffn`` aborts on none), and per trunk layer the tensors the loader
    requires (the dense FFN in the leading layers, else the router, experts and shared expert)."""
    md = model.metadata
    gating = md.get_int("exaone-moe.expert_gating_func") or 0
    if gating not in GATINGS:
        return (
            f"the graph needs exaone-moe.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not {gating}"
        )
    n_lead = md.get_int("exaone-moe.leading_dense_block_count") or 0
    n_trunk = (md.get_int("exaone-moe.block_count") or 0) - (md.get_int("exaone-moe.nextn_predict_layers") or 0)

    def needed(il: int) -> tuple[list[str], list[str]]:
        if il >= n_trunk:  # a NextN block (TENSOR_SKIP): not in the graph
            return [], []
        if il < n_lead:
            return ["attn_q_norm", "attn_k_norm", "ffn_gate", "ffn_up", "ffn_down"], []
        return ["attn_q_norm", "attn_k_norm", *ROUTER, *SHARED], EXPERTS

    if "output.weight" not in {t.name for t in model.tensors}:
        return "the graph needs tensor output.weight, which the file lacks"
    return _moe_dense.unbuildable(model, needed)
