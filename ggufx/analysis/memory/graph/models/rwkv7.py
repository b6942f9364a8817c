"""``rwkv7`` and ``arwkv7`` (src/models/rwkv7.cpp, arwkv7.cpp over ``llm_build_rwkv7_base``, rwkv7-base.cpp):
pure recurrent layers whose time mix reads the previous token's normed input from the token-shift state
(``cache_r``: ``token_shift_count`` rows of ``n_embd`` per sequence) and runs the fused ``RWKV_WKV7`` node
over the per-head state (``cache_s``: ``n_embd x wkv.head_size`` per sequence), the first layer's value
mixed into the later ones'. RWKV-7 (layer norms with biases, the token-embedding norm) ends each layer with
the channel mix (a second token shift, ReLU squared); ARWKV-7 (RMS norms, one token shift, the time mix's
gate and group norm optional) with a SwiGLU FFN."""

from __future__ import annotations

from collections.abc import Callable

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _w, _weight
from ggufx.analysis.memory.graph.models._dense import Dense, _n
from ggufx.analysis.memory.graph.models.deepseek2 import ffn
from ggufx.analysis.memory.graph.models.qwen35 import _rs
from ggufx.analysis.memory.graph.models.ssm import check_shapes
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

LAYER_NORM, RMS_NORM = Dense(norm="NORM"), Dense(norm="RMS_NORM")


