"""``glm4moe`` (src/models/glm4-moe.cpp): GLM-4.5 and GLM-4.5-Air. Attention with Q/K/V biases, the optional
Q/K norms (GLM-4.5 355B), partial RoPE (same shapes as a full one), the post-attention norm before the FFN;
leading dense layers, then routed experts (sigmoid gating by default, with the ``exp_probs_b`` selection
bias, normalized and scaled weights: :func:`ggufx.analysis.memory.graph.models.deepseek2.moe_ffn`) plus
the shared expert; the NextN/MTP layer is left out of the graph as llama.cpp leaves it."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _attn_kv, _AttnInp, _Ctx, _inp_embd, _norm, _proj, _w, _weight
from ggufx.analysis.memory.graph.models import _moe_check
from ggufx.analysis.memory.graph.models._dense import output, tied_head
from ggufx.analysis.memory.graph.models.deepseek2 import SIGMOID, ffn, moe_ffn, moe_params
from ggufx.model import GGUFModel


def _attn(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """``build_qkv`` with separate projections and their biases (llama-graph.cpp:1684-1795), the optional
    Q/K norms, RoPE, :func:`_attn_kv`, then the output projection (glm4-moe.cpp:320-370)."""
    hp = c.hp
    T = c.n_tokens
    nh, nkv, hd = hp.n_head[il], hp.n_head_kv[il], hp.head_k
    pos = c.pos
    assert pos is not None
    p = f"blk.{il}."
    q = g.reshape(_proj(c, g, f"Qcur-{il}", p + "attn_q", x, il), hd, nh, T)
    k = g.reshape(_proj(c, g, f"Kcur-{il}", p + "attn_k", x, il), hd, nkv, T)
    v = g.reshape(_proj(c, g, f"Vcur-{il}", p + "attn_v", x, il), hd, nkv, T)
    if _weight(c, p + "attn_q_norm.weight", il) is not None:
        q = _norm(c, g, q, p + "attn_q_norm.weight", il)
    if _weight(c, p + "attn_k_norm.weight", il) is not None:
        k = _norm(c, g, k, p + "attn_k_norm.weight", il)
    q = g.new(f"Qcur-{il}", "ROPE", "F32", q.ne, q, pos)
    k = g.new(f"Kcur-{il}", "ROPE", "F32", k.ne, k, pos)
    cur = _attn_kv(c, g, q, k, v, il, inp, False)
    return g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), cur)


def build(c: _Ctx, g: _Graph) -> _T:
    """The transformer of ``glm4moe`` (glm4-moe.cpp ``graph::graph``), the trunk's layers only."""
    hp, sp = c.hp, c.sp
    mp = moe_params(c)
    gating = mp.gating or SIGMOID
    n_out, E = c.n_outputs, hp.n_embd
    last = hp.n_layer_main - 1
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", c.n_tokens)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        if il > last:  # the NextN/MTP block: built by graph_mtp only
            continue
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        cur = _attn(c, g, cur, il, inp)
        if il == last:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _norm(c, g, ffn_inp, f"blk.{il}.post_attention_norm.weight", il)
        if il < mp.n_lead:
            cur = ffn(c, g, cur, il)
        else:
            moe_out, routed = moe_ffn(c, g, cur, il, mp, gating)
            if _weight(c, f"blk.{il}.ffn_up_shexp.weight", il) is not None:
                cur = g.op(f"ffn_out-{il}", "ADD", moe_out, ffn(c, g, cur, il, "_shexp", routed))
            else:  # n_expert_shared 0: build_ffn of null weights is the SiLU of its input
                cur = g.op(f"ffn_out-{il}", "ADD", moe_out, g.op(f"ffn_silu-{il}", "UNARY", cur))
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """Why the glm4moe graph cannot be built from this file (None when it can): every trunk layer's
    tensors as glm4-moe.cpp creates them (separate Q/K/V projections, experts split into gate and up)."""
    md = model.metadata
    arch = model.architecture or ""
    n_layer = md.get_int(f"{arch}.block_count") or 0
    n_main = n_layer - (md.get_int(f"{arch}.nextn_predict_layers") or 0)
    n_lead = md.get_int(f"{arch}.leading_dense_block_count") or 0
    dims = {t.name: len(t.shape) for t in model.tensors}
    # glm4-moe.cpp:52-53 asserts the counts
    if why := _moe_check.expert_counts(model) or _moe_check.expert_groups(model) or _moe_check.needs_ends(dims):
        return why
    for il in range(min(n_main, 513)):
        p = f"blk.{il}."
        if p + "attn_qkv.weight" in dims:
            return "glm4moe graphs with a fused attn_qkv are not simulated"
        need = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "post_attention_norm"]
        three: list[str] = []
        if il < n_lead:
            need += ["ffn_gate", "ffn_up", "ffn_down"]
        else:
            need += ["ffn_gate_inp"]
            three += ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
            if p + "exp_probs_b.bias" not in dims:
                return f"the graph needs tensor {p}exp_probs_b.bias, which the file lacks"
            if (md.get_int(f"{arch}.expert_shared_count") or 0) > 0:
                need += ["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]
        for role in need + three:
            if p + role + ".weight" not in dims:
                return f"the graph needs tensor {p}{role}.weight, which the file lacks"
        for role in three:
            if dims[p + role + ".weight"] != 3:
                return f"the graph needs a three-dimensional tensor {p}{role}.weight"
    return None


__all__ = ["build", "unbuildable"]
