"""The ``falcon-h1`` decoder (src/models/falcon-h1.cpp): in every layer attention (RoPE, no output bias)
and a Mamba-2 mixer (``build_mamba2_layer``, :func:`~ggufx.analysis.memory.graph.models.ssm.mamba2_layer`)
read the same input norm, built twice; their sum joins the residual, then a SwiGLU FFN with optional
biases whose norm weight is ``blk.N.ffn_norm`` (no ``.weight`` suffix: llama.cpp's ``tn()`` without one)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _norm, _proj, _w
from ggufx.analysis.memory.graph.models._dense import _qkv, output, tied_head
from ggufx.analysis.memory.graph.models.qwen3next import attn_core
from ggufx.analysis.memory.graph.models.ssm import check_shapes, mamba2_dims, mamba2_layer, rs_inp
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """``build_ffn`` with SiLU and a parallel gate, each projection's bias when the file has one."""
    p = f"blk.{il}."
    up = _proj(c, g, f"ffn_up-{il}", p + "ffn_up", cur, il)
    gate = _proj(c, g, f"ffn_gate-{il}", p + "ffn_gate", cur, il)
    act = g.new(f"ffn_swiglu-{il}", "GLU", "F32", gate.ne, gate, up)
    return _proj(c, g, f"ffn_out-{il}", p + "ffn_down", act, il)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (falcon-h1.cpp:110-209)."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    rs = rs_inp(c, g)
    full = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        pre = f"blk.{il}."
        inp_sa = x
        cur = _norm(c, g, x, pre + "attn_norm.weight", il)
        q, k, v = _qkv(c, g, cur, il, reshape=True)
        q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
        k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
        attn = attn_core(c, g, q, k, v, il, full)
        attn_out = g.mul_mat(f"attn_out-{il}", _w(c, pre + "attn_output.weight", il), attn)  # wo_b unused
        cur = _norm(c, g, x, pre + "attn_norm.weight", il)
        ssm_out = mamba2_layer(c, g, cur, il, rs)
        cur = g.op(f"layer_out-{il}", "ADD", attn_out, ssm_out)
        inp_sa = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        if il == hp.n_layer - 1:  # (the rows of cur gathered too: a node nothing reads, not in the graph)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        cur = _norm(c, g, inp_sa, pre + "ffn_norm", il)
        cur = _ffn(c, g, cur, il)
        x = g.op(f"l_out-{il}", "ADD", cur, inp_sa)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """Why the falcon-h1 graph cannot be built from this file (None when it can): the Mamba-2
    dimensions and every tensor the graph reads in the shape falcon-h1.cpp:35-107 creates it (the
    convolution bias, optional to the loader, is added by the graph)."""
    d = mamba2_dims(model)
    if isinstance(d, str):
        return d
    hp = hparams(model)
    E, hd, n_ff = hp.n_embd, hp.head_k, hp.n_ff
    names = {t.name for t in model.tensors}
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,)}
    for il in range(hp.n_layer):
        nh, nkv = hp.n_head[il], hp.n_head_kv[il]
        if nh <= 0 or nkv <= 0 or nh % nkv or hd <= 0 or hd != hp.head_v:
            return f"the graph needs attention heads in layer {il} (head_count a multiple of head_count_kv)"
        p = f"blk.{il}."
        w = d.tensors(E, p + "ssm_norm.weight" in names)
        w |= {"attn_norm.weight": (E,), "ffn_norm": (E,), "attn_output.weight": (hd * nh, E)}
        if p + "attn_qkv.weight" in names:
            w |= {"attn_qkv.weight": (E, hd * (nh + 2 * nkv))}
        else:
            w |= {"attn_q.weight": (E, hd * nh), "attn_k.weight": (E, hd * nkv), "attn_v.weight": (E, hd * nkv)}
        w |= {"ffn_gate.weight": (E, n_ff), "ffn_up.weight": (E, n_ff), "ffn_down.weight": (n_ff, E)}
        shapes |= {p + n: s for n, s in w.items()}
    return check_shapes(model, shapes)