def token_shift_load(c: _Ctx, g: _Graph, il: int, s_copy: _T) -> tuple[_T, _T]:
    """``build_rwkv_token_shift_load`` (llama-graph.cpp:3678-3697): the token-shift state's rows of the
    micro-batch's sequences as ``(n_embd, token_shift_count, n_seqs)``, and the cache they come from."""
    hp, ns = c.hp, c.sp.n_seq_max
    cache_r = g.leaf(f"cache_r_l{il}", "F32", (hp.n_embd_r, ns), buft=c.cache_buft[il])
    shift = _rs(c, g, cache_r, s_copy, hp.n_embd_r)
    return g.reshape(shift, hp.n_embd, hp.n_embd_r // hp.n_embd, ns), cache_r


def token_shift_store(c: _Ctx, g: _Graph, shift: _T, cache_r: _T) -> None:
    """``build_rwkv_token_shift_store`` (llama-graph.cpp:3699-3717), expanded: the new token-shift rows
    copied into the cache."""
    ns = c.sp.n_seq_max
    src = g.view(shift, (shift.ne[0] * shift.ne[1] * ns,), None)
    dst = g.view(cache_r, (c.hp.n_embd_r * ns,), None)
    g.cpy(src, dst)


def shifted(g: _Graph, shift: _T, cur: _T) -> _T:
    """The previous token's rows: the shift state's, then the micro-batch's but its last (``ggml_concat``
    of a token-shift view and a view of ``cur`` over ``n_seq_tokens - 1`` tokens)."""
    E, nst, ns = cur.ne[0], cur.ne[1], cur.ne[2]
    head = g.view(cur, (E, nst - 1, ns), cur.nb[:3])
    return g.new(f"{cur.name}_prev", "CONCAT", "F32", (E, nst, ns), shift, head)


def last_rows(g: _Graph, cur: _T) -> _T:
    """The micro-batch's last token of each sequence: ``(n_embd, 1, n_seqs)``."""
    return g.view(cur, (cur.ne[0], 1, cur.ne[2]), cur.nb[:3])


def _lora(c: _Ctx, g: _Graph, name: str, il: int, x: _T) -> _T:
    """``x`` through the low-rank pair ``time_mix_{name}1`` then ``time_mix_{name}2``."""
    p = f"blk.{il}.time_mix_{name}"
    return g.mul_mat(
        f"{name}2-{il}", _w(c, p + "2.weight", il), g.mul_mat(f"{name}1-{il}", _w(c, p + "1.weight", il), x)
    )


def time_mix7(c: _Ctx, g: _Graph, cur: _T, x_prev: _T, first: _T | None, il: int, s_copy: _T) -> tuple[_T, _T]:
    """``build_rwkv7_time_mix`` (rwkv7-base.cpp:30-137): the five or six token-shift interpolations (six
    with the gate), receptance, decay, key, value (mixed with the first layer's), the in-context learning
    rate, the fused ``RWKV_WKV7`` node whose last rows are the new state (copied back), the group norm (when
    the layer has it), the bonus ``r x k x r_k`` term, the gate and the output projection. Returns the
    output as ``(n_embd, n_seq_tokens, n_seqs)`` and the first layer's value."""
    hp, T = c.hp, c.n_tokens
    E, ns = hp.n_embd, c.sp.n_seq_max
    nst = T // ns
    hs = hp.n_embd_s // E  # wkv.head_size
    hc = E // hs
    p = f"blk.{il}."
    gating = all(_weight(c, f"{p}time_mix_g{i}.weight", il) is not None for i in (1, 2))
    sx = g.op(f"sx-{il}", "SUB", x_prev, cur)
    sx = g.new(f"sx_rep-{il}", "REPEAT", "F32", (E, nst, ns, 6 if gating else 5), sx)
    xxx = g.op(f"xxx-{il}", "MUL", sx, _w(c, p + "time_mix_lerp_fused.weight", il))
    xxx = g.op(f"xxx-{il}", "ADD", xxx, cur)
    xr, xw, xk, xv, xa, xg = (g.view(xxx, (E, T), xxx.nb[:2]) for _ in range(6))
    r = g.mul_mat(f"r-{il}", _w(c, p + "time_mix_receptance.weight", il), xr)
    w = g.mul_mat(
        f"w2-{il}",
        _w(c, p + "time_mix_w2.weight", il),
        g.op(f"w_tanh-{il}", "UNARY", g.mul_mat(f"w1-{il}", _w(c, p + "time_mix_w1.weight", il), xw)),
    )
    w = g.op(f"w-{il}", "ADD", w, _w(c, p + "time_mix_w0.weight", il))
    w = g.op(f"w_exp-{il}", "UNARY", g.op(f"w_scale-{il}", "SCALE", g.op(f"w_sigmoid-{il}", "UNARY", w)))
    k = g.mul_mat(f"k-{il}", _w(c, p + "time_mix_key.weight", il), xk)
    v = g.mul_mat(f"v-{il}", _w(c, p + "time_mix_value.weight", il), xv)
    if first is None:
        first = v
    else:
        mix = g.op(f"v_mix-{il}", "ADD", _lora(c, g, "v", il, xv), _w(c, p + "time_mix_v0.weight", il))
        mix = g.op(f"v_mix_sigmoid-{il}", "UNARY", mix)
        v = g.op(f"v-{il}", "ADD", v, g.op(f"v_res-{il}", "MUL", g.op(f"v_diff-{il}", "SUB", first, v), mix))
    gate = None
    if gating:
        gate = g.mul_mat(
            f"g2-{il}",
            _w(c, p + "time_mix_g2.weight", il),
            g.op(f"g_sigmoid-{il}", "UNARY", g.mul_mat(f"g1-{il}", _w(c, p + "time_mix_g1.weight", il), xg)),
        )
    a = g.op(f"a-{il}", "ADD", _lora(c, g, "a", il, xa), _w(c, p + "time_mix_a0.weight", il))
    a = g.op(f"a_sigmoid-{il}", "UNARY", a)
    kk = g.reshape(g.op(f"kk-{il}", "MUL", k, _w(c, p + "time_mix_k_k.weight", il)), hs, hc, T)
    kk = g.op(f"kk_l2-{il}", "L2_NORM", kk)
    ka = g.op(f"ka-{il}", "MUL", k, _w(c, p + "time_mix_k_a.weight", il))
    k = g.op(f"k_iclr-{il}", "ADD", k, g.op(f"k_sub-{il}", "SUB", g.op(f"a_ka-{il}", "MUL", a, ka), ka))
    r, w, k, v, a = (g.reshape(t, hs, hc, T) for t in (r, w, k, v, a))
    cache_s, state = wkv_state(c, g, il, s_copy)
    neg = g.op(f"kk_neg-{il}", "UNARY", kk)
    kka = g.op(f"kk_a-{il}", "MUL", kk, a)
    wkv = g.new(f"wkv7-{il}", "RWKV_WKV7", "F32", (E, T + hs * ns), r, w, k, v, neg, kka, state)
    ln = all(_weight(c, f"{p}time_mix_ln.{n}", il) is not None for n in ("weight", "bias"))
    out = wkv_output(c, g, wkv, cache_s, il, ln)
    r_k = g.reshape(_w(c, p + "time_mix_r_k.weight", il), hs, hc)
    rk = g.op(f"rk-{il}", "MUL", g.op(f"kr-{il}", "MUL", k, r), r_k)
    rk = g.new(f"rk_sum-{il}", "SUM_ROWS", "F32", (1, hc, T), rk)
    out = g.op(f"wkv_bonus-{il}", "ADD", out, g.reshape(g.op(f"v_rk-{il}", "MUL", v, rk), E, T))
    if gate is not None:
        out = g.op(f"wkv_gated-{il}", "MUL", out, gate)
    out = g.mul_mat(f"time_mix_out-{il}", _w(c, p + "time_mix_output.weight", il), out)
    return g.reshape(out, E, nst, ns), first


def wkv_state(c: _Ctx, g: _Graph, il: int, s_copy: _T) -> tuple[_T, _T]:
    """The layer's wkv state cache and ``build_rs``'s rows of it for the micro-batch's sequences
    (rwkv6-base.cpp:133, rwkv7-base.cpp:106)."""
    hp, ns = c.hp, c.sp.n_seq_max
    cache_s = g.leaf(f"cache_s_l{il}", "F32", (hp.n_embd_s, ns), buft=c.cache_buft[il])
    return cache_s, _rs(c, g, cache_s, s_copy, hp.n_embd_s)


def wkv_output(c: _Ctx, g: _Graph, wkv: _T, cache_s: _T, il: int, group_norm: bool) -> _T:
    """What rwkv6-base.cpp:141-160 and rwkv7-base.cpp:109-128 (the same code) make of a fused wkv node:
    its first ``n_embd x n_tokens`` values the output, the rest the new state, copied into the cache
    (expanded); the output group-normed (one group a head) times ``time_mix_ln`` plus its bias with
    ``group_norm``: ``(n_embd, n_tokens)``."""
    hp, T, ns = c.hp, c.n_tokens, c.sp.n_seq_max
    E = hp.n_embd
    hs = hp.n_embd_s // E  # wkv.head_size
    nh = E // hs
    p = f"blk.{il}.time_mix_"
    out = g.view(wkv, (E * T,), None)
    new_state = g.view(wkv, (E * hs * ns,), None)
    dst = g.view(cache_s, (hp.n_embd_s * ns,), None)
    g.cpy(new_state, dst)
    if not group_norm:
        return g.reshape(out, E, T)
    out = g.op(f"wkv_norm-{il}", "NORM", g.reshape(out, hs, nh, T))
    out = g.op(f"wkv_ln-{il}", "MUL", g.reshape(out, E, T), _w(c, p + "ln.weight", il))
    return g.op(f"wkv_ln-{il}", "ADD", out, _w(c, p + "ln.bias", il))


def _channel_mix7(c: _Ctx, g: _Graph, cur: _T, x_prev: _T, il: int) -> _T:
    """``build_rwkv7_channel_mix`` (rwkv7-base.cpp:9-28): the token-shift interpolation, the key's ReLU
    squared, the value projection."""
    p = f"blk.{il}."
    sx = g.op(f"cm_sx-{il}", "SUB", x_prev, cur)
    xk = g.op(f"cm_xk-{il}", "ADD", g.op(f"cm_xk-{il}", "MUL", sx, _w(c, p + "channel_mix_lerp_k.weight", il)), cur)
    k = g.mul_mat(f"cm_k-{il}", _w(c, p + "channel_mix_key.weight", il), xk)
    k = g.op(f"cm_k_sqr-{il}", "SQR", g.op(f"cm_k_relu-{il}", "UNARY", k))
    return g.mul_mat(f"cm_v-{il}", _w(c, p + "channel_mix_value.weight", il), k)


TimeMix = Callable[[_Ctx, _Graph, _T, _T, int, _T], _T]  # (c, g, normed input, previous rows, il, s_copy)
ChannelMix = Callable[[_Ctx, _Graph, _T, _T, int], _T]  # (c, g, normed input, previous rows, il)


def build_rwkv(c: _Ctx, g: _Graph, time_mix: TimeMix, channel_mix: ChannelMix | None, rescale: int = 0) -> _T:
    """The RWKV decoders' layer loop (rwkv6.cpp, rwkv7.cpp; rwkv6qwen2.cpp, arwkv7.cpp with
    ``channel_mix`` None): per layer the token shift, the norm, the time mix, the residual, then the
    channel mix (layer norms with biases, the token-embedding norm, a second token shift stored with the
    time mix's, the output scaled by half every ``rescale`` layers) or the RMS norms' SwiGLU FFN (one
    token shift, stored right after the time mix); the output rows are picked in the last layer."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    ns = sp.n_seq_max
    nst = T // ns
    d = RMS_NORM if channel_mix is None else LAYER_NORM
    x = _inp_embd(c, g)
    if channel_mix is not None:
        x = _n(c, g, x, "token_embd_norm.weight", 0, d)
    s_copy = g.input("rs_s_copy", "I32", ns)
    out_ids = g.input("out_ids", "I32", n_out)
    last = hp.n_layer - 1
    for p, il in enumerate(c.layers):
        g.at(p)
        inp = g.reshape(x, E, nst, ns)
        shift, cache_r = token_shift_load(c, g, il, s_copy)
        att_shift = g.view(shift, (E, 1, ns), shift.nb[:3])
        att_norm = _n(c, g, inp, f"blk.{il}.attn_norm.weight", il, d)
        cur = time_mix(c, g, att_norm, shifted(g, att_shift, att_norm), il, s_copy)
        if channel_mix is None:
            token_shift_store(c, g, last_rows(g, att_norm), cache_r)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp)
        if channel_mix is None:
            ffn_inp = g.reshape(ffn_inp, E, T)
            if il == last:
                ffn_inp = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), ffn_inp, out_ids)
            cur = ffn(c, g, _n(c, g, ffn_inp, f"blk.{il}.ffn_norm.weight", il, d), il)
        else:
            ffn_norm = _n(c, g, ffn_inp, f"blk.{il}.attn_norm_2.weight", il, d)
            x_prev = shifted(g, g.view(shift, (E, 1, ns), shift.nb[:3]), ffn_norm)
            new_shift = g.new(
                f"token_shift-{il}", "CONCAT", "F32", (E, 2, ns), last_rows(g, att_norm), last_rows(g, ffn_norm)
            )
            token_shift_store(c, g, new_shift, cache_r)
            ffn_inp, ffn_norm, x_prev = (g.reshape(t, E, T) for t in (ffn_inp, ffn_norm, x_prev))
            if il == last:
                ffn_inp, ffn_norm, x_prev = (
                    g.new("node_rows", "GET_ROWS", "F32", (E, n_out), t, out_ids) for t in (ffn_inp, ffn_norm, x_prev)
                )
            cur = channel_mix(c, g, ffn_norm, x_prev, il)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
        if rescale and (il + 1) % rescale == 0:
            x = g.op(f"l_out_scaled-{il}", "SCALE", x)
    g.at(GLOBAL)
    cur = _n(c, g, x, "output_norm.weight", hp.n_layer, d, pin=False)
    cur.flags |= OUTPUT
    logits = g.mul_mat("result_output", _w(c, "output.weight", hp.n_layer), cur)
    logits.flags |= OUTPUT
    return logits


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (rwkv7.cpp:136-211, arwkv7.cpp:117-202): :func:`build_rwkv` with the RWKV-7 time
    mix, whose first layer's value the later layers mix in, and RWKV-7's channel mix or ARWKV-7's FFN."""
    first: list[_T] = []

    def mix(c: _Ctx, g: _Graph, cur: _T, x_prev: _T, il: int, s_copy: _T) -> _T:
        out, v = time_mix7(c, g, cur, x_prev, first[0] if first else None, il, s_copy)
        first[:] = [v]
        return out

    return build_rwkv(c, g, mix, None if c.hp.arch == "arwkv7" else _channel_mix7)


def rwkv_head(model: GGUFModel, rms: bool) -> tuple[int, dict[str, tuple[int, ...]]] | str:
    """What rwkv6.cpp/rwkv7.cpp (``rms`` False) and rwkv6qwen2.cpp/arwkv7.cpp (``rms``) check and load alike:
    ``wkv.head_size`` dividing the embedding, 2 token shifts (one with ``rms``); the head size and the
    shapes of the tensors outside the layers (the output norm, with a bias and the token-embedding norm
    but with ``rms``; the output projection), or why the graph cannot be built."""
    a = model.architecture or ""
    md = model.metadata
    hp = hparams(model)
    E = hp.n_embd
    hs = md.get_int(f"{a}.wkv.head_size") or 0
    shifts = md.get_int(f"{a}.token_shift_count")
    shifts = 2 if shifts is None else shifts
    if hs <= 0 or E % hs:
        return f"the graph needs {a}.wkv.head_size dividing embedding_length"
    if shifts != (1 if rms else 2):
        return f"the graph needs {a}.token_shift_count {1 if rms else 2}, not {shifts}"
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,), "output.weight": (E, hp.n_vocab)}
    if not rms:
        shapes |= {"token_embd_norm.weight": (E,), "token_embd_norm.bias": (E,), "output_norm.bias": (E,)}
    return hs, shapes


