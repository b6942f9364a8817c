"""``rwkv6`` and ``rwkv6qwen2`` (src/models/rwkv6.cpp, rwkv6qwen2.cpp over ``llm_build_rwkv6_base``,
rwkv6-base.cpp): RWKV-6's data-dependent token shift (the five interpolations from one low-rank
projection), receptance, key, value, gate and decay, and the fused ``RWKV_WKV6`` node with the per-head
bonus ``time_mix_first`` and the group norm; without ``time_mix_first`` (QRWKV-6, rwkv6qwen2) the fused
``GATED_LINEAR_ATTN`` node, the sigmoid gate and grouped KV heads. The layer loop is
:func:`~ggufx.analysis.memory.graph.models.rwkv7.build_rwkv`'s: RWKV-6's channel mix (a sigmoid receptance)
or Qwen 2.5's SwiGLU FFN."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _proj, _w, _weight
from ggufx.analysis.memory.graph.models.qwen3next import file_value
from ggufx.analysis.memory.graph.models.rwkv7 import build_rwkv, rwkv_head, wkv_output, wkv_state
from ggufx.analysis.memory.graph.models.ssm import check_shapes
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

LERPS = ("w", "k", "v", "r", "g")  # the order of the five interpolations (rwkv6-base.cpp:64-84)


def _time_mix6(c: _Ctx, g: _Graph, cur: _T, x_prev: _T, il: int, s_copy: _T) -> _T:
    """``build_rwkv6_time_mix`` (rwkv6-base.cpp:30-164)."""
    hp, T = c.hp, c.n_tokens
    E, ns = hp.n_embd, c.sp.n_seq_max
    nst = T // ns
    hs = hp.n_embd_s // E  # wkv.head_size
    nh = E // hs
    nkv = hp.n_head_kv[il]
    p = f"blk.{il}.time_mix_"
    qrwkv = _weight(c, p + "first.weight", il) is None
    sx = g.reshape(g.op(f"sx-{il}", "SUB", x_prev, cur), E, T)
    cur = g.reshape(cur, E, T)
    xxx = g.op(f"xxx-{il}", "ADD", g.op(f"xxx-{il}", "MUL", sx, _w(c, p + "lerp_x.weight", il)), cur)
    w1 = _w(c, p + "w1.weight", il)
    xxx = g.op(f"xxx_tanh-{il}", "UNARY", g.mul_mat(f"xxx_w1-{il}", w1, xxx))
    xxx = g.permute(g.reshape(xxx, w1.ne[1] // 5, 1, 5, T), 0, 1, 3, 2)
    xxx = g.new(f"xxx_cont-{il}", "CONT", "F32", xxx.ne, xxx)
    w2 = _w(c, p + "w2.weight", il)
    xxx = g.mul_mat(f"xxx_w2-{il}", g.reshape(w2, w2.ne[0], w2.ne[1], 1, 5), xxx)
    fused = _weight(c, p + "lerp_fused.weight", il)
    if fused is not None:
        sx3, cur3 = g.reshape(sx, E, 1, T), g.reshape(cur, E, 1, T)
        xxx = g.op(f"xxx_mix-{il}", "MUL", g.op(f"xxx_lerp-{il}", "ADD", xxx, fused), sx3)
        xxx = g.op(f"xxx_mix-{il}", "ADD", xxx, cur3)
        xw, xk, xv, xr, xg = (g.view(xxx, (E, T), xxx.nb[:2]) for _ in LERPS)
    else:
        views = [g.view(xxx, (E, T), xxx.nb[:2]) for _ in LERPS]
        xw, xk, xv, xr, xg = (
            g.op(
                f"x{n}-{il}",
                "ADD",
                g.op(f"x{n}-{il}", "MUL", g.op(f"x{n}-{il}", "ADD", x, _w(c, f"{p}lerp_{n}.weight", il)), sx),
                cur,
            )
            for n, x in zip(LERPS, views, strict=True)
        )
    r = _proj(c, g, f"r-{il}", p + "receptance", xr, il)
    k = _proj(c, g, f"k-{il}", p + "key", xk, il)
    v = _proj(c, g, f"v-{il}", p + "value", xv, il)
    gate = g.op(f"g_act-{il}", "UNARY", g.mul_mat(f"g-{il}", _w(c, p + "gate.weight", il), xg))
    if nkv not in (0, nh):
        k = g.new(f"k_rep-{il}", "REPEAT", "F32", (hs, nh // nkv, nkv, T), g.reshape(k, hs, 1, nkv, T))
        v = g.new(f"v_rep-{il}", "REPEAT", "F32", (hs, nh // nkv, nkv, T), g.reshape(v, hs, 1, nkv, T))
    k, v, r = (g.reshape(t, hs, nh, T) for t in (k, v, r))
    w = g.mul_mat(f"w1-{il}", _w(c, p + "decay_w1.weight", il), xw)
    w = g.mul_mat(f"w2-{il}", _w(c, p + "decay_w2.weight", il), g.op(f"w_tanh-{il}", "UNARY", w))
    w = g.op(f"w-{il}", "ADD", w, _w(c, p + "decay.weight", il))
    w = g.op(f"w_exp-{il}", "UNARY", g.op(f"w_neg-{il}", "UNARY", g.op(f"w_exp-{il}", "UNARY", w)))
    w = g.reshape(w, hs, nh, T)
    if qrwkv:
        k = g.op(f"k_decayed-{il}", "SUB", k, g.op(f"k_w-{il}", "MUL", k, w))
    cache_s, state = wkv_state(c, g, il, s_copy)
    if qrwkv:
        wkv = g.new(f"gla-{il}", "GATED_LINEAR_ATTN", "F32", (E, T + hs * ns), k, v, r, w, state)
    else:
        first = _w(c, p + "first.weight", il)
        wkv = g.new(f"wkv6-{il}", "RWKV_WKV6", "F32", (E, T + hs * ns), k, v, r, first, w, state)
    out = wkv_output(c, g, wkv, cache_s, il, not qrwkv)
    out = g.op(f"wkv_gated-{il}", "MUL", out, gate)
    out = g.mul_mat(f"time_mix_out-{il}", _w(c, p + "output.weight", il), out)
    return g.reshape(out, E, nst, ns)


def _channel_mix6(c: _Ctx, g: _Graph, cur: _T, x_prev: _T, il: int) -> _T:
    """``build_rwkv6_channel_mix`` (rwkv6-base.cpp:9-28): the key's and receptance's token-shift
    interpolations, the key's ReLU squared, the value times the receptance's sigmoid."""
    p = f"blk.{il}.channel_mix_"
    sx = g.op(f"cm_sx-{il}", "SUB", x_prev, cur)
    xk = g.op(f"cm_xk-{il}", "ADD", g.op(f"cm_xk-{il}", "MUL", sx, _w(c, p + "lerp_k.weight", il)), cur)
    xr = g.op(f"cm_xr-{il}", "ADD", g.op(f"cm_xr-{il}", "MUL", sx, _w(c, p + "lerp_r.weight", il)), cur)
    r = g.op(f"cm_r-{il}", "UNARY", g.mul_mat(f"cm_r-{il}", _w(c, p + "receptance.weight", il), xr))
    k = g.mul_mat(f"cm_k-{il}", _w(c, p + "key.weight", il), xk)
    k = g.op(f"cm_k_sqr-{il}", "SQR", g.op(f"cm_k_relu-{il}", "UNARY", k))
    return g.op(f"cm_out-{il}", "MUL", r, g.mul_mat(f"cm_v-{il}", _w(c, p + "value.weight", il), k))


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (rwkv6.cpp:94-185, rwkv6qwen2.cpp:87-167): :func:`build_rwkv` with the RWKV-6
    time mix and RWKV-6's channel mix (the residual scaled every ``rescale_every_n_layers``) or the FFN."""
    if c.hp.arch == "rwkv6qwen2":
        return build_rwkv(c, g, _time_mix6, None)
    rescale = file_value(c, "rwkv6.rescale_every_n_layers")
    return build_rwkv(c, g, _time_mix6, _channel_mix6, rescale if isinstance(rescale, int) else 0)


