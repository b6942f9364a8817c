"""``kimi-k3`` (src/models/kimi-k3.cpp: Kimi-K3): kimi-linear's hybrid -- Kimi-delta-attention (KDA) layers
where ``head_count_kv`` is 0 and multi-head latent attention layers without RoPE on the K-only cache -- with
K3's parts: the cross-layer residual attention (``attn_res.block_size``: the raw input of every block's
first layer banked as a checkpoint, the attention and the FFN reading a softmax mix of the checkpoints and
the current stream, ``DSV4_HC_PRE`` over the stack), the latent MoE (the routed experts at
``expert_latent_length`` between ``ffn_routed_down`` and ``ffn_routed_up``, the router scoring the full
width), the situ activation (SCALE, TANH, SCALE, SIGMOID, MUL and the optional linear branch of the up
projection) in every FFN, the KDA decay gate with or without ``kda.gate_lower_bound``, one full-rank KDA
output gate (``ssm_g``) and the optional sigmoid gate of the MLA output (``attn_gate``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _norm, _w, _weight
from ggufx.analysis.memory.graph.models import deepseek2, qwen3next
from ggufx.analysis.memory.graph.models.bailingmoe3 import _conv_ok, mla
from ggufx.analysis.memory.graph.models.kimi_linear import _causal_conv, _Kda, _kda_dims, kda_header
from ggufx.analysis.memory.graph.models.qwen35 import _rs
from ggufx.model import GGUFModel


def _f(c: _Ctx, key: str) -> float:
    v = qwen3next.file_value(c, f"{c.hp.arch}.{key}")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


def _situ(c: _Ctx, g: _Graph, gate: _T, up: _T, il: int) -> _T:
    """``kimi_k3_situ`` / ``build_moe_ffn``'s LLM_FFN_SITU: ``beta*tanh(gate/beta) * sigmoid(gate)`` times
    ``up`` (``lb*tanh(up/lb)`` when ``activation.situ_linear_beta`` > 0)."""
    act = g.op(f"situ_scale-{il}", "SCALE", g.op(f"situ_tanh-{il}", "UNARY", g.op(f"situ_in-{il}", "SCALE", gate)))
    act = g.op(f"situ_gated-{il}", "MUL", act, g.op(f"situ_sigmoid-{il}", "UNARY", gate))
    if _f(c, "activation.situ_linear_beta") > 0.0:
        up = g.op(f"situ_up-{il}", "SCALE", g.op(f"situ_up_tanh-{il}", "UNARY", g.op(f"situ_up_in-{il}", "SCALE", up)))
    return g.op(f"situ-{il}", "MUL", act, up)


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int, part: str) -> _T:
    """The dense FFN (``part`` "") or the shared expert (``"_shexp"``): gate and up, situ, down."""
    b = f"blk.{il}.ffn_"
    gate = g.mul_mat(f"ffn_gate{part}-{il}", _w(c, f"{b}gate{part}.weight", il), cur)
    up = g.mul_mat(f"ffn_up{part}-{il}", _w(c, f"{b}up{part}.weight", il), cur)
    return g.mul_mat(f"ffn_down{part}-{il}", _w(c, f"{b}down{part}.weight", il), _situ(c, g, gate, up, il))


class _LatentExperts:
    """The graph as :func:`~.deepseek2.moe_ffn` sees it, but for the router's logits, which score the
    full-width input (``build_latent_moe`` passes them in as ``probs_in``), and the experts' GLU, which
    is the situ activation: everything else is the graph's."""

    def __init__(self, c: _Ctx, g: _Graph, il: int, identity: _T) -> None:
        self._c, self._g, self._il, self._identity = c, g, il, identity

    def __getattr__(self, name: str) -> Any:
        return getattr(self._g, name)

    def mul_mat(self, name: str, w: _T, x: _T) -> _T:
        if name == f"ffn_moe_logits-{self._il}":
            x = self._identity
        return self._g.mul_mat(name, w, x)

    def new(self, name: str, op: str, type_: str, ne: tuple[int, ...], *src: _T) -> _T:
        if op != "GLU" or name != f"ffn_moe_swiglu-{self._il}":
            return self._g.new(name, op, type_, ne, *src)
        return _situ(self._c, self._g, src[0], src[1], self._il)


