"""``kimi-linear`` (src/models/kimi-linear.cpp, Kimi Linear 48B-A3B): Kimi-delta-attention (KDA) layers, the
layers with no KV heads, that keep a short-convolution state of Q, K and V and a per-head delta-rule state
(the fused ``GATED_DELTA_NET`` node with a per-channel gate), and multi-head latent attention layers without
RoPE over a K-only cache (the absorbed form: ``attn_k_b``/``attn_v_b``); a dense first layer
(``leading_dense_block_count``), then sigmoid-routed experts with the selection bias, normalized and scaled
weights, plus the shared expert."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph, _type
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _norm, _w
from ggufx.analysis.memory.graph.models.deepseek2 import (
    SIGMOID,
    SOFTMAX,
    SOFTMAX_WEIGHT,
    cache_k,
    cache_write,
    ffn,
    mla_mha,
    moe_ffn,
    moe_params,
)
from ggufx.analysis.memory.graph.models.qwen3next import file_value
from ggufx.analysis.memory.graph.models.qwen35 import _rs
from ggufx.analysis.memory.hparams import Hparams, hparams
from ggufx.model import GGUFModel


@dataclass(frozen=True, slots=True)
class _Kda:
    """A KDA layer's dimensions (kimi-linear.cpp:255-258; llama_hparams::n_embd_r/n_embd_s for
    ``n_embd_head_kda``, llama-hparams.cpp:219-247)."""

    d_conv: int  # ssm.conv_kernel
    head: int  # kda.head_dim
    n_head: int  # attention.head_count

    @property
    def d_inner(self) -> int:
        return self.head * self.n_head

    @property
    def n_embd_r(self) -> int:
        """Q, K and V's cached convolution columns."""
        return 3 * (self.d_conv - 1) * self.d_inner

    @property
    def n_embd_s(self) -> int:
        return self.head * self.head * self.n_head


def _kda_dims(c: _Ctx) -> _Kda:
    arch = c.hp.arch
    d_conv, head = file_value(c, f"{arch}.ssm.conv_kernel"), file_value(c, f"{arch}.kda.head_dim")
    assert isinstance(d_conv, int) and isinstance(head, int)  # unbuildable() checked them
    return _Kda(d_conv, head, c.hp.n_head[0])


def _causal_conv(c: _Ctx, g: _Graph, x: _T, qkv: int, il: int, d: _Kda, conv_state: _T, cache_r: _T) -> _T:
    """``causal_conv1d`` (kimi-linear.cpp:182-233) for Q (0), K (1) or V (2): the projection, the cached
    columns of this part of the state then the micro-batch's, the last columns written back, the
    convolution and its SiLU, as heads."""
    T, ns = c.n_tokens, c.sp.n_seq_max
    nst = T // ns
    dc = d.d_conv - 1
    name = "qkv"[qkv]
    state = g.view(conv_state, (dc, d.d_inner, ns), (4, 4 * dc, 4 * d.n_embd_r))
    proj = g.mul_mat(f"{name}_proj-{il}", _w(c, f"blk.{il}.attn_{name}.weight", il), x)
    x3 = g.reshape(proj, d.d_inner, nst, ns)
    conv_x = g.new(f"conv_x-{il}", "CONCAT", "F32", (dc + nst, d.d_inner, ns), state, g.permute(x3, 1, 0, 2, 3))
    last = g.view(conv_x, (dc, d.d_inner, ns), conv_x.nb[:3])
    dst = g.view(cache_r, (dc, d.d_inner, ns), (4, 4 * dc, 4 * d.n_embd_r))
    g.cpy(last, dst)
    weight = g.reshape(_w(c, f"blk.{il}.ssm_conv1d_{name}.weight", il), d.d_conv, d.d_inner)
    out = g.new(f"conv-{il}", "SSM_CONV", "F32", (d.d_inner, nst, ns), conv_x, weight)
    out = g.op(f"conv_silu-{il}", "UNARY", g.reshape(out, d.d_inner, T))
    return g.reshape(out, d.head, d.n_head, nst, ns)


