"""``dots1`` (src/models/dots1.cpp: dots.llm1): the llama-style attention with RMS norms of each Q and K
head before RoPE; dense FFNs in the ``leading_dense_block_count`` first layers, then the routed experts
(the file's gating function, the selection bias ``exp_probs_b`` where the file has it, the file's
``expert_weights_norm`` and ``expert_weights_scale``) plus the shared experts. ``bailingmoe2``
(bailingmoe2.cpp) builds the same graph over its trunk (its NextN layers left out, as llama.cpp leaves
them): :func:`build_trunk`."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd
from ggufx.analysis.memory.graph.models import _moe_dense, deepseek2, qwen3next
from ggufx.analysis.memory.graph.models._dense import Dense, _n, output, tied_head
from ggufx.analysis.memory.graph.models._dense import _ffn as dense_ffn
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, GATINGS, ROUTER, SHARED, shared
from ggufx.analysis.memory.graph.models._plain import attention
from ggufx.model import GGUFModel

ATTN = Dense(qk_norm="head")


def ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """dots1.cpp:104-134 (bailingmoe2.cpp:113-143): ``build_ffn`` in a leading dense layer; else
    ``build_moe_ffn`` with the file's gating, weight normalization and scale, plus the shared experts'
    ``build_ffn``."""
    mp = deepseek2.moe_params(c)
    if il < mp.n_lead:
        return dense_ffn(c, g, cur, il, ATTN)
    mp = replace(mp, n_used=qwen3next.n_expert_used(c))
    moe, r = deepseek2.moe_ffn(c, g, cur, il, mp, mp.gating)
    return g.op(f"ffn_out-{il}", "ADD", moe, shared(c, g, cur, il, r))


def build_trunk(c: _Ctx, g: _Graph) -> _T:
    """The transformer over the trunk's layers (``hparams.n_layer()``: the NextN blocks excluded): the
    attention norm, the attention, the residual (the last trunk layer's rows picked first), the FFN
    norm, :func:`ffn`, the residual; then the output norm and head."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    last = hp.n_layer_main - 1
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        if il > last:  # a NextN/MTP block: not in the graph
            continue
        g.at(p)
        b = f"blk.{il}."
        inp_sa = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, ATTN)
        cur = attention(c, g, cur, il, inp, ATTN)  # the V of a fused QKV made contiguous for a rotated cache
        if il == last:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _n(c, g, ffn_inp, b + "ffn_norm.weight", il, ATTN)
        x = g.op(f"l_out-{il}", "ADD", ffn(c, g, cur, il), ffn_inp)
    return output(c, g, x, tied_head(c))


def build(c: _Ctx, g: _Graph) -> _T:
    return build_trunk(c, g)


def unbuildable(model: GGUFModel) -> str | None:
    """The gating function (``build_moe_ffn`` aborts on none), the expert counts, and per trunk layer
    the dense FFN or the router, experts and shared experts (both files' loaders require them)."""
    arch = model.architecture or ""
    md = model.metadata
    gating = md.get_int(f"{arch}.expert_gating_func") or 0
    if gating not in GATINGS:
        return f"the graph needs {arch}.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not {gating}"
    n_lead = md.get_int(f"{arch}.leading_dense_block_count") or 0
    n_trunk = (md.get_int(f"{arch}.block_count") or 0) - (md.get_int(f"{arch}.nextn_predict_layers") or 0)

    def needed(il: int) -> tuple[list[str], list[str]]:
        if il >= n_trunk:  # a NextN block (TENSOR_SKIP): not in the graph
            return [], []
        if il < n_lead:
            return ["attn_q_norm", "attn_k_norm", "ffn_gate", "ffn_up", "ffn_down"], []
        return ["attn_q_norm", "attn_k_norm", *ROUTER, *SHARED], EXPERTS

    return _moe_dense.unbuildable(model, needed)