def _latent_moe(c: _Ctx, g: _Graph, cur: _T, il: int, mp: deepseek2.MoeParams) -> _T:
    """``build_latent_moe`` (kimi-k3.cpp:560-610): the input projected down to the latent width, the
    routed experts there (the router over the full-width input, situ), their optional norm, the
    projection back up; plus the shared expert over the full-width input."""
    p = f"blk.{il}."
    down = _weight(c, p + "ffn_routed_down.weight", il)
    routed_in = g.mul_mat(f"ffn_routed_down-{il}", down, cur) if down is not None else cur
    out, _ = deepseek2.moe_ffn(c, cast(_Graph, _LatentExperts(c, g, il, cur)), routed_in, il, mp, mp.gating)
    if _weight(c, p + "ffn_routed_norm.weight", il) is not None:
        out = _norm(c, g, out, p + "ffn_routed_norm.weight", il)
    up = _weight(c, p + "ffn_routed_up.weight", il)
    if up is not None:
        out = g.mul_mat(f"ffn_routed_up-{il}", up, out)
    if _weight(c, p + "ffn_gate_shexp.weight", il) is not None:
        out = g.op(f"ffn_out-{il}", "ADD", out, _ffn(c, g, cur, il, "_shexp"))
    return out


def kda(c: _Ctx, g: _Graph, x: _T, il: int, s_copy: _T, d: _Kda) -> _T:
    """``build_kda_layer`` (kimi-k3.cpp:400-470): the convolved Q, K and V, the decay gate (``lower_bound *
    sigmoid(-(f_b(f_a(x)) + dt_bias) * A)`` when the file sets the bound, else kimi-linear's softplus), beta,
    the L2-normed Q and K, the fused ``GATED_DELTA_NET`` (the state written back before the output's CONT),
    the RMS norm of each head times the sigmoid of ``ssm_g(x)`` (glm5-next.cpp:690-780: of ``g_b(g_a(x))``, its
    low-rank gate), the output projection; glm5-next builds the same layer."""
    T, ns = c.n_tokens, c.sp.n_seq_max
    nst = T // ns
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
    a = g.reshape(_w(c, p + "ssm_a", il), 1, H, 1)
    if _lower_bound(c):
        g1 = g.op(f"kda_g1-{il}", "MUL", g.reshape(g1, S, H, T), a)
        g1 = g.op(f"kda_g1_sigmoid-{il}", "UNARY", g.op(f"kda_g1_neg-{il}", "SCALE", g1))
        g1 = g.op(f"kda_g1-{il}", "SCALE", g1)
    else:
        g1 = g.reshape(g.op(f"g1_softplus-{il}", "UNARY", g1), S, H, T)
        g1 = g.op(f"kda_g1-{il}", "MUL", g1, a)
    g1 = g.reshape(g1, S, H, nst, ns)
    beta = g.mul_mat(f"kda_beta-{il}", _w(c, p + "ssm_beta.weight", il), x)
    beta = g.op(f"kda_beta-{il}", "UNARY", g.reshape(beta, 1, H, nst, ns))
    state = g.reshape(_rs(c, g, cache_s, s_copy, d.n_embd_s), S, S, H, ns)
    q = g.op(f"q_l2-{il}", "SCALE", g.new(f"q_norm-{il}", "RMS_NORM", "F32", q.ne, q))
    k = g.op(f"k_l2-{il}", "SCALE", g.new(f"k_norm-{il}", "RMS_NORM", "F32", k.ne, k))
    gdn = g.new(f"gdn-{il}", "GATED_DELTA_NET", "F32", (S * H, T + S * ns), q, k, v, g1, beta, state)
    out = g.view(gdn, (S, H, nst, ns), (4, 4 * S, 4 * S * H))
    new_state = g.view(gdn, (d.n_embd_s, ns), (4, 4 * d.n_embd_s))
    dst = g.view(cache_s, (d.n_embd_s, ns), cache_s.nb[:2])
    g.cpy(new_state, dst)
    out = g.new(f"kda_scan_out-{il}", "CONT", "F32", out.ne, out)
    if _weight(c, p + "ssm_g_a.weight", il) is not None:  # glm5-next: the low-rank output gate g_b(g_a(x))
        g_a = g.mul_mat(f"g_a-{il}", _w(c, p + "ssm_g_a.weight", il), x)
        g2 = g.reshape(g.mul_mat(f"kda_g2-{il}", _w(c, p + "ssm_g_b.weight", il), g_a), S, H, T)
    else:
        g2 = g.reshape(g.mul_mat(f"kda_g2-{il}", _w(c, p + "ssm_g.weight", il), x), S, H, T)
    normed = _norm(c, g, g.reshape(out, S, H, T), p + "ssm_norm.weight", il)
    gated = g.op(f"kda_gated-{il}", "MUL", normed, g.op(f"kda_gate-{il}", "UNARY", g2))
    gated = g.new(f"kda_gated_cont-{il}", "CONT", "F32", (d.d_inner, T), gated)
    return g.mul_mat(f"kda_out-{il}", _w(c, p + "attn_output.weight", il), gated)


def _lower_bound(c: _Ctx) -> bool:
    """``kda_gate_lower_bound > -INFINITY``: the key is set (its default is -INFINITY)."""
    return qwen3next.file_value(c, f"{c.hp.arch}.kda.gate_lower_bound") is not None