def _kda(c: _Ctx, g: _Graph, x: _T, il: int, s_copy: _T, d: _Kda) -> _T:
    """The KDA layer (kimi-linear.cpp:296-410): the convolved Q, K and V, the per-channel gate
    ``softplus(f_b(f_a(x)) + dt_bias) * A``, beta's sigmoid, the L2-normed Q and K (``build_gdn_l2_norm``),
    the fused ``GATED_DELTA_NET`` node (llama-context.cpp:235 keeps fused_gdn_ar/_ch on;
    delta-net-base.cpp:373-423), its output made contiguous, the state written back, the output gate
    ``g_b(g_a(x))``, the RMS norm of each head times the gate's sigmoid and the output projection."""
    T, ns = c.n_tokens, c.sp.n_seq_max
    nst = T // ns
    E = c.hp.n_embd
    S, H = d.head, d.n_head
    p = f"blk.{il}."
    buft = c.cache_buft[il]
    cache_r = g.leaf(f"cache_r_l{il}", "F32", (d.n_embd_r, ns), buft=buft)
    cache_s = g.leaf(f"cache_s_l{il}", "F32", (d.n_embd_s, ns), buft=buft)
    conv_state = _rs(c, g, cache_r, s_copy, d.n_embd_r)
    q, k, v = (_causal_conv(c, g, x, i, il, d, conv_state, cache_r) for i in range(3))
    f_a = g.mul_mat(f"f_a-{il}", _w(c, p + "ssm_f_a.weight", il), x)
    g1 = g.mul_mat(f"g1-{il}", _w(c, p + "ssm_f_b.weight", il), f_a)
    g1 = g.op(f"g1_biased-{il}", "ADD", g1, _w(c, p + "ssm_dt.bias", il))
    g1 = g.reshape(g.op(f"g1_softplus-{il}", "UNARY", g1), S, H, T)
    g1 = g.op(f"kda_g1-{il}", "MUL", g1, g.reshape(_w(c, p + "ssm_a", il), 1, H, 1))
    g1 = g.reshape(g1, S, H, nst, ns)
    beta = g.mul_mat(f"kda_beta-{il}", _w(c, p + "ssm_beta.weight", il), x)
    beta = g.op(f"beta_sigmoid-{il}", "UNARY", g.reshape(beta, 1, H, nst, ns))
    cur = g.reshape(x, E, nst, ns)
    state = g.reshape(_rs(c, g, cache_s, s_copy, d.n_embd_s), S, S, H, ns)
    q = g.op(f"q_l2-{il}", "SCALE", g.new(f"q_norm-{il}", "RMS_NORM", "F32", q.ne, q))
    k = g.op(f"k_l2-{il}", "SCALE", g.new(f"k_norm-{il}", "RMS_NORM", "F32", k.ne, k))
    gdn = g.new(f"gdn-{il}", "GATED_DELTA_NET", "F32", (S * H, T + S * ns), q, k, v, g1, beta, state)
    out = g.view(gdn, (S, H, nst, ns), (4, 4 * S, 4 * S * H))
    out = g.new(f"attn_output-{il}", "CONT", "F32", out.ne, out)
    new_state = g.view(gdn, (S, S, H, ns), (4, 4 * S, 4 * S * S))
    dst = g.view(cache_s, (d.n_embd_s * ns,), None)
    g.cpy(new_state, dst)
    cur = g.reshape(cur, E, T)
    g_a = g.mul_mat(f"g_a-{il}", _w(c, p + "ssm_g_a.weight", il), cur)
    g2 = g.reshape(g.mul_mat(f"g2-{il}", _w(c, p + "ssm_g_b.weight", il), g_a), S, H, T)
    normed = _norm(c, g, g.reshape(out, S, H, T), p + "ssm_norm.weight", il)
    gated = g.op(f"kda_gated-{il}", "MUL", normed, g.op(f"kda_gate-{il}", "UNARY", g2))
    gated = g.new(f"kda_gated_cont-{il}", "CONT", "F32", (d.d_inner, T), gated)
    return g.mul_mat(f"kda_out-{il}", _w(c, p + "attn_output.weight", il), gated)


