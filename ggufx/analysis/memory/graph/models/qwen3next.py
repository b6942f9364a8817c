"""The ``qwen3next`` hybrid (src/models/qwen3next.cpp, Qwen3-Next): gated full-attention layers every
``full_attention_interval``-th layer and Gated DeltaNet layers between them, like ``qwen35``
(:mod:`ggufx.analysis.memory.graph.models.qwen35`, whose recurrent-state pieces this reuses), but with
plain RoPE positions, an attention QKV projection that may be fused, one joint beta/alpha projection,
the query/key heads repeated up to the value heads before the fused ``GATED_DELTA_NET`` node, and a
mixture-of-experts FFN with a sigmoid-gated shared expert in every layer."""

from __future__ import annotations

from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import (
    _attn_inp,
    _attn_kv,
    _AttnInp,
    _Ctx,
    _Gdn,
    _inp_embd,
    _norm,
    _w,
    _weight,
    model_of,
)
from ggufx.analysis.memory.graph.models._dense import nextn_output
from ggufx.analysis.memory.graph.models.moe import moe_ffn, shared_fuses
from ggufx.analysis.memory.graph.models.qwen35 import _copy_into, _gdn_dims, _rs
from ggufx.analysis.memory.hparams import hparams
from ggufx.errors import ValidationError
from ggufx.model import GGUFModel


def file_value(c: _Ctx, key: str) -> object:
    """A scalar hyper-parameter of the model (``None`` when absent or not a scalar): what a builder
    needs that the graph context's ``hp`` does not carry."""
    v = model_of(c).metadata.get(key)
    return v if isinstance(v, (bool, int, float, str)) else None


def n_expert_used(c: _Ctx) -> int:
    """Experts used per token: the context's, else the file's ``expert_used_count``."""
    if c.moe:
        return c.moe
    n = file_value(c, f"{c.hp.arch}.expert_used_count")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValidationError(c.path, None, "the graph needs a positive expert_used_count")
    return n


