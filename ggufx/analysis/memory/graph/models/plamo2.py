"""The ``plamo2`` hybrid (src/models/plamo2.cpp, PLaMo 2): Mamba layers (the layers with no KV heads:
``build_plamo2_mamba_layer``, a Mamba-2-like mixer without groups whose in-projection interleaves z and x
per head, with RMS norms of B, C and dt) and attention layers (one fused QKV projection, per-head Q/K
norms, RoPE); in every layer the mixer's and the FFN's output normed again before their residuals, and a
SwiGLU FFN of one up projection."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _norm, _w, attn_kv_strided
from ggufx.analysis.memory.graph.models._dense import output, tied_head
from ggufx.analysis.memory.graph.models.qwen35 import _rs
from ggufx.analysis.memory.graph.models.ssm import RsInp, check_shapes, rs_inp
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel


def _mamba(c: _Ctx, g: _Graph, cur: _T, il: int, rs: RsInp) -> _T:
    """``build_plamo2_mamba_layer`` (plamo2.cpp:240-426): the in-projection made ``(2 head_dim, n_heads)``
    per token, x made contiguous, the convolution over the cached columns (written back) and its SiLU, the
    projection to B, C and dt and their RMS norms, dt's projection and bias, the selective scan reading the
    states straight from the cache, the new state written back, the D skip, the SwiGLU with z and the
    out-projection."""
    hp, T = c.hp, c.n_tokens
    E, ns = hp.n_embd, c.sp.n_seq_max
    nst = T // ns
    p = f"blk.{il}."
    conv_w = _w(c, p + "ssm_conv1d.weight", il)
    d_conv, d_inner = conv_w.ne[0], conv_w.ne[1]
    n_heads = _w(c, p + "ssm_dt.bias", il).ne[0]
    hd = d_inner // n_heads
    x_w, dt_w = _w(c, p + "ssm_x.weight", il), _w(c, p + "ssm_dt.weight", il)
    dt_dim = dt_w.ne[0]
    d_state = (x_w.ne[1] - dt_dim) // 2
    buft = c.cache_buft[il]
    cache_r = g.leaf(f"cache_r_l{il}", "F32", (hp.n_embd_r, ns), buft=buft)
    cache_s = g.leaf(f"cache_s_l{il}", "F32", (hp.n_embd_s, ns), buft=buft)
    conv = g.reshape(_rs(c, g, cache_r, rs.s_copy, hp.n_embd_r), d_conv - 1, d_inner, ns)
    zx = g.mul_mat(f"mamba_in_proj-{il}", _w(c, p + "ssm_in.weight", il), g.reshape(cur, E, nst, ns))
    zx = g.permute(zx, 0, 2, 1, 3)
    zx = g.new(f"mamba_in_proj_out-{il}", "CONT", "F32", (2 * hd, n_heads, nst, ns), zx)
    x = g.view(zx, (hd, n_heads, nst, ns), (4, *zx.nb[1:]))
    x = g.new(f"mamba_x_split-{il}", "CONT", "F32", (d_inner, nst, ns), x)
    z = g.view(zx, (hd, n_heads, nst, ns), (4, *zx.nb[1:]))
    conv_x = g.new(f"conv_x-{il}", "CONCAT", "F32", (d_conv - 1 + nst, d_inner, ns), conv, g.permute(x, 1, 0, 2, 3))
    last = g.view(conv_x, (d_conv - 1, d_inner, ns), conv_x.nb[:3])
    dst = g.view(cache_r, ((d_conv - 1) * d_inner * ns,), None)
    g.cpy(last, dst)
    x = g.new(f"mamba_conv1d-{il}", "SSM_CONV", "F32", (d_inner, nst, ns), conv_x, conv_w)
    x = g.op(f"mamba_conv1d_silu-{il}", "UNARY", x)
    bcdt = g.mul_mat(f"mamba_bcdt_proj-{il}", x_w, x)
    nb = bcdt.nb[1:3]
    bs = _norm(c, g, g.view(bcdt, (d_state, nst, ns), (4, *nb)), p + "ssm_b_norm", il)
    cs = _norm(c, g, g.view(bcdt, (d_state, nst, ns), (4, *nb)), p + "ssm_c_norm", il)
    dt = _norm(c, g, g.view(bcdt, (dt_dim, nst, ns), (4, *nb)), p + "ssm_dt_norm", il)
    dt = g.op(f"mamba_dt_proj-{il}", "ADD", g.mul_mat(f"mamba_dt-{il}", dt_w, dt), _w(c, p + "ssm_dt.bias", il))
    a = g.reshape(_w(c, p + "ssm_a", il), 1, n_heads)
    x4 = g.view(x, (hd, n_heads, nst, ns), (4, 4 * hd, 4 * d_inner, 4 * d_inner * nst))
    bs = g.view(bs, (d_state, 1, nst, ns), (4, 4 * d_state, bs.nb[1], bs.nb[2]))
    cs = g.view(cs, (d_state, 1, nst, ns), (4, 4 * d_state, cs.nb[1], cs.nb[2]))
    # build_rs with get_ssm_rows (llama-graph.cpp:3587-3627, :3661-3675): s_copy's tail gathered
    size = hp.n_embd_s
    states = g.reshape(cache_s, size, cache_s.ne[1])
    zero = g.view(states, (size,), None)
    g.expand(g.view(zero, zero.ne, zero.nb, "SCALE"))
    every = g.new(f"{cache_s.name}_rows", "GET_ROWS", "F32", (size, rs.tail.ne[0]), states, rs.tail)
    ssm = g.reshape(states, d_state, hd, n_heads, states.ne[1])
    n_y = d_inner * nst * ns
    scan = g.new(
        f"mamba_ssm_scan-{il}", "SSM_SCAN", "F32", (n_y + d_state * d_inner * ns,), ssm, x4, dt, a, bs, cs, rs.main
    )
    g.expand(scan)
    extra = g.view(every, (size, rs.s_copy.ne[0] - ns), every.nb[:2])
    dst = g.view(cache_s, extra.ne, cache_s.nb[:2])
    g.cpy(extra, dst)
    dst = g.view(cache_s, (d_state * d_inner * ns,), None)
    cpy = g.view(dst, dst.ne, dst.nb, "CPY")
    cpy.src = [g.view(scan, (d_state * d_inner * ns,), None), dst]
    g.expand(cpy)
    y = g.view(scan, (hd, n_heads, nst, ns), (4, 4 * hd, 4 * d_inner, 4 * d_inner * nst))
    d = g.reshape(_w(c, p + "ssm_d", il), 1, n_heads)
    y = g.op(f"mamba_y_add_d-{il}", "ADD", y, g.op(f"mamba_x_d-{il}", "MUL", x4, d, type_="F32"))
    zc = g.new(f"mamba_z-{il}", "CONT", "F32", z.ne, z)
    y = g.new(f"mamba_y_swiglu_z-{il}", "GLU", "F32", zc.ne, zc, y)
    y = g.view(y, (d_inner, nst, ns), (4, y.nb[2], y.nb[3]))
    out = g.mul_mat(f"mamba_out_proj-{il}", _w(c, p + "ssm_out.weight", il), y)
    return g.reshape(out, E, T)


def _attention(c: _Ctx, g: _Graph, cur: _T, il: int, inp: _AttnInp) -> _T:
    """``build_plamo2_attn_layer`` (plamo2.cpp:194-238): Q, K and V views of the fused projection, the
    per-head RMS norms of Q and K, RoPE, attention (V copied contiguous where llama.cpp copies it:
    :func:`~ggufx.analysis.memory.graph.llm.attn_kv_strided`) and the output projection."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    p = f"blk.{il}."
    pos = c.pos
    assert pos is not None
    qkv = g.mul_mat(f"wqkv-{il}", _w(c, p + "attn_qkv.weight", il), cur)
    row = qkv.nb[1]
    q = g.view(qkv, (hd, nh, T), (4, 4 * hd, row))
    k = g.view(qkv, (hd, nkv, T), (4, 4 * hd, row))
    v = g.view(qkv, (hv, nkv, T), (4, 4 * hv, row))
    q = _norm(c, g, q, p + "attn_q_norm.weight", il)
    q = g.new(f"Qcur-{il}", "ROPE", "F32", q.ne, q, pos)
    k = _norm(c, g, k, p + "attn_k_norm.weight", il)
    k = g.new(f"Kcur-{il}", "ROPE", "F32", k.ne, k, pos)
    out = attn_kv_strided(c, g, q, k, v, il, inp, False)  # V a view of the fused projection
    # build_attn_mha's expansion (qwen3next.attn_core): before the Hadamard rotation back, if any
    g.expand(out.src[0].src[1].src[0] if inp.v_rot is not None else out)
    return g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), out)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (plamo2.cpp:110-192)."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    rs = rs_inp(c, g)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    last = hp.n_layer - 1
    for p, il in enumerate(c.layers):
        g.at(p)
        residual = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        if hp.n_head_kv[il] == 0:
            cur = _mamba(c, g, cur, il, rs)
        else:
            cur = _attention(c, g, cur, il, inp)
        if il == last:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            residual = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), residual, out_ids)
        cur = _norm(c, g, cur, f"blk.{il}.post_attention_norm", il)
        residual = g.op(f"attn_residual-{il}", "ADD", cur, residual)
        cur = _norm(c, g, residual, f"blk.{il}.ffn_norm.weight", il)
        up = g.mul_mat(f"ffn_up-{il}", _w(c, f"blk.{il}.ffn_up.weight", il), cur)
        cur = g.new(f"ffn_swiglu-{il}", "GLU", "F32", (up.ne[0] // 2, up.ne[1]), up)
        cur = g.mul_mat(f"ffn_out-{il}", _w(c, f"blk.{il}.ffn_down.weight", il), cur)
        cur = _norm(c, g, cur, f"blk.{il}.post_ffw_norm", il)
        x = g.op(f"ffn_residual-{il}", "ADD", cur, residual)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """Why the plamo2 graph cannot be built from this file (None when it can): the Mamba dimensions
    (plamo2.cpp:289 asserts no groups), the attention heads, and every tensor the graph reads in the shape
    plamo2.cpp:35-105 creates it."""
    md = model.metadata
    keys = ("ssm.conv_kernel", "ssm.inner_size", "ssm.state_size", "ssm.time_step_rank")
    d_conv, d_inner, d_state, n_heads = (md.get_int(f"plamo2.{k}") or 0 for k in keys)
    if d_conv < 2 or min(d_inner, d_state, n_heads) <= 0 or d_inner % n_heads:
        return "the graph needs plamo2.ssm.conv_kernel >= 2 and ssm.inner_size a multiple of ssm.time_step_rank"
    if md.get_int("plamo2.ssm.group_count"):
        return "the graph needs plamo2.ssm.group_count 0 (plamo2.cpp:289)"
    hp = hparams(model)
    E = hp.n_embd
    dt_dim = max(64, E // 16)
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,)}
    for il in range(hp.n_layer):
        nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
        w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,), "post_attention_norm": (E,), "post_ffw_norm": (E,)}
        w |= {"ffn_norm.weight": (E,), "ffn_up.weight": (E, 2 * hp.n_ff), "ffn_down.weight": (hp.n_ff, E)}
        if nkv == 0:
            w |= {"ssm_in.weight": (E, 2 * d_inner), "ssm_conv1d.weight": (d_conv, d_inner)}
            w |= {"ssm_x.weight": (d_inner, dt_dim + 2 * d_state), "ssm_dt.weight": (dt_dim, n_heads)}
            w |= {"ssm_dt.bias": (n_heads,), "ssm_a": (n_heads,), "ssm_d": (n_heads,), "ssm_out.weight": (d_inner, E)}
            w |= {"ssm_dt_norm": (dt_dim,), "ssm_b_norm": (d_state,), "ssm_c_norm": (d_state,)}
        elif nh <= 0 or nh % nkv:
            return f"layer {il} has {nh} query heads for {nkv} KV heads, which the graph cannot lay out"
        else:
            w |= {"attn_qkv.weight": (E, (nh + nkv) * hd + nkv * hv), "attn_q_norm.weight": (hd, nh)}
            w |= {"attn_k_norm.weight": (hd, nkv), "attn_output.weight": (nh * hv, E)}
        shapes |= {f"blk.{il}.{n}": ne for n, ne in w.items()}
    return check_shapes(model, shapes)