def unbuildable(model: GGUFModel) -> str | None:
    """Why the rwkv6 / rwkv6qwen2 graph cannot be built from this file (None when it can): the head size,
    token shifts (rwkv6.cpp:95 asserts 2, rwkv6qwen2.cpp:88 one), grouped KV heads, the interpolations
    (fused or all five), and every tensor the graph reads in the shape rwkv6.cpp:26-87 /
    rwkv6qwen2.cpp:26-80 creates it."""
    a = model.architecture or ""
    md = model.metadata
    hp = hparams(model)
    E = hp.n_embd
    qwen = a == "rwkv6qwen2"
    head = rwkv_head(model, qwen)
    if isinstance(head, str):
        return head
    hs, shapes = head
    mix, decay = (md.get_int(f"{a}.{k}") or 0 for k in ("time_mix_extra_dim", "time_decay_extra_dim"))
    if mix <= 0 or decay <= 0:
        return f"the graph needs positive {a}.time_mix_extra_dim and {a}.time_decay_extra_dim"
    nh = E // hs
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        nkv = hp.n_head_kv[il]
        if nkv not in (0, nh) and (nkv < 0 or nh % nkv):
            return f"the graph needs head_count_kv dividing the {nh} heads in layer {il}"
        kv = E if nkv in (0, nh) else nkv * hs
        w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,), "time_mix_lerp_x.weight": (E, 1, 1)}
        w |= {"time_mix_w1.weight": (E, mix * 5), "time_mix_w2.weight": (mix, E, 5), "time_mix_decay.weight": (E,)}
        w |= {"time_mix_decay_w1.weight": (E, decay), "time_mix_decay_w2.weight": (decay, E)}
        w |= {"time_mix_key.weight": (E, kv), "time_mix_value.weight": (E, kv), "time_mix_receptance.weight": (E, E)}
        w |= {"time_mix_gate.weight": (E, E), "time_mix_output.weight": (E, E)}
        if p + "time_mix_lerp_fused.weight" in tensors:
            w |= {"time_mix_lerp_fused.weight": (E, 1, 1, 5)}
        else:
            w |= {f"time_mix_lerp_{n}.weight": (E, 1, 1) for n in LERPS}
        if qwen and p + "time_mix_first.weight" in tensors:  # rwkv6qwen2.cpp loads no group norm for it
            return "rwkv6qwen2 graphs with time_mix_first (RWKV_WKV6 without a group norm) are not simulated"
        if not qwen:
            w |= {"time_mix_first.weight": (hs, nh), "time_mix_ln.weight": (E,), "time_mix_ln.bias": (E,)}
        if qwen:
            w |= {"ffn_norm.weight": (E,), "ffn_gate.weight": (E, hp.n_ff), "ffn_up.weight": (E, hp.n_ff)}
            w |= {"ffn_down.weight": (hp.n_ff, E)}
        else:
            w |= {"attn_norm.bias": (E,), "attn_norm_2.weight": (E,), "attn_norm_2.bias": (E,)}
            w |= {"channel_mix_lerp_k.weight": (E, 1, 1), "channel_mix_lerp_r.weight": (E, 1, 1)}
            w |= {"channel_mix_key.weight": (E, hp.n_ff), "channel_mix_value.weight": (hp.n_ff, E)}
            w |= {"channel_mix_receptance.weight": (E, E)}
        shapes |= {p + n: ne for n, ne in w.items()}
    return check_shapes(model, shapes)
