"""The ``lfm2`` and ``lfm2moe`` hybrids (src/models/lfm2.cpp; lfm2moe.cpp builds the same graph):
gated short-convolution layers (the layers with no KV heads) that read and write a cached convolution
state, attention layers with Q/K norms, and in every layer a dense FFN, or from
``leading_dense_block_count`` on (lfm2moe) a mixture of experts with sigmoid gating and a selection
bias. The output norm is ``token_embd_norm``."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import (
    _attn_inp,
    _AttnInp,
    _Ctx,
    _inp_embd,
    _norm,
    _proj,
    _w,
    _weight,
)
from ggufx.analysis.memory.graph.models._dense import tied_head
from ggufx.analysis.memory.graph.models.moe import moe_ffn
from ggufx.analysis.memory.graph.models.qwen3next import attn_core, n_expert_used
from ggufx.analysis.memory.graph.models.qwen35 import _copy_into, _rs
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

OUTPUT_NORM = "token_embd_norm.weight"  # LLM_TENSOR_OUTPUT_NORM_LFM2 (llama-arch.cpp)


def _shortconv(c: _Ctx, g: _Graph, x: _T, il: int, s_copy: _T) -> _T:
    """``build_shortconv_block`` (lfm2.cpp:159-234): the in-projection split in three (B, C, X), the
    convolution over the cached ``L_cache - 1`` columns and ``B x X``, the last columns written back,
    ``C x`` the convolution, the out-projection."""
    hp, T = c.hp, c.n_tokens
    ns = c.sp.n_seq_max
    nst = T // ns
    E = hp.n_embd
    p = f"blk.{il}."
    kernel = _w(c, p + "shortconv.conv.weight", il)
    d_conv = kernel.ne[0] - 1
    cache_r = g.leaf(f"cache_r_l{il}", "F32", (hp.n_embd_r, ns), buft=c.cache_buft[il])
    cur = g.reshape(x, E, nst, ns)
    bcx = g.mul_mat(f"in_proj-{il}", _w(c, p + "shortconv.in_proj.weight", il), cur)
    chunk = bcx.ne[0] // 3
    b, cc, xx = (g.view(bcx, (chunk, nst, ns), bcx.nb[:3]) for _ in range(3))
    bx = g.permute(g.op(f"bx-{il}", "MUL", b, xx, type_="F32"), 1, 0, 2, 3)
    conv = g.reshape(_rs(c, g, cache_r, s_copy, hp.n_embd_r), d_conv, E, ns)
    bx = g.new(f"conv_input-{il}", "CONCAT", "F32", (d_conv + nst, E, ns), conv, bx)
    last = g.view(bx, (d_conv, E, ns), bx.nb[:3])
    _copy_into(g, last, cache_r, ns)
    out = g.new(f"conv-{il}", "SSM_CONV", "F32", (E, nst, ns), bx, kernel)
    y = g.new(f"y-{il}", "MUL", "F32", cc.ne, cc, out)
    y = g.mul_mat(f"out_proj-{il}", _w(c, p + "shortconv.out_proj.weight", il), y)
    return g.reshape(y, E, T)


def _attn_block(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """``build_attn_block`` (lfm2.cpp:128-157): Q, K, V (separate or one fused projection), Q/K norms,
    RoPE, attention and the output projection."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd = hp.n_head[il], hp.n_head_kv[il], hp.head_k
    p = f"blk.{il}."
    pos = c.pos
    assert pos is not None
    wqkv = _weight(c, p + "attn_qkv.weight", il)
    if wqkv is not None:
        qkv = g.mul_mat(f"wqkv-{il}", wqkv, x)
        row = qkv.nb[1]
        q = g.view(qkv, (hd, nh, T), (4, 4 * hd, row))
        k = g.view(qkv, (hd, nkv, T), (4, 4 * hd, row))
        v = g.view(qkv, (hp.head_v, nkv, T), (4, 4 * hp.head_v, row))
    else:
        q = g.reshape(_proj(c, g, f"Qcur-{il}", p + "attn_q", x, il), hd, nh, T)
        k = g.reshape(_proj(c, g, f"Kcur-{il}", p + "attn_k", x, il), hd, nkv, T)
        v = g.reshape(_proj(c, g, f"Vcur-{il}", p + "attn_v", x, il), hp.head_v, nkv, T)
    q = _norm(c, g, q, p + "attn_q_norm.weight", il)
    k = _norm(c, g, k, p + "attn_k_norm.weight", il)
    q = g.new(q.name, "ROPE", "F32", q.ne, q, pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, pos)
    cur = attn_core(c, g, q, k, v, il, inp)
    return _proj(c, g, f"attn_out-{il}", p + "attn_output", cur, il)


