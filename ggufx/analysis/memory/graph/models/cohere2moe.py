"""``cohere2moe`` (src/models/cohere2moe.cpp): cohere2's parallel layer (attention and FFN on the one input
norm, both added to the residual) with layer norm, or RMS norm when the file has its epsilon; sliding-window
layers on their own cache and mask (the pattern array, else every fourth layer full from the first), RoPE in
the sliding-window layers and in the ``leading_dense_block_count`` first layers, which have a dense FFN; the
other layers' experts (the file's gating, sigmoid when unset; the file's weight normalization and scale)
plus, where the file has it, the shared expert averaged with them (their sum halved). The last layer runs
on every token (``embeddings_nextn_masked`` is off): the output norm's rows are picked, an output itself
(``t_h_nextn``); the logits scaled by ``logit_scale``. The MTP blocks are not in the graph."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _weight
from ggufx.analysis.memory.graph.models import deepseek2, qwen3next
from ggufx.analysis.memory.graph.models._dense import Dense, _n, nextn_output
from ggufx.analysis.memory.graph.models._dense import _ffn as dense_ffn
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, GATINGS, ROUTER, shared
from ggufx.analysis.memory.graph.models.deepseek2 import SIGMOID
from ggufx.analysis.memory.graph.models.exaone_moe import swa_attention
from ggufx.analysis.memory.graph.models.qwen3next import file_value
from ggufx.model import GGUFModel


def _norm_op(c: _Ctx) -> str:
    """cohere2moe.cpp's ``load_arch_hparams``: RMS norm when the file has ``layer_norm_rms_epsilon`` (and
    it is not 0), else layer norm."""
    eps = file_value(c, "cohere2moe.attention.layer_norm_rms_epsilon")
    return "RMS_NORM" if isinstance(eps, (int, float)) and eps != 0 else "NORM"


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int, d: Dense) -> _T:
    """cohere2moe.cpp:217-255."""
    if _weight(c, f"blk.{il}.ffn_gate_inp.weight", il) is None:
        return dense_ffn(c, g, cur, il, d)
    mp = deepseek2.moe_params(c)
    mp = replace(mp, n_used=qwen3next.n_expert_used(c))
    moe, r = deepseek2.moe_ffn(c, g, cur, il, mp, mp.gating or SIGMOID)
    if _weight(c, f"blk.{il}.ffn_up_shexp.weight", il) is None:
        return moe
    return g.op(f"ffn_out-{il}", "SCALE", g.op(f"ffn_out-{il}", "ADD", moe, shared(c, g, cur, il, r)))


def build(c: _Ctx, g: _Graph) -> _T:
    """cohere2moe.cpp's ``graph::graph`` over the trunk."""
    hp, sp = c.hp, c.sp
    T, n_out = c.n_tokens, c.n_outputs
    d = Dense(norm=_norm_op(c))
    last = hp.n_layer_main - 1
    n_lead = deepseek2.moe_params(c).n_lead
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        if il > last:  # an MTP block: not in the graph
            continue
        g.at(pos)
        normed = _n(c, g, x, f"blk.{il}.attn_norm.weight", il, d)
        rope = c.swa[il] or il < n_lead
        attn = swa_attention(c, g, normed, il, swa if c.swa[il] else full, rope=rope, qk_norm=False)
        cur = _ffn(c, g, normed, il, d)
        cur = g.op(f"ffn_out-{il}", "ADD", cur, x)
        x = g.op(f"l_out-{il}", "ADD", cur, attn)
    return nextn_output(c, g, x, out_ids, d.norm, scale=bool(file_value(c, "cohere2moe.logit_scale")))


def unbuildable(model: GGUFModel) -> str | None:
    """The gating, and per trunk layer the tensors cohere2moe.cpp's loader requires (the dense FFN in the
    leading layers, else the router and the experts; separate gate and up experts)."""
    md = model.metadata
    gating = md.get_int("cohere2moe.expert_gating_func") or 0
    if gating not in (0, *GATINGS):
        return (
            f"the graph needs cohere2moe.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not {gating}"
        )
    n_exp = md.get_int("cohere2moe.expert_count") or 0
    if not 0 < (md.get_int("cohere2moe.expert_used_count") or 0) <= n_exp <= 1024:  # the loader's checks
        return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
    n_lead = md.get_int("cohere2moe.leading_dense_block_count") or 0
    n_trunk = (md.get_int("cohere2moe.block_count") or 0) - (md.get_int("cohere2moe.nextn_predict_layers") or 0)
    dims = {t.name: len(t.shape) for t in model.tensors}
    needed = ["token_embd.weight", "output_norm.weight"]
    for il in range(min(n_trunk, 513)):
        p = f"blk.{il}."
        if p + "ffn_gate_up_exps.weight" in dims:
            return "cohere2moe graphs with merged gate_up experts are not simulated"
        roles = ["attn_norm", "attn_output"]
        roles += [] if p + "attn_qkv.weight" in dims else ["attn_q", "attn_k", "attn_v"]
        roles += ["ffn_gate", "ffn_up", "ffn_down"] if il < n_lead else [*ROUTER, *EXPERTS]
        needed += [p + r + ".weight" for r in roles]
    missing = next((n for n in needed if n not in dims), None)
    if missing:
        return f"the graph needs tensor {missing}, which the file lacks"
    odd = next((n for n in needed if "_exps." in n and dims[n] != 3), None)
    return f"the graph needs a three-dimensional tensor {odd}" if odd else None