def _mla(c: _Ctx, g: _Graph, x: _T, il: int, k_idxs: _T, mask: _T) -> _T:
    """The MLA layer with the MLA cache (kimi-linear.cpp:412-478): deepseek2's absorbed attention
    without q_lora and without RoPE (``k_pe`` and ``q_pe`` are views of the projections), through
    :func:`~ggufx.analysis.memory.graph.models.deepseek2.mla_mha`."""
    sp = c.sp
    T = c.n_tokens
    nh = c.hp.n_head[il]
    p = f"blk.{il}."
    wk_b = _w(c, p + "attn_k_b.weight", il)
    kv_a = _w(c, p + "attn_kv_a_mqa.weight", il)
    rank = _w(c, p + "attn_kv_a_norm.weight", il).ne[0]  # kv_lora_rank
    n_rot = kv_a.ne[1] - rank
    nope = wk_b.ne[0]
    hk = nope + n_rot  # n_embd_head_k_mla
    q = g.mul_mat(f"q-{il}", _w(c, p + "attn_q.weight", il), x)
    kv_cmpr_pe = g.mul_mat(f"kv_cmpr_pe-{il}", kv_a, x)
    row = kv_cmpr_pe.nb[1]
    kv_cmpr = g.view(kv_cmpr_pe, (rank, T), (4, row))
    k_pe = g.view(kv_cmpr_pe, (n_rot, 1, T), (4, row, row))
    kv_cmpr = _norm(c, g, kv_cmpr, p + "attn_kv_a_norm.weight", il)
    qrow = 4 * hk
    q_nope = g.view(q, (nope, nh, T), (4, qrow, qrow * nh))
    q_pe = g.view(q, (n_rot, nh, T), (4, qrow, qrow * nh))
    absorbed = g.permute(g.mul_mat(f"q_nope_absorbed-{il}", wk_b, g.permute(q_nope, 0, 2, 1, 3)), 0, 2, 1, 3)
    qcur = g.new(f"Qcur-{il}", "CONCAT", "F32", (rank + n_rot, nh, T), absorbed, q_pe)
    kv_cmpr = g.reshape(kv_cmpr, rank, 1, T)
    kcur = g.new(f"Kcur-{il}", "CONCAT", "F32", (rank + n_rot, 1, T), kv_cmpr, k_pe)
    for t in (qcur, kv_cmpr, kcur):
        g.expand(t)
    cache, k = cache_k(c, g, f"cache_k_l{il}", rank + n_rot, _type(sp.type_k).name, il)
    g.expand(cache_write(c, g, cache, kcur, rank + n_rot, k_idxs))
    return mla_mha(c, g, qcur, k, mask, il, rank)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (kimi-linear.cpp:235-562): per layer the attention norm, KDA or MLA, the
    residual, the FFN norm, the dense FFN (leading layers) or the experts plus the shared expert; the
    output rows are picked in the last layer."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    ns = sp.n_streams
    mp = replace(moe_params(c), norm_w=True, n_groups=0)  # kimi-linear.cpp:530-542: normalized, no groups
    d = _kda_dims(c)
    last = hp.n_layer - 1
    x = _inp_embd(c, g)
    s_copy = g.input("rs_s_copy", "I32", sp.n_seq_max)  # get_n_rs of the full memory
    k_idxs = g.input("attn_inp_k_idxs", "I64", T)
    mask = g.input("attn_inp_kq_mask", "F16" if sp.flash_attn else "F32", sp.n_kv, T // ns, 1, ns)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        g.expand(cur)
        if hp.n_head_kv[il] == 0:
            cur = _kda(c, g, cur, il, s_copy, d)
        else:
            cur = _mla(c, g, cur, il, k_idxs, mask)
        if il == last:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _norm(c, g, ffn_inp, f"blk.{il}.ffn_norm.weight", il)
        if il < mp.n_lead:
            cur = ffn(c, g, cur, il)
        else:
            moe_out, routed = moe_ffn(c, g, cur, il, mp, mp.gating)
            shexp = ffn(c, g, cur, il, "_shexp", routed)
            cur = g.op(f"ffn_out-{il}", "ADD", moe_out, shexp)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    logits = g.mul_mat("result_output", _w(c, "output.weight", hp.n_layer), cur)
    logits.flags |= OUTPUT
    return logits


@dataclass(frozen=True, slots=True)
class KdaHeader:
    """What the graphs of the KDA/MLA hybrids (kimi-linear, Ling 2.5, Kimi-K3) read from the header."""

    n_embd: int
    d_conv: int  # ssm.conv_kernel
    head: int  # kda.head_dim
    n_head: int  # one head count for every layer
    n_lead: int  # leading_dense_block_count
    hp: Hparams


def kda_header(model: GGUFModel, n_trunk: int) -> KdaHeader | str:
    """The header checks those graphs share (the reason when a file fails one): the KDA convolution and
    head size, a gating ``build_moe_ffn`` builds, the expert counts where a trunk layer has experts, one
    positive head count."""
    md = model.metadata
    a = model.architecture or ""

    def get(key: str) -> int:
        return md.get_int(f"{a}.{key}") or 0

    E, d_conv, head = get("embedding_length"), get("ssm.conv_kernel"), get("kda.head_dim")
    if d_conv < 2 or head <= 0:
        return f"the graph needs {a}.ssm.conv_kernel >= 2 and a positive {a}.kda.head_dim"
    gating = get("expert_gating_func")
    if gating not in (SOFTMAX, SIGMOID, SOFTMAX_WEIGHT):
        return f"the graph needs {a}.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not {gating}"
    n_exp, n_used, n_lead = get("expert_count"), get("expert_used_count"), get("leading_dense_block_count")
    if n_lead < n_trunk and not 0 < n_used <= n_exp <= 1024:
        return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
    hp = hparams(model)
    n_head = hp.n_head[0] if hp.n_head else 0
    if n_head <= 0 or min(hp.n_head) != n_head:
        return f"the graph needs one positive {a}.attention.head_count for every layer"
    return KdaHeader(E, d_conv, head, n_head, n_lead, hp)


def unbuildable(model: GGUFModel) -> str | None:
    """Why the kimi-linear graph cannot be built from this file (None when it can): the KDA dimensions,
    the gating, the absorbed MLA form (legacy files with one ``attn_kv_b`` and MLA layers with q_lora are
    not simulated), every tensor the graph reads in the shape kimi-linear.cpp:34-173 creates it."""
    n_layer = model.metadata.get_int(f"{model.architecture}.block_count") or 0
    h = kda_header(model, n_layer)
    if isinstance(h, str):
        return h
    E, d_conv, head, n_head, n_lead, n_head_kv = h.n_embd, h.d_conv, h.head, h.n_head, h.n_lead, h.hp.n_head_kv
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    d_inner = head * n_head
    kda_2d = {"ssm_f_a": (E, head), "ssm_f_b": (head, d_inner), "ssm_beta": (E, n_head), "ssm_g_a": (E, head)}
    kda_2d |= {"ssm_g_b": (head, d_inner), "attn_q": (E, d_inner), "attn_k": (E, d_inner), "attn_v": (E, d_inner)}
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,)}
    for il in range(n_layer):
        p = f"blk.{il}."
        w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,), "ffn_norm.weight": (E,)}
        if not n_head_kv[il]:
            w |= {f"{n}.weight": ne for n, ne in kda_2d.items()}
            w |= {"ssm_dt.bias": (d_inner,), "ssm_norm.weight": (head,), "attn_output.weight": (d_inner, E)}
            for n in ("q", "k", "v"):
                conv = tensors.get(f"{p}ssm_conv1d_{n}.weight", ())
                if tuple(x for x in conv if x != 1) != (d_conv, d_inner) or conv[:1] != (d_conv,):
                    return f"the graph needs tensor {p}ssm_conv1d_{n}.weight of shape [{d_conv}, 1, {d_inner}]"
            if math.prod(tensors.get(p + "ssm_a", (0,))) != n_head:
                return f"the graph needs tensor {p}ssm_a of {n_head} values"
            if p + "attn_qkv.weight" in tensors:
                return "kimi-linear graphs with a fused attn_qkv projection are not simulated"
        else:
            if p + "attn_q_a.weight" in tensors or p + "attn_kv_b.weight" in tensors:
                return "kimi-linear graphs with q_lora or without the absorbed MLA tensors are not simulated"
            for n in ("attn_q", "attn_kv_a_mqa", "attn_kv_a_norm", "attn_k_b", "attn_v_b", "attn_output"):
                if p + n + ".weight" not in tensors:
                    return f"the graph needs tensor {p}{n}.weight, which the file lacks"
        need: tuple[str, ...] = ("ffn_gate", "ffn_up", "ffn_down")
        if il >= n_lead:
            need = ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
            need += ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp")
            if p + "exp_probs_b.bias" not in tensors:
                return f"the graph needs tensor {p}exp_probs_b.bias, which the file lacks"
        for n in need:
            if p + n + ".weight" not in tensors:
                return f"the graph needs tensor {p}{n}.weight, which the file lacks"
        shapes |= {p + n: ne for n, ne in w.items()}
    for name, shape in shapes.items():
        if name not in tensors:
            return f"the graph needs tensor {name}, which the file lacks"
        if tensors[name] != shape:
            return f"the graph needs tensor {name} of shape {list(shape)}, not {list(tensors[name])}"
    for name in ("token_embd.weight", "output.weight"):
        if name not in tensors:
            return f"the graph needs tensor {name}, which the file lacks"
    return None