def _dense(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """``build_ffn`` with SiLU and a parallel gate."""
    gate = _proj(c, g, f"ffn_gate-{il}", f"blk.{il}.ffn_gate", cur, il)
    up = _proj(c, g, f"ffn_up-{il}", f"blk.{il}.ffn_up", cur, il)
    act = g.new(f"ffn_glu-{il}", "GLU", "F32", gate.ne, gate, up)
    return _proj(c, g, f"ffn_out-{il}", f"blk.{il}.ffn_down", act, il)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (lfm2.cpp:236-295): per layer the operator norm, a short convolution or
    attention, the residual, the FFN norm, a dense or expert FFN, the residual; the last layer keeps
    the output rows only; then the output norm and the (tied) output projection."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    moe = any(_weight(c, f"blk.{il}.ffn_gate_inp.weight", il) is not None for il in range(hp.n_layer))
    n_used = n_expert_used(c) if moe else 0
    x = _inp_embd(c, g)
    s_copy = g.input("rs_s_copy", "I32", sp.n_seq_max)  # build_inp_mem_hybrid: the recurrent input first
    full = _attn_inp(c, g, sp.n_kv)
    c.pos = g.input("inp_pos", "I32", T)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        prev = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        if hp.n_head_kv[il] == 0:
            cur = _shortconv(c, g, cur, il, s_copy)
        else:
            cur = _attn_block(c, g, cur, il, full)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            prev = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), prev, out_ids)
        cur = g.op(f"ffn_inp-{il}", "ADD", prev, cur)
        ffn = _norm(c, g, cur, f"blk.{il}.ffn_norm.weight", il)
        if _weight(c, f"blk.{il}.ffn_gate_inp.weight", il) is not None:
            ffn = moe_ffn(c, g, ffn, il, n_used, sigmoid=True, probs_b=_w(c, f"blk.{il}.exp_probs_b.bias", il))
        else:
            ffn = _dense(c, g, ffn, il)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, OUTPUT_NORM, hp.n_layer))
    cur.flags |= OUTPUT
    out_w = tied_head(c)
    logits = g.mul_mat("result_output", out_w, cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Why the lfm2/lfm2moe graph cannot be built from this file (None when it can): a sliding window
    (the hybrid-iswa graph is not simulated), the experts, and every tensor the graph reads in the
    shape lfm2.cpp:33-86 creates it."""
    arch = model.architecture or ""
    md = model.metadata
    if arch == "lfm2" and (md.get_int(f"{arch}.attention.sliding_window") or 0) > 0:  # lfm2moe reads none
        return f"{arch} graphs with a sliding window are not simulated"
    hp = hparams(model)
    E, hd = hp.n_embd, hp.head_k
    l_cache = md.get_int(f"{arch}.shortconv.l_cache") or 0
    if l_cache < 2:
        return f"the graph needs {arch}.shortconv.l_cache >= 2"
    n_expert = md.get_int(f"{arch}.expert_count") or 0
    n_used = md.get_int(f"{arch}.expert_used_count") or 0
    n_dense = hp.n_layer if arch == "lfm2" else (md.get_int(f"{arch}.leading_dense_block_count") or 0)
    if n_dense < hp.n_layer:
        if not 0 < n_used <= n_expert <= 1024:
            return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
        gating = md.get_int(f"{arch}.expert_gating_func")
        if gating != 2:  # LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID
            return f"{arch} graphs with expert_gating_func {gating} are not simulated (sigmoid, 2, is)"
    if "dense_2_out.weight" in {t.name for t in model.tensors}:
        return f"{arch} graphs with tensor dense_2_out.weight are not simulated"
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    if len(tensors.get("token_embd.weight", ())) != 2 or tensors["token_embd.weight"][0] != E:
        return f"the graph needs a two-dimensional tensor token_embd.weight of {E} columns"
    shapes: dict[str, tuple[int, ...]] = {OUTPUT_NORM: (E,)}
    for il in range(hp.n_layer):
        nh, nkv = hp.n_head[il], hp.n_head_kv[il]
        w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,), "ffn_norm.weight": (E,)}
        p = f"blk.{il}."
        if nkv == 0:
            w |= {"shortconv.conv.weight": (l_cache, E), "shortconv.in_proj.weight": (E, 3 * E)}
            w |= {"shortconv.out_proj.weight": (E, E)}
        elif nh <= 0 or nh % nkv or hd <= 0 or hd != hp.head_v:
            return f"the graph needs attention heads in layer {il} (head_count a multiple of head_count_kv)"
        else:
            if p + "attn_qkv.weight" in tensors:
                w |= {"attn_qkv.weight": (E, E + 2 * hd * nkv)}
            else:
                w |= {"attn_q.weight": (E, E), "attn_k.weight": (E, hd * nkv), "attn_v.weight": (E, hd * nkv)}
            w |= {"attn_output.weight": (E, E), "attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,)}
        if il >= n_dense:
            up = tensors.get(p + "ffn_up_exps.weight", ())
            if len(up) != 3:
                return f"the graph needs a three-dimensional tensor {p}ffn_up_exps.weight"
            f = up[1]
            w |= {"ffn_gate_inp.weight": (E, n_expert), "ffn_up_exps.weight": (E, f, n_expert)}
            w |= {"ffn_gate_exps.weight": (E, f, n_expert), "ffn_down_exps.weight": (f, E, n_expert)}
            w |= {"exp_probs_b.bias": (n_expert,)}
        else:
            w |= {"ffn_gate.weight": (E, hp.n_ff), "ffn_up.weight": (E, hp.n_ff), "ffn_down.weight": (hp.n_ff, E)}
        shapes |= {p + n: shape for n, shape in w.items()}
    for name, shape in shapes.items():
        if name not in tensors:
            return f"the graph needs tensor {name}, which the file lacks"
        if tensors[name] != shape:
            return f"the graph needs tensor {name} of shape {list(shape)}, not {list(tensors[name])}"
    return None