def _mla(c: _Ctx, g: _Graph, x: _T, il: int, k_idxs: _T, mask: _T) -> _T:
    """``build_mla_layer`` (kimi-k3.cpp:476-555): the absorbed MLA without RoPE, the heads' output times
    the sigmoid of ``attn_gate(x)`` where the file has it, the output projection."""
    p = f"blk.{il}."
    cur, _ = mla(c, g, x, il, k_idxs, mask, rope=False)
    gate_w = _weight(c, p + "attn_gate.weight", il)
    if gate_w is not None:
        gate = g.op(f"mla_gate-{il}", "UNARY", g.mul_mat(f"mla_gate-{il}", gate_w, x))
        cur = g.op(f"mla_gated-{il}", "MUL", cur, gate)
    return g.mul_mat(f"mla_out-{il}", _w(c, p + "attn_output.weight", il), cur)


class _Res:
    """The cross-layer residual attention's checkpoint stack (kimi-k3.cpp:186-235)."""

    def __init__(self, c: _Ctx, g: _Graph) -> None:
        self.c, self.g = c, g
        self.stack: _T | None = None

    def push(self, cur: _T) -> None:
        """``res_push``: the stream as one more checkpoint, ``[n_embd, n_ckpt, n_tokens]``."""
        E, T = cur.ne[0], cur.ne[1]
        ckpt = self.g.reshape(cur, E, 1, T)
        s = self.stack
        self.stack = ckpt if s is None else self.g.new("resi_stack", "CONCAT", "F32", (E, s.ne[1] + 1, T), s, ckpt)

    def mix(self, cur: _T, score: str, il: int) -> _T:
        """``res_mix``: the checkpoints (RMS-normed, scored by ``score``) and the current stream (scored
        apart), their softmax, ``DSV4_HC_PRE`` of the stack with the checkpoints' weights plus the stream
        times its weight."""
        src = self.stack
        if src is None:
            return cur
        g, T, n = self.g, cur.ne[1], src.ne[1]
        w = _w(self.c, score, il)
        sc_src = g.op(f"res_src_norm-{il}", "RMS_NORM", src)
        sc_src = g.op(f"res_src_scored-{il}", "MUL", sc_src, w)
        sc_src = g.reshape(g.new(f"res_src_sum-{il}", "SUM_ROWS", "F32", (1, n, T), sc_src), n, T)
        sc_cur = g.op(f"res_cur_norm-{il}", "RMS_NORM", cur)
        sc_cur = g.op(f"res_cur_scored-{il}", "MUL", sc_cur, w)
        sc_cur = g.new(f"res_cur_sum-{il}", "SUM_ROWS", "F32", (1, T), sc_cur)
        scores = g.new(f"res_scores-{il}", "CONCAT", "F32", (n + 1, T), sc_src, sc_cur)
        probs = g.op(f"res_probs-{il}", "SOFT_MAX", scores)
        p_src = g.new(f"res_p_src-{il}", "CONT", "F32", (n, T), g.view(probs, (n, T), probs.nb[:2]))
        p_cur = g.new(f"res_p_cur-{il}", "CONT", "F32", (1, T), g.view(probs, (1, T), probs.nb[:2]))
        out = g.new(f"res_mix-{il}", "DSV4_HC_PRE", "F32", (cur.ne[0], T), src, p_src)
        return g.op(f"res_out-{il}", "ADD", out, g.op(f"res_cur-{il}", "MUL", cur, p_cur))


def layer_kind(il: int) -> int:
    """Every layer its own kind: the checkpoint stack grows by one every ``attn_res.block_size`` layers, so
    no block of layers allocates as the one before it and the shortened replay would only be tried and
    refused (graphsim's layer signatures do not see the stack)."""
    return il