def unbuildable(model: GGUFModel) -> str | None:
    """Why the rwkv7 / arwkv7 graph cannot be built from this file (None when it can): the head size and
    token shifts (rwkv7.cpp:139 asserts 2 shifts, arwkv7.cpp:118 one), and every tensor the graph reads in
    the shape rwkv7.cpp:50-133 / arwkv7.cpp:45-114 creates it."""
    a = model.architecture or ""
    md = model.metadata
    hp = hparams(model)
    E = hp.n_embd
    arwkv = a == "arwkv7"
    head = rwkv_head(model, arwkv)
    if isinstance(head, str):
        return head
    shapes = head[1]
    lora = {
        n: md.get_int(f"{a}.attention.{k}_lora_rank") or 0
        for n, k in (("w", "decay"), ("a", "iclr"), ("v", "value_residual_mix"), ("g", "gate"))
    }
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        gating = p + "time_mix_g1.weight" in tensors and p + "time_mix_g2.weight" in tensors
        w: dict[str, tuple[int, ...]] = {
            "attn_norm.weight": (E,),
            "time_mix_lerp_fused.weight": (E, 1, 1, 6 if gating else 5),
        }
        for n in ("w", "a", "v", "g"):
            rank = lora["a"] if n == "v" and il == 0 else lora[n]
            if n != "g" or gating:
                w |= {f"time_mix_{n}1.weight": (E, rank), f"time_mix_{n}2.weight": (rank, E)}
            if n != "g":
                w |= {f"time_mix_{n}0.weight": (E,)}
        for n in ("k_k", "k_a", "r_k"):
            w |= {f"time_mix_{n}.weight": (E,)}
        for n in ("key", "value", "receptance", "output"):
            w |= {f"time_mix_{n}.weight": (E, E)}
        n_ff = hp.n_ff
        if arwkv:
            w |= {"ffn_norm.weight": (E,), "ffn_gate.weight": (E, n_ff), "ffn_up.weight": (E, n_ff)}
            w |= {"ffn_down.weight": (n_ff, E)}
        else:
            if not gating:
                return f"the graph needs tensor {p}time_mix_g1.weight, which the file lacks"
            w |= {"attn_norm.bias": (E,), "attn_norm_2.weight": (E,), "attn_norm_2.bias": (E,)}
            w |= {"time_mix_ln.weight": (E,), "time_mix_ln.bias": (E,), "channel_mix_lerp_k.weight": (E, 1, 1)}
            w |= {"channel_mix_key.weight": (E, n_ff), "channel_mix_value.weight": (n_ff, E)}
        shapes |= {p + n: ne for n, ne in w.items()}
    return check_shapes(model, shapes)
