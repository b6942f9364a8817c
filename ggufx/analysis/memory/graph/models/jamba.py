"""The ``jamba`` hybrid (src/models/jamba.cpp): Mamba-1 layers (the layers with no KV heads:
``build_mamba_layer`` with dt's, B's and C's RMS norms and their weights,
:func:`~ggufx.analysis.memory.graph.models.ssm.mamba_layer_normed`) and attention layers without RoPE,
each followed by a dense SwiGLU FFN or, where the layer has a router, softmax-routed experts of the same
width (unnormalized weights)."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _norm, _weight
from ggufx.analysis.memory.graph.models._dense import output, tied_head
from ggufx.analysis.memory.graph.models.deepseek2 import SOFTMAX, ffn, moe_ffn, moe_params
from ggufx.analysis.memory.graph.models.granitehybrid import _attention
from ggufx.analysis.memory.graph.models.ssm import check_shapes, mamba_dims, mamba_layer_normed, rs_inp
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (jamba.cpp:99-198): per layer the RMS norm, Mamba or attention, the residual,
    the FFN norm, the dense FFN or the experts; the output rows are picked in the last layer."""
    hp, sp = c.hp, c.sp
    n_out, E = c.n_outputs, hp.n_embd
    # build_moe_ffn(..., norm_w false, expert_weights_scale (not read by jamba: 0), softmax): jamba.cpp:160-171
    mp = replace(moe_params(c), n_lead=0, gating=SOFTMAX, norm_w=False, scale=0.0, n_groups=0)
    x = _inp_embd(c, g)
    rs = rs_inp(c, g)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    last = hp.n_layer - 1
    for p, il in enumerate(c.layers):
        g.at(p)
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        if hp.n_head_kv[il] == 0:
            cur = mamba_layer_normed(c, g, cur, il, rs)
        else:
            cur = _attention(c, g, cur, il, inp, False)  # no RoPE (jamba.cpp:127-131)
        inp_sa = x
        if il == last:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", inp_sa, cur)
        cur = _norm(c, g, ffn_inp, f"blk.{il}.ffn_norm.weight", il)
        if _weight(c, f"blk.{il}.ffn_gate_inp.weight", il) is None:
            cur = ffn(c, g, cur, il)
        else:
            cur, _ = moe_ffn(c, g, cur, il, mp, SOFTMAX)
        x = g.op(f"l_out-{il}", "ADD", ffn_inp, cur)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """Why the jamba graph cannot be built from this file (None when it can): the Mamba dimensions, the
    attention heads, the expert counts, and every tensor the graph reads in the shape jamba.cpp:24-96
    creates it."""
    d = mamba_dims(model)
    if isinstance(d, str):
        return d
    md = model.metadata
    hp = hparams(model)
    E = hp.n_embd
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    n_exp, n_used = (md.get_int(f"jamba.{k}") or 0 for k in ("expert_count", "expert_used_count"))
    moe = any(f"blk.{il}.ffn_gate_inp.weight" in tensors for il in range(hp.n_layer))
    if moe and not 0 < n_used <= n_exp <= 1024:
        return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,)}
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        nh, nkv = hp.n_head[il], hp.n_head_kv[il]
        w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,), "ffn_norm.weight": (E,)}
        if nkv == 0:
            w |= d.tensors(E)
            w |= {"ssm_dt_norm.weight": (d.dt_rank,), "ssm_b_norm.weight": (d.d_state,)}
            w |= {"ssm_c_norm.weight": (d.d_state,)}
        elif nh <= 0 or nh % nkv or hp.head_k * nh != E:
            return f"the graph needs attention heads of embedding_length / head_count in layer {il}"
        elif p + "attn_qkv.weight" in tensors:
            w |= {"attn_qkv.weight": (E, E + 2 * hp.head_v * nkv), "attn_output.weight": (E, E)}
        else:
            w |= {"attn_q.weight": (E, E), "attn_k.weight": (E, hp.head_k * nkv), "attn_v.weight": (E, hp.head_v * nkv)}
            w |= {"attn_output.weight": (E, E)}
        if p + "ffn_gate_inp.weight" in tensors:
            w |= {"ffn_gate_inp.weight": (E, n_exp), "ffn_gate_exps.weight": (E, hp.n_ff, n_exp)}
            w |= {"ffn_up_exps.weight": (E, hp.n_ff, n_exp), "ffn_down_exps.weight": (hp.n_ff, E, n_exp)}
        else:
            w |= {"ffn_gate.weight": (E, hp.n_ff), "ffn_up.weight": (E, hp.n_ff), "ffn_down.weight": (hp.n_ff, E)}
        shapes |= {p + n: ne for n, ne in w.items()}
    return check_shapes(model, shapes)