def build(c: _Ctx, g: _Graph) -> _T:
    """kimi-k3.cpp ``graph::graph``: per layer the residual mix, the checkpoint, the attention norm
    (expanded), KDA or MLA, the stream, the FFN's mix and norm, the dense FFN or the latent MoE, the
    stream; then the last mix, the rows, the output norm and the head."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    ns = sp.n_streams
    mp = replace(deepseek2.moe_params(c), n_used=qwen3next.n_expert_used(c), n_groups=0)
    d = _kda_dims(c)
    bs = int(_f(c, "attn_res.block_size"))
    x = _inp_embd(c, g)
    s_copy = g.input("rs_s_copy", "I32", sp.n_seq_max)  # build_inp_mem_hybrid_k: the recurrent input first
    k_idxs = g.input("attn_inp_k_idxs", "I64", T)
    mask = g.input("attn_inp_kq_mask", "F16" if sp.flash_attn else "F32", sp.n_kv, T // ns, 1, ns)
    out_ids = g.input("out_ids", "I32", n_out)
    res = _Res(c, g)
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        prefix = x
        cur = res.mix(prefix, b + "attn_res_score.weight", il) if bs > 0 else prefix
        banked = bs > 0 and il % bs == 0
        if banked:
            res.push(prefix)
        cur = _norm(c, g, cur, b + "attn_norm.weight", il)
        g.expand(cur)
        if hp.n_head_kv[il] == 0:
            cur = kda(c, g, cur, il, s_copy, d)
        else:
            cur = _mla(c, g, cur, il, k_idxs, mask)
        prefix = cur if banked else g.op(f"prefix_sum_attn-{il}", "ADD", prefix, cur)
        cur = res.mix(prefix, b + "ffn_res_score.weight", il) if bs > 0 else prefix
        cur = _norm(c, g, cur, b + "ffn_norm.weight", il)
        cur = _ffn(c, g, cur, il, "") if il < mp.n_lead else _latent_moe(c, g, cur, il, mp)
        x = g.op(f"l_out-{il}", "ADD", prefix, cur)
    g.at(GLOBAL)
    cur = res.mix(x, "output_res_score.weight", hp.n_layer) if bs > 0 else x
    cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
    cur = g.op("norm", "RMS_NORM", cur)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    logits = g.mul_mat("result_output", _w(c, "output.weight", hp.n_layer), cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Why the kimi-k3 graph cannot be built from this file (None when it can): the KDA dimensions, the
    gating, the expert counts, the absorbed MLA (a legacy ``attn_kv_b`` is not simulated), and per layer
    the tensors the graph reads (the KDA ones in the shapes kimi-k3.cpp:80-106 creates them)."""
    md = model.metadata
    a = model.architecture or ""

    def get(key: str) -> int:
        return md.get_int(f"{a}.{key}") or 0

    n_layer = get("block_count")
    h = kda_header(model, n_layer)
    if isinstance(h, str):
        return h
    E, d_conv, head, n_head, n_lead, hp = h.n_embd, h.d_conv, h.head, h.n_head, h.n_lead, h.hp
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    d_inner = head * n_head
    kda: dict[str, tuple[int, ...]] = {"attn_q.weight": (E, d_inner), "attn_k.weight": (E, d_inner)}
    kda |= {"attn_v.weight": (E, d_inner), "ssm_f_a.weight": (E, head), "ssm_f_b.weight": (head, d_inner)}
    kda |= {"ssm_beta.weight": (E, n_head), "ssm_g.weight": (E, d_inner), "ssm_a": (n_head,)}
    kda |= {"ssm_dt.bias": (d_inner,), "ssm_norm.weight": (head,), "attn_output.weight": (d_inner, E)}
    res = get("attn_res.block_size") > 0
    need = ["token_embd.weight", "output_norm.weight", "output.weight"]
    need += ["output_res_score.weight"] if res else []
    for il in range(min(n_layer, 513)):
        p = f"blk.{il}."
        roles = ["attn_norm.weight", "ffn_norm.weight"]
        roles += ["attn_res_score.weight", "ffn_res_score.weight"] if res else []
        if hp.n_head_kv[il] == 0:
            for n, shape in kda.items():
                if tensors.get(p + n) != shape:
                    return f"the graph needs tensor {p}{n} of shape {list(shape)}"
            for n in ("q", "k", "v"):
                if not _conv_ok(tensors.get(f"{p}ssm_conv1d_{n}.weight", ()), d_conv, d_inner):
                    return f"the graph needs tensor {p}ssm_conv1d_{n}.weight of shape [{d_conv}, 1, {d_inner}, 1]"
        else:
            if p + "attn_kv_b.weight" in tensors:
                return "kimi-k3 graphs without the absorbed MLA tensors (attn_kv_b) are not simulated"
            q = ["attn_q_a.weight", "attn_q_a_norm.weight", "attn_q_b.weight"]
            roles += q if p + "attn_q_a_norm.weight" in tensors else ["attn_q.weight"]
            roles += [f"{n}.weight" for n in ("attn_kv_a_mqa", "attn_kv_a_norm", "attn_k_b", "attn_v_b")]
            roles.append("attn_output.weight")
        if il < n_lead:
            roles += ["ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"]
        else:
            roles += ["ffn_gate_inp.weight", "exp_probs_b.bias"]
            for r in ("gate", "up", "down"):
                if len(tensors.get(f"{p}ffn_{r}_exps.weight", ())) != 3:
                    return f"the graph needs a three-dimensional tensor {p}ffn_{r}_exps.weight"
            shexp = [f"ffn_{r}_shexp.weight" for r in ("gate", "up", "down")]
            if p + "ffn_gate_shexp.weight" in tensors:
                roles += shexp
        need += [p + r for r in roles]
    missing = next((n for n in need if n not in tensors), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
