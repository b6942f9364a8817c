"""``exaone-moe`` (src/models/exaone-moe.cpp: K-EXAONE): sliding-window layers (three of every four) on their
own cache and mask, RMS norms of each Q and K head, RoPE only in the sliding-window layers (with the file's
rope factors); dense FFNs in the ``leading_dense_block_count`` first layers, then the routed experts (the
file's gating, the selection bias where the file has it, the file's weight normalization and scale) plus
the shared expert (:func:`.dots1.ffn`). The NextN blocks are not in the graph."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _proj, _rot, _w, _weight
from ggufx.analysis.memory.graph.models import _moe_dense, dots1
from ggufx.analysis.memory.graph.models._dense import _ROPE_FACTORS, Dense, _attn_kv, _n, _qkv
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
        assert c.pos is not None
        freqs = next((f for n in _ROPE_FACTORS if (f := _weight(c, n, il)) is not None), None)
        src = [c.pos, *([freqs] if freqs else [])]
        q = g.new(q.name, "ROPE", "F32", q.ne, q, *src)
        k = g.new(k.name, "ROPE", "F32", k.ne, k, *src)
    v = rot(g, v, inp.v_rot)  # a V view of a fused QKV made contiguous for a rotated cache
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, v_rot=None), True, _D)
    g.expand(cur)  # build_attn_mha expands the attention's output before the rotation and projection
    cur = _rot(g, cur, inp.v_rot)
    return _proj(c, g, f"attn_out-{il}", p + "attn_output", cur, il) if proj else cur


def build(c: _Ctx, g: _Graph) -> _T:
    """exaone-moe.cpp's ``graph::graph`` over the trunk (``hparams.n_layer()``: the NextN blocks excluded)."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    last = hp.n_layer_main - 1
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        if il > last:  # a NextN block: not in the graph
            continue
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, _D)
        cur = swa_attention(c, g, cur, il, swa if c.swa[il] else full, rope=c.swa[il])
        if il == last:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = dots1.ffn(c, g, _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _D), il)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    logits = g.mul_mat("result_output", _w(c, "output.weight", hp.n_layer), cur)
    logits.flags |= OUTPUT
    return logits


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