def gdn_dims(c: _Ctx, il: int) -> _Gdn:
    """The Gated DeltaNet dimensions of a recurrent layer, from the shapes llama.cpp's loader gave its
    tensors (qwen3next.cpp:58-65: head_k = head_v = ssm.state_size (``ssm_norm``), ssm.time_step_rank
    value heads (``ssm_a``), the convolution's kernel and ``2 x head_k x ssm.group_count + head_v x
    n_v_heads`` channels (``ssm_conv1d``))."""
    p = f"blk.{il}."
    conv = _w(c, p + "ssm_conv1d.weight", il)
    n_v = _w(c, p + "ssm_a", il).ne[0]
    head = _w(c, p + "ssm_norm.weight", il).ne[0]
    key_dim = (conv.ne[1] - head * n_v) // 2
    return _Gdn(conv.ne[0], head, key_dim // head, n_v, head)


def recurrent_layer(c: _Ctx, il: int) -> bool:
    """Whether layer ``il`` is a Gated DeltaNet layer: the loader created its ``ssm_a`` (it does for
    the layers ``hparams.is_recr`` marks: qwen3next.cpp:16-24, :92-104)."""
    return f"blk.{il}.ssm_a" in c.by_name


def _l2_heads(c: _Ctx, g: _Graph, out: _T, d: _Gdn, il: int) -> tuple[_T, _T]:
    """The convolved Q and K heads, L2-normed (``build_gdn_l2_norm``: RMS_NORM, SCALE), repeated up
    to the value heads when there are fewer (qwen3next.cpp:521-543: reshape, REPEAT, reshape)."""
    ns = c.sp.n_seq_max
    nst = c.n_tokens // ns
    row = out.nb[1]
    heads = []
    for _ in range(2):  # Q, then K (the views' offsets do not change what is allocated)
        qk = g.view(out, (d.head_k, d.n_k_heads, nst, ns), (4, 4 * d.head_k, row, row * nst))
        qk = g.op(f"qk_conv-{il}", "SCALE", g.new(f"qk_norm-{il}", "RMS_NORM", "F32", qk.ne, qk))
        if d.n_k_heads != d.n_v_heads:
            rf = d.n_v_heads // d.n_k_heads
            r = g.reshape(qk, d.head_k, 1, d.n_k_heads, nst * ns)
            r = g.new(f"qk_repeated-{il}", "REPEAT", "F32", (d.head_k, rf, d.n_k_heads, nst * ns), r)
            qk = g.reshape(r, d.head_k, d.n_v_heads, nst, ns)
        heads.append(qk)
    return heads[0], heads[1]


def _gated_delta_net(c: _Ctx, g: _Graph, x: _T, il: int, s_copy: _T) -> _T:
    """``build_layer_attn_linear`` (qwen3next.cpp:397-596): the QKV and gate projections
    (``build_qkvz``: the fused ``attn_qkv``/``attn_gate`` path, else the legacy ``ssm_in`` split),
    the joint beta/alpha projection, the convolution over the cached columns, the fused
    ``GATED_DELTA_NET`` node whose output rows carry the new state, the state write-back, the gated
    RMS norm and the output projection."""
    hp, T = c.hp, c.n_tokens
    ns = c.sp.n_seq_max
    nst = T // ns
    d = gdn_dims(c, il)
    p = f"blk.{il}."
    buft = c.cache_buft[il]
    cache_r = g.leaf(f"cache_r_l{il}", "F32", (hp.n_embd_r, ns), buft=buft)
    cache_s = g.leaf(f"cache_s_l{il}", "F32", (hp.n_embd_s, ns), buft=buft)
    S, H = d.head_v, d.n_v_heads
    key_dim, value_dim = d.head_k * d.n_k_heads, S * H
    if _weight(c, p + "attn_qkv.weight", il) is not None:
        qkv = g.mul_mat(f"qkv_mixed-{il}", _w(c, p + "attn_qkv.weight", il), x)
        qkv = g.reshape(qkv, qkv.ne[0], nst, ns)
        z = g.mul_mat(f"z-{il}", _w(c, p + "attn_gate.weight", il), x)
    else:  # the legacy joint projection, split per key head (qwen3next.cpp:336-393)
        mixed = g.mul_mat(f"mixed_qkvz-{il}", _w(c, p + "ssm_in.weight", il), x)
        per = value_dim // d.n_k_heads
        width = 2 * d.head_k + 2 * per
        mixed = g.reshape(mixed, width, d.n_k_heads, nst, ns)
        nb = mixed.nb  # ggml_view_4d keeps nb1..nb3 (nb0: the element)
        parts = [
            g.view(mixed, (size, d.n_k_heads, nst, ns), nb) for size in (d.head_k, d.head_k, per, per)
        ]  # the offsets do not change what is allocated
        z = g.new(f"z-{il}", "CONT", "F32", parts[3].ne, parts[3])
        q = g.new(f"query_flat-{il}", "CONT", "F32", (key_dim, nst, ns), parts[0])
        k = g.new(f"key_flat-{il}", "CONT", "F32", (key_dim, nst, ns), parts[1])
        v = g.new(f"value_flat-{il}", "CONT", "F32", (value_dim, nst, ns), parts[2])
        qk = g.new(f"qkv_mixed-{il}", "CONCAT", "F32", (2 * key_dim, nst, ns), q, k)
        qkv = g.new(f"qkv_mixed-{il}", "CONCAT", "F32", (2 * key_dim + value_dim, nst, ns), qk, v)
    channels = qkv.ne[0]
    ba = g.mul_mat(f"mixed_ba-{il}", _w(c, p + "ssm_ba.weight", il), x)
    per_k = H // d.n_k_heads
    ba = g.reshape(ba, 2 * per_k, d.n_k_heads, nst, ns)
    b = g.view(ba, (per_k, d.n_k_heads, nst, ns), ba.nb)
    a = g.view(ba, (per_k, d.n_k_heads, nst, ns), ba.nb)
    b = g.new(f"b-{il}", "CONT", "F32", b.ne, b)
    beta = g.op(f"beta-{il}", "UNARY", b)
    alpha = g.new(f"alpha-{il}", "CONT", "F32", (H, nst, ns), a)
    alpha = g.op(f"alpha_biased-{il}", "ADD", alpha, _w(c, p + "ssm_dt.bias", il))
    alpha = g.op(f"a_softplus-{il}", "UNARY", alpha)
    gate = g.op(f"gate-{il}", "MUL", alpha, _w(c, p + "ssm_a", il))
    beta = g.reshape(beta, 1, H, nst, ns)
    gate = g.reshape(gate, 1, H, nst, ns)
    # build_conv_state (delta-net-base.cpp:449-525): the cached columns, then the micro-batch's
    conv = g.reshape(_rs(c, g, cache_r, s_copy, hp.n_embd_r), d.d_conv - 1, channels, ns)
    conv_in = g.new(
        f"conv_input-{il}", "CONCAT", "F32", (d.d_conv - 1 + nst, channels, ns), conv, g.permute(qkv, 1, 0, 2, 3)
    )
    last = g.view(conv_in, (d.d_conv - 1, channels, ns), conv_in.nb[:3])
    _copy_into(g, last, cache_r, ns)
    state = _rs(c, g, cache_s, s_copy, hp.n_embd_s)
    state = g.reshape(state, S, S, H, ns)
    out = g.new(
        f"conv_output_raw-{il}", "SSM_CONV", "F32", (channels, nst, ns), conv_in, _w(c, p + "ssm_conv1d.weight", il)
    )
    out = g.op(f"conv_output_silu-{il}", "UNARY", out)
    q, k = _l2_heads(c, g, out, d, il)
    row = out.nb[1]
    v = g.view(out, (S, H, nst, ns), (4, 4 * S, row, row * nst))
    gdn = g.new(f"gdn-{il}", "GATED_DELTA_NET", "F32", (S * H, T + S * ns), q, k, v, gate, beta, state)
    new_state = g.view(gdn, (S, S, H, ns), (4, 4 * S, 4 * S * S))
    _copy_into(g, new_state, cache_s, ns)
    o = g.view(gdn, (S, H, nst, ns), (4, 4 * S, 4 * S * H))
    o = _norm(c, g, o, p + "ssm_norm.weight", il)  # build_norm_gated (qwen3next.cpp:255-264)
    o = g.op(f"attn_gated-{il}", "MUL", o, g.op(f"z_silu-{il}", "UNARY", g.reshape(z, S, H, nst, ns)))
    o = g.mul_mat(f"linear_attn_out-{il}", _w(c, p + "ssm_out.weight", il), g.reshape(o, S * H, nst, ns))
    return g.reshape(o, hp.n_embd, T)


def _qkv(c: _Ctx, g: _Graph, x: _T, il: int) -> tuple[_T, _T, _T]:
    """``build_qkv`` without the reshape (llama-graph.cpp:1684-1787): the fused projection's three
    column ranges made contiguous, else the three projections."""
    hp = c.hp
    nh, nkv, hd = hp.n_head[il], hp.n_head_kv[il], hp.head_k
    p = f"blk.{il}."
    wqkv = _weight(c, p + "attn_qkv.weight", il)
    if wqkv is None:
        q = g.mul_mat(f"Qcur_full-{il}", _w(c, p + "attn_q.weight", il), x)
        k = g.mul_mat(f"Kcur-{il}", _w(c, p + "attn_k.weight", il), x)
        v = g.mul_mat(f"Vcur-{il}", _w(c, p + "attn_v.weight", il), x)
        return q, k, v
    qkv = g.mul_mat(f"wqkv-{il}", wqkv, x)
    T = qkv.ne[1]
    out = []
    for name, rows in ((f"Qcur_full-{il}", 2 * hd * nh), (f"Kcur-{il}", hd * nkv), (f"Vcur-{il}", hp.head_v * nkv)):
        view = g.view(qkv, (rows, T), qkv.nb[:2])
        out.append(g.new(name, "CONT", "F32", (rows, T), view))
    return out[0], out[1], out[2]


def attn_core(c: _Ctx, g: _Graph, q: _T, k: _T, v: _T, il: int, inp: _AttnInp) -> _T:
    """``build_attn`` without the output projection (:func:`~ggufx.analysis.memory.graph.llm._attn_kv`),
    with the expansion ``build_attn_mha`` ends with (llama-graph.cpp:2827): the attention output joins
    the graph before the Hadamard rotation back and before anything the next layer expands (a
    recurrent layer's state reads)."""
    out = _attn_kv(c, g, q, k, v, il, inp, False)
    # with a rotated V cache the output is reshape(mul_mat(rot, reshape(attention))): expand the attention
    g.expand(out.src[0].src[1].src[0] if inp.v_rot is not None else out)
    return out


def _gated_attn(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """``build_layer_attn`` (qwen3next.cpp:266-322): the Q projection yields Q and its gate,
    interleaved per head; Q and K are normed and roped, the attention output is multiplied by the
    gate's sigmoid before the output projection."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd = hp.n_head[il], hp.n_head_kv[il], hp.head_k
    p = f"blk.{il}."
    pos = c.pos
    assert pos is not None
    qg, k, v = _qkv(c, g, x, il)
    qg = g.reshape(qg, 2 * hd, nh, T, 1)
    q = g.view(qg, (hd, nh, T, 1), qg.nb)
    gate = g.view(qg, (hd, nh, T, 1), qg.nb)
    k = g.reshape(k, hd, nkv, T)
    v = g.reshape(v, hp.head_v, nkv, T)
    q = _norm(c, g, q, p + "attn_q_norm.weight", il)
    k = _norm(c, g, k, p + "attn_k_norm.weight", il)
    q = g.new(q.name, "ROPE", "F32", q.ne, q, pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, pos)
    cur = attn_core(c, g, q, k, v, il, inp)
    gate = g.new(f"gate-{il}", "CONT", "F32", (hd * nh, T), gate)
    cur = g.op(f"attn_gated-{il}", "MUL", cur, g.op(f"gate_sigmoid-{il}", "UNARY", gate))
    return g.mul_mat(f"attn_output-{il}", _w(c, p + "attn_output.weight", il), cur)


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """``build_layer_ffn`` (qwen3next.cpp:598-660): the experts (softmax routing, normalized
    weights), plus the shared expert scaled by the sigmoid of its one-column gate; a layer without
    a router has a dense FFN. On CUDA the shared expert's gate/up/GLU may run right after the routed
    experts' (:func:`~ggufx.analysis.memory.graph.models.moe.shared_fuses`)."""
    p = f"blk.{il}."
    assert c.moe is not None
    if _weight(c, p + "ffn_gate_inp.weight", il) is None:
        return _down(c, g, _glu(c, g, cur, il, ""), il, "")
    if _weight(c, p + "ffn_up_shexp.weight", il) is None:
        return moe_ffn(c, g, cur, il, c.moe)
    sh_glu = _glu(c, g, cur, il, "_shexp")
    routed = (_w(c, p + "ffn_gate_exps.weight", il), _w(c, p + "ffn_up_exps.weight", il))
    fuses = shared_fuses(routed, (sh_glu.src[0].src[0], sh_glu.src[1].src[0]))
    moe = moe_ffn(c, g, cur, il, c.moe, shared_glu=sh_glu if fuses else None)
    shexp = _down(c, g, sh_glu, il, "_shexp")
    shared_gate = g.mul_mat(f"shared_expert_gate-{il}", _w(c, p + "ffn_gate_inp_shexp.weight", il), cur)
    shared_gate = g.op(f"shared_expert_gate_sigmoid-{il}", "UNARY", shared_gate)
    shexp = g.op(f"ffn_shexp_gated-{il}", "MUL", shexp, shared_gate)
    return g.op(f"ffn_out-{il}", "ADD", moe, shexp)


def _glu(c: _Ctx, g: _Graph, cur: _T, il: int, suffix: str) -> _T:
    """``build_ffn``'s gate and up projections and their SwiGLU (SiLU, parallel gate, no biases)."""
    p = f"blk.{il}."
    up = g.mul_mat(f"ffn_up{suffix}-{il}", _w(c, f"{p}ffn_up{suffix}.weight", il), cur)
    gate = g.mul_mat(f"ffn_gate{suffix}-{il}", _w(c, f"{p}ffn_gate{suffix}.weight", il), cur)
    return g.new(f"ffn_swiglu{suffix}-{il}", "GLU", "F32", gate.ne, gate, up)


def _down(c: _Ctx, g: _Graph, act: _T, il: int, suffix: str) -> _T:
    return g.mul_mat(f"ffn_down{suffix}-{il}", _w(c, f"blk.{il}.ffn_down{suffix}.weight", il), act)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (qwen3next.cpp:142-221): attention or Gated DeltaNet, the residual, the
    post-attention norm, the FFN; the final norm (``h_nextn``) stays an output before the rows are
    picked. The MTP block (``nextn_predict_layers``) is not executed."""
    hp, sp = c.hp, c.sp
    T, n_out = c.n_tokens, c.n_outputs
    c.moe = n_expert_used(c)
    x = _inp_embd(c, g)
    s_copy = g.input("rs_s_copy", "I32", sp.n_seq_max)  # get_n_rs of the full memory
    full = _attn_inp(c, g, sp.n_kv)
    c.pos = g.input("inp_pos", "I32", T)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        if il >= hp.n_layer_main:  # the MTP block: loaded, not run
            continue
        g.at(p)
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        g.expand(cur)
        if recurrent_layer(c, il):
            cur = _gated_delta_net(c, g, cur, il, s_copy)
        else:
            cur = _gated_attn(c, g, cur, il, full)
        res = g.op(f"attn_residual-{il}", "ADD", cur, x)
        cur = _norm(c, g, res, f"blk.{il}.post_attention_norm.weight", il)
        cur = _ffn(c, g, cur, il)
        x = g.op(f"post_moe-{il}", "ADD", cur, res)
    return nextn_output(c, g, x, out_ids)


def unbuildable(model: GGUFModel) -> str | None:
    """Why the qwen3next graph cannot be built from this file (None when it can): the expert counts,
    the Gated DeltaNet dimensions, and every tensor the graph reads in the shape qwen3next.cpp:34-118
    creates it (llama.cpp refuses the file otherwise)."""
    md = model.metadata
    n_expert = md.get_int("qwen3next.expert_count") or 0
    n_used = md.get_int("qwen3next.expert_used_count") or 0
    if not 0 < n_used <= n_expert <= 1024:  # qwen3next.cpp:35-37, llama-model.cpp: LLAMA_MAX_EXPERTS
        return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
    d = _gdn_dims(model)
    if isinstance(d, str):
        return d
    extra = next((t.name for t in model.tensors if t.name.endswith(".scale")), None)
    if extra:
        return f"qwen3next graphs with tensor {extra} are not simulated"
    hp = hparams(model)
    E, hd = hp.n_embd, hp.head_k
    if hd <= 0 or hd != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length > 0 (qwen3next.cpp:233)"
    recurrent = [k.is_recurrent for k in layer_kinds(model)]
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    if len(tensors.get("token_embd.weight", ())) != 2 or tensors["token_embd.weight"][0] != E:
        return f"the graph needs a two-dimensional tensor token_embd.weight of {E} columns"
    key_dim, value_dim = d.head_k * d.n_k_heads, d.head_v * d.n_v_heads
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,)}
    for il in range(hp.n_layer_main):
        nh, nkv = hp.n_head[il], hp.n_head_kv[il]
        w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,), "post_attention_norm.weight": (E,)}
        p = f"blk.{il}."
        if recurrent[il]:
            if p + "attn_qkv.weight" in tensors:
                w |= {"attn_qkv.weight": (E, 2 * key_dim + value_dim), "attn_gate.weight": (E, value_dim)}
            else:
                w |= {"ssm_in.weight": (E, 2 * key_dim + 2 * value_dim)}
            w |= {"ssm_conv1d.weight": (d.d_conv, 2 * key_dim + value_dim), "ssm_dt.bias": (d.n_v_heads,)}
            w |= {"ssm_a": (d.n_v_heads,), "ssm_ba.weight": (E, 2 * d.n_v_heads), "ssm_norm.weight": (d.head_v,)}
            w |= {"ssm_out.weight": (value_dim, E)}
        elif nh <= 0 or nkv <= 0 or nh % nkv:
            return f"the graph needs attention heads in layer {il} (head_count a multiple of head_count_kv)"
        else:
            if p + "attn_qkv.weight" in tensors:
                w |= {"attn_qkv.weight": (E, 2 * hd * nh + 2 * hd * nkv)}
            else:
                w |= {"attn_q.weight": (E, 2 * hd * nh), "attn_k.weight": (E, hd * nkv), "attn_v.weight": (E, hd * nkv)}
            w |= {"attn_output.weight": (hd * nh, E), "attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,)}
        if p + "ffn_gate_inp.weight" in tensors:
            up = tensors.get(p + "ffn_up_exps.weight", ())
            if len(up) != 3:
                return f"the graph needs a three-dimensional tensor {p}ffn_up_exps.weight"
            n_ff_exp = up[1]
            w |= {"ffn_gate_inp.weight": (E, n_expert), "ffn_up_exps.weight": (E, n_ff_exp, n_expert)}
            w |= {"ffn_gate_exps.weight": (E, n_ff_exp, n_expert), "ffn_down_exps.weight": (n_ff_exp, E, n_expert)}
            if p + "ffn_up_shexp.weight" in tensors:
                n_ff_sh = tensors[p + "ffn_up_shexp.weight"][-1]
                w |= {"ffn_gate_inp_shexp.weight": (E,), "ffn_gate_shexp.weight": (E, n_ff_sh)}
                w |= {"ffn_up_shexp.weight": (E, n_ff_sh), "ffn_down_shexp.weight": (n_ff_sh, E)}
        else:
            return "qwen3next graphs without a mixture-of-experts FFN are not simulated"
        shapes |= {p + n: shape for n, shape in w.items()}
    for name, shape in shapes.items():
        if name not in tensors:
            return f"the graph needs tensor {name}, which the file lacks"
        if tensors[name] != shape:
            return f"the graph needs tensor {name} of shape {list(shape)}, not {list(tensors[name])}"
    return None
