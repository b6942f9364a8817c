"""``afmoe`` (src/models/afmoe.cpp: Arcee Trinity): the token embeddings scaled (MuP); sliding-window layers
(every fourth layer full) on their own cache and mask; Q/K/V, RMS norms of each Q and K head, RoPE but in
every fourth layer (``n_no_rope_layer_step``'s default 4); the attention without its output projection, times
the sigmoid of the gate projection ``attn_gate`` of the layer's normed input, then the output projection;
norms after attention and after the FFN beside the pre-norms; dense FFNs in the ``leading_dense_block_count``
first layers, then the routed experts (the file's gating, sigmoid when unset; the selection bias; the file's
weight normalization and scale) plus the shared experts where the file has them."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _rot, _w, _weight
from ggufx.analysis.memory.graph.models import _moe_dense, deepseek2, qwen3next
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _n, _qkv, output, tied_head
from ggufx.analysis.memory.graph.models._dense import _ffn as dense_ffn
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, GATINGS, ROUTER, SHARED, shared
from ggufx.analysis.memory.graph.models._plain import rot
from ggufx.analysis.memory.graph.models.deepseek2 import SIGMOID
from ggufx.model import GGUFModel

_D = Dense()
_NO_ROPE_STEP = 4  # llama_hparams::n_no_rope_layer_step's default (afmoe.cpp does not read it)


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """afmoe.cpp:144-196."""
    p = f"blk.{il}."
    q, k, v = _qkv(c, g, x, il, reshape=True)
    gate = g.mul_mat(f"attn_gate_proj-{il}", _w(c, p + "attn_gate.weight", il), x)
    q = _n(c, g, q, p + "attn_q_norm.weight", il, _D)
    k = _n(c, g, k, p + "attn_k_norm.weight", il, _D)
    if (il + 1) % _NO_ROPE_STEP != 0:
        assert c.pos is not None
        q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
        k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
    v = rot(g, v, inp.v_rot)  # a V view of a fused QKV made contiguous for a rotated cache
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, v_rot=None), True, _D)
    g.expand(cur)  # build_attn_mha expands the attention's output before the rotation
    cur = _rot(g, cur, inp.v_rot)
    cur = g.op(f"attn_gated-{il}", "MUL", cur, g.op(f"attn_gate_sig-{il}", "UNARY", gate))
    return g.mul_mat(f"attn_o_proj-{il}", _w(c, p + "attn_output.weight", il), cur)


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """afmoe.cpp:216-256: ``build_ffn`` in a leading dense layer, else ``build_moe_ffn`` plus the shared
    experts' ``build_ffn`` where the file has them."""
    mp = deepseek2.moe_params(c)
    if il < mp.n_lead:
        return dense_ffn(c, g, cur, il, _D)
    mp = replace(mp, n_used=qwen3next.n_expert_used(c))
    moe, r = deepseek2.moe_ffn(c, g, cur, il, mp, mp.gating or SIGMOID)
    if _weight(c, f"blk.{il}.ffn_up_shexp.weight", il) is None:
        return moe
    return g.op(f"ffn_out-{il}", "ADD", moe, shared(c, g, cur, il, r))


def build(c: _Ctx, g: _Graph) -> _T:
    """afmoe.cpp's ``graph::graph``."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    x = g.op("inp_embd_scaled", "SCALE", _inp_embd(c, g))
    c.pos = g.input("inp_pos", "I32", T)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, _D)
        cur = _attention(c, g, cur, il, swa if c.swa[il] else full)
        cur = _n(c, g, cur, b + "post_attention_norm.weight", il, _D)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _ffn(c, g, _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _D), il)
        cur = _n(c, g, cur, b + "post_ffw_norm.weight", il, _D)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """The gating (``build_moe_ffn`` knows softmax, sigmoid and softmax of the weights), and per layer the
    tensors afmoe.cpp's loader requires (the shared experts only with ``expert_shared_count``)."""
    md = model.metadata
    gating = md.get_int("afmoe.expert_gating_func") or 0
    if gating not in (0, *GATINGS):
        return f"the graph needs afmoe.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not {gating}"
    n_lead = md.get_int("afmoe.leading_dense_block_count") or 0
    n_shared = md.get_int("afmoe.expert_shared_count") or 0
    norms = ["attn_q_norm", "attn_k_norm", "attn_gate", "post_attention_norm", "post_ffw_norm"]

    def needed(il: int) -> tuple[list[str], list[str]]:
        if il < n_lead:
            return [*norms, "ffn_gate", "ffn_up", "ffn_down"], []
        return [*norms, *ROUTER, *(SHARED if n_shared > 0 else [])], EXPERTS

    names = {t.name for t in model.tensors}
    n_layer = md.get_int("afmoe.block_count") or 0
    missing = next(
        (
            f"blk.{il}.exp_probs_b.bias"
            for il in range(n_lead, min(n_layer, 513))
            if f"blk.{il}.exp_probs_b.bias" not in names
        ),
        None,
    )
    return _moe_dense.unbuildable(model, needed) or (
        f"the graph needs tensor {missing}, which the file lacks" if missing else None
    )
