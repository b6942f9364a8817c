"""``clef`` (src/models/clef.cpp): qwen35's backbone without a memory module (llama.cpp makes none for CLEF): gated
M-RoPE attention over the micro-batch's own K and V (``build_attn_inp_causal``: a ``[T, T]`` mask, K and V cast to
F16 for flash attention), Gated DeltaNet layers whose convolution and delta-rule states start from zero FILLs and
are not kept, dense SwiGLU FFNs; then the decision head (``build_head``: the prompt projected into a memory, the
questions' and options' span means, routing blocks where the options read the prompt, joint blocks where the
questions read each other and the prompt, the prior and joint scores), padded to one score per token.

The graph is expanded once, from its output (besides the attention's Q, K, V and output, as ``build_attn`` does),
so its order is the depth-first order from the scores. The reserve's micro-batch has no decision order: one empty
question with one empty option (``clef_get_spans``)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _norm, _w, model_of
from ggufx.analysis.memory.graph.models._dense import tied_head
from ggufx.analysis.memory.graph.models.qwen3next import _qkv
from ggufx.analysis.memory.graph.models.qwen35 import _gdn_dims
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel


def _gdn(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    """``build_layer_attn_linear`` (clef.cpp:420-500): qwen35's Gated DeltaNet over the whole micro-batch, its
    convolution columns and its state zero FILLs, the fused ``GATED_DELTA_NET``, the gated norm."""
    model = model_of(c)
    d = _gdn_dims(model)
    assert not isinstance(d, str)
    T = c.n_tokens
    p = f"blk.{il}."
    qkv = g.mul_mat(f"qkv_mixed-{il}", _w(c, p + "attn_qkv.weight", il), x)
    channels = qkv.ne[0]
    qkv = g.reshape(qkv, channels, T, 1)
    z = g.mul_mat(f"z-{il}", _w(c, p + "attn_gate.weight", il), x)
    beta = g.op(
        f"beta-{il}",
        "UNARY",
        g.reshape(g.mul_mat(f"beta-{il}", _w(c, p + "ssm_beta.weight", il), x), 1, d.n_v_heads, T, 1),
    )
    alpha = g.reshape(g.mul_mat(f"alpha-{il}", _w(c, p + "ssm_alpha.weight", il), x), d.n_v_heads, T, 1)
    gate = g.op(f"gate-{il}", "UNARY", g.op(f"alpha_biased-{il}", "ADD", alpha, _w(c, p + "ssm_dt.bias", il)))
    gate = g.reshape(g.op(f"gate-{il}", "MUL", gate, _w(c, p + "ssm_a", il)), 1, d.n_v_heads, T, 1)
    zero_conv = g.leaf(f"conv_states-{il}", "F32", (d.d_conv - 1, channels, 1))
    conv_states = g.new(f"conv_states-{il}", "FILL", "F32", zero_conv.ne, zero_conv)
    conv_in = g.new(
        f"conv_input-{il}", "CONCAT", "F32", (d.d_conv - 1 + T, channels, 1), conv_states, g.permute(qkv, 1, 0, 2, 3)
    )
    out = g.new(f"conv_output-{il}", "SSM_CONV", "F32", (channels, T, 1), conv_in, _w(c, p + "ssm_conv1d.weight", il))
    out = g.op(f"conv_output_silu-{il}", "UNARY", out)
    row = out.nb[1]
    heads = []
    for _ in range(2):  # build_gdn_l2_norm of Q and K: RMS_NORM, SCALE (the fused GDN: no repeat)
        qk = g.view(out, (d.head_k, d.n_k_heads, T, 1), (4, 4 * d.head_k, row, row * T))
        heads.append(g.op(f"qk_l2-{il}", "SCALE", g.new(f"qk_norm-{il}", "RMS_NORM", "F32", qk.ne, qk)))
    S, H = d.head_v, d.n_v_heads
    v = g.view(out, (S, H, T, 1), (4, 4 * S, row, row * T))
    zero_state = g.leaf(f"state-{il}", "F32", (S, S, H, 1))
    state = g.new(f"state-{il}", "FILL", "F32", zero_state.ne, zero_state)
    gdn = g.new(f"gdn-{il}", "GATED_DELTA_NET", "F32", (S * H, T + S), heads[0], heads[1], v, gate, beta, state)
    o = g.view(gdn, (S, H, T, 1), (4, 4 * S, 4 * S * H))
    o = _norm(c, g, o, p + "ssm_norm.weight", il)
    o = g.op(f"attn_gated-{il}", "MUL", o, g.op(f"z_silu-{il}", "UNARY", g.reshape(z, S, H, T, 1)))
    o = g.mul_mat(f"linear_attn_out-{il}", _w(c, p + "ssm_out.weight", il), g.reshape(o, S * H, T, 1))
    return g.reshape(o, c.hp.n_embd, T)


def _attn(c: _Ctx, g: _Graph, x: _T, il: int, mask: _T) -> _T:
    """``build_layer_attn`` (clef.cpp:358-418) with ``build_attn`` over the micro-batch alone (llama-graph.cpp
    ``llm_graph_input_attn_no_cache``): Q, K and V expanded, ``build_attn_mha`` over them (K and V cast to F16 for
    flash attention; V made contiguous transposed without), its output expanded; the gate's sigmoid, the output."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd = hp.n_head[il], hp.n_head_kv[il], hp.head_k
    p = f"blk.{il}."
    pos = c.pos
    assert pos is not None
    qg, k, v = _qkv(c, g, x, il)
    q = g.view(qg, (hd, nh, T), (4, 8 * hd, 8 * hd * nh))
    q = _norm(c, g, q, p + "attn_q_norm.weight", il)
    k = _norm(c, g, g.reshape(k, hd, nkv, T), p + "attn_k_norm.weight", il)
    gate = g.new(f"gate-{il}", "CONT", "F32", (hd * nh, T), g.view(qg, (hd, nh, T), (4, 8 * hd, 8 * hd * nh)))
    v = g.reshape(v, hp.head_v, nkv, T)
    q = g.new(f"Qcur-{il}", "ROPE", "F32", q.ne, q, pos)
    k = g.new(f"Kcur-{il}", "ROPE", "F32", k.ne, k, pos)
    for t in (q, k, v):
        g.expand(t)
    qp, kp, vp = g.permute(q, 0, 2, 1, 3), g.permute(k, 0, 2, 1, 3), g.permute(v, 0, 2, 1, 3)
    if c.sp.flash_attn:
        k16 = g.new(f"{k.name} (copy)", "CPY", "F16", kp.ne, kp)
        k16.src.append(k16)
        v16 = g.new(f"{v.name} (copy)", "CPY", "F16", vp.ne, vp)
        v16.src.append(v16)
        out = g.new(f"fattn-{il}", "FLASH_ATTN_EXT", "F32", (hp.head_v, nh, T, 1), qp, k16, v16, mask)
        cur = g.reshape(out, hp.head_v * nh, T)
    else:
        kq = g.new(f"kq-{il}", "MUL_MAT", "F32", (T, T, nh, 1), kp, qp)
        kq = g.op(f"kq_soft_max-{il}", "SOFT_MAX", kq, mask)
        vt = g.new(f"v_cont-{il}", "CONT", "F32", (T, hp.head_v, nkv, 1), g.permute(vp, 1, 0, 2, 3))
        kqv = g.new(f"kqv-{il}", "MUL_MAT", "F32", (hp.head_v, T, nh, 1), vt, kq)
        cur = g.new(f"kqv_out-{il}", "CONT", "F32", (hp.head_v * nh, T), g.permute(kqv, 0, 2, 1, 3))
    g.expand(cur)
    cur = g.op(f"attn_gated-{il}", "MUL", cur, g.op(f"gate_sigmoid-{il}", "UNARY", gate))
    return g.mul_mat(f"attn_output-{il}", _w(c, p + "attn_output.weight", il), cur)


def _head_norm(c: _Ctx, g: _Graph, x: _T, name: str) -> _T:
    """``build_head_norm``: ``build_norm`` with LLM_NORM, a weight and a bias, of no layer (nothing pinned)."""
    cur = g.op("norm", "NORM", x)
    cur = g.op("norm_w", "MUL", cur, _w(c, name + ".weight", -1))
    return g.op("norm_b", "ADD", cur, _w(c, name + ".bias", -1))


def _lin(c: _Ctx, g: _Graph, name: str, x: _T) -> _T:
    """A projection plus its bias."""
    return g.op(name, "ADD", g.mul_mat(name, _w(c, name + ".weight", -1), x), _w(c, name + ".bias", -1))


def _head_attn(c: _Ctx, g: _Graph, q: _T, kv: _T, prefix: str, n_head: int) -> _T:
    """``build_head_attn`` (clef.cpp:502-528): biased Q, K, V projections, heads of ``n_embd_h / n_head``, V made
    contiguous ``[n_kv, d_head, n_head]``, softmax without a mask, the heads made contiguous, the biased output."""
    e, n_q, n_kv = q.ne[0], q.ne[1], kv.ne[1]
    dh = e // n_head
    qc = g.permute(g.reshape(_lin(c, g, prefix + "_q", q), dh, n_head, n_q), 0, 2, 1, 3)
    kc = g.permute(g.reshape(_lin(c, g, prefix + "_k", kv), dh, n_head, n_kv), 0, 2, 1, 3)
    vc = g.permute(g.reshape(_lin(c, g, prefix + "_v", kv), dh, n_head, n_kv), 1, 2, 0, 3)
    vc = g.new(prefix + "_vc", "CONT", "F32", (n_kv, dh, n_head), vc)
    kq = g.op(prefix + "_kq", "SOFT_MAX", g.new(prefix + "_kq", "MUL_MAT", "F32", (n_kv, n_q, n_head), kc, qc))
    cur = g.new(prefix + "_kqv", "MUL_MAT", "F32", (dh, n_q, n_head), vc, kq)
    cur = g.new(prefix + "_out", "CONT", "F32", (e, n_q), g.permute(cur, 0, 2, 1, 3))
    return _lin(c, g, prefix + "_o", cur)


def _head_ffn(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    p = f"dec.blk.{il}."
    cur = _head_norm(c, g, x, p + "ffn_norm")
    cur = g.op("gelu", "UNARY", _lin(c, g, p + "ffn_up", cur))
    return _lin(c, g, p + "ffn_down", cur)


def _l2(g: _Graph, x: _T) -> _T:
    return g.op("l2", "L2_NORM", x)


def _head(c: _Ctx, g: _Graph, hidden: _T, n_routing: int, n_joint: int, n_head: int) -> _T:
    """``build_head`` (clef.cpp:537-645) for the reserve's one question and one option."""
    T, E = c.n_tokens, c.hp.n_embd
    nq = no = 1
    tokens = g.input("dec_tokens", "I32", T)
    pool_q = g.input("pool_q", "F32", T, nq)
    pool_o = g.input("pool_o", "F32", T, no)
    qtype = g.input("question_type", "I32", nq)
    opt_q = g.input("option_question", "I32", no)
    opt_mask = g.input("option_mask", "F32", no, nq)
    status = g.input("status", "F32", 1)
    hidden = _head_norm(c, g, hidden, "decision.hidden_norm")
    memory = g.mul_mat("memory", _w(c, "decision.proj_memory.weight", -1), hidden)
    glob = g.view(hidden, (E, 1), hidden.nb[:2])
    hidden_t = g.new("hidden_t", "CONT", "F32", (T, E), g.permute(hidden, 1, 0, 2, 3))
    question = g.mul_mat("question", hidden_t, pool_q)
    opt_ctx = g.mul_mat("opt_ctx", hidden_t, pool_o)
    # ``model.output``: output.weight, else the token embeddings' copy on the output layer's buffer type
    # (TENSOR_DUPLICATED), not the input layer's host copy: on a GPU the rows are read there
    lexical = g.new("lexical", "GET_ROWS", "F32", (E, T), tied_head(c), tokens)
    lexical = g.mul_mat("lexical", g.new("lexical_t", "CONT", "F32", (T, E), g.permute(lexical, 1, 0, 2, 3)), pool_o)
    options = g.mul_mat("options", _w(c, "decision.proj_option_context.weight", -1), opt_ctx)
    options = g.op(
        "options", "ADD", options, g.mul_mat("opt_lex", _w(c, "decision.proj_option_lexical.weight", -1), lexical)
    )
    oq = g.mul_mat("opt_q", _w(c, "decision.proj_option_question.weight", -1), question)
    options = g.op("options", "ADD", options, g.new("opt_q_rows", "GET_ROWS", "F32", (oq.ne[0], no), oq, opt_q))
    for il in range(n_routing):
        p = f"dec.blk.{il}."
        cur = _head_attn(
            c,
            g,
            _head_norm(c, g, options, p + "cross_attn_norm"),
            _head_norm(c, g, memory, p + "cross_attn_norm_kv"),
            p + "cross_attn",
            n_head,
        )
        options = g.op("options", "ADD", options, cur)
        options = g.op("options", "ADD", options, _head_ffn(c, g, options, il))
    fields = g.mul_mat("fields", _w(c, "decision.proj_question.weight", -1), question)
    eh = fields.ne[0]
    weights = g.mul_mat("weights", options, fields)
    weights = g.op("weights", "SOFT_MAX", g.op("weights", "ADD", g.op("weights", "SCALE", weights), opt_mask))
    summary = g.mul_mat("summary", g.new("options_t", "CONT", "F32", (no, eh), g.permute(options, 1, 0, 2, 3)), weights)
    fields = g.op("fields", "ADD", fields, _head_norm(c, g, summary, "decision.option_summary_norm"))
    fields = g.op("fields", "ADD", fields, g.mul_mat("glob", _w(c, "decision.proj_global.weight", -1), glob))
    types = _w(c, "token_types.weight", -1)
    fields = g.op("fields", "ADD", fields, g.new("types", "GET_ROWS", "F32", (types.ne[0], nq), types, qtype))
    for il in range(n_routing, n_routing + n_joint):
        p = f"dec.blk.{il}."
        cur = _head_norm(c, g, fields, p + "attn_norm")
        fields = g.op("fields", "ADD", fields, _head_attn(c, g, cur, cur, p + "attn", n_head))
        cur = _head_norm(c, g, fields, p + "cross_attn_norm")
        fields = g.op("fields", "ADD", fields, _head_attn(c, g, cur, memory, p + "cross_attn", n_head))
        fields = g.op("fields", "ADD", fields, _head_ffn(c, g, fields, il))
    fields = _head_norm(c, g, fields, "decision.field_norm")
    anchor = _l2(g, g.op("anchor", "ADD", question, glob))
    anchor = g.new("anchor", "GET_ROWS", "F32", (E, no), anchor, opt_q)
    prior = g.new("prior", "SUM_ROWS", "F32", (1, no), g.op("prior", "MUL", _l2(g, lexical), anchor))
    options = _head_norm(c, g, options, "decision.option_norm")
    field = g.new("field", "GET_ROWS", "F32", (eh, no), fields, opt_q)
    cosine = g.new("cosine", "SUM_ROWS", "F32", (1, no), g.op("cosine", "MUL", _l2(g, field), _l2(g, options)))
    features = g.new("features", "CONCAT", "F32", (2 * eh, no), field, options)
    features = g.new("features", "CONCAT", "F32", (3 * eh, no), features, g.op("fo", "MUL", field, options))
    diff = g.op("diff", "UNARY", g.op("diff", "SUB", field, options))  # ggml_abs
    features = g.new("features", "CONCAT", "F32", (4 * eh, no), features, diff)
    residual = g.op("residual", "UNARY", _lin(c, g, "decision.scorer", features))  # ggml_gelu_erf
    residual = _lin(c, g, "decision.scorer_out", residual)
    scales = _w(c, "decision.scales", -1)
    joint = g.op("joint", "ADD", g.op("joint", "MUL", cosine, g.view(scales, (1,))), residual)
    out = g.op(
        "scores",
        "ADD",
        g.op("prior", "MUL", prior, g.view(scales, (1,))),
        g.op("joint", "MUL", joint, g.view(scales, (1,))),
    )
    out = g.new("scores", "PAD", "F32", (1, T), out)
    return g.op("result_decision", "ADD", out, status)


def build(c: _Ctx, g: _Graph) -> _T:
    """The scores (clef.cpp:243-316): the backbone's layers, the output norm, the decision head, one score per
    token (``t_embd``)."""
    hp, sp, T = c.hp, c.sp, c.n_tokens
    md = model_of(c).metadata
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T * 4)  # M-RoPE: 4 positions per token
    mask = g.input("self_kq_mask", "F16" if sp.flash_attn else "F32", T, T, 1, 1)
    for p, il in enumerate(c.layers):
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        if f"blk.{il}.ssm_a" in c.by_name:
            cur = _gdn(c, g, cur, il)
        else:
            cur = _attn(c, g, cur, il, mask)
        cur = g.op(f"attn_residual-{il}", "ADD", cur, inp_sa)
        ffn_res = cur
        cur = _norm(c, g, cur, f"blk.{il}.post_attention_norm.weight", il)
        up = g.mul_mat(f"ffn_up-{il}", _w(c, f"blk.{il}.ffn_up.weight", il), cur)
        gate = g.mul_mat(f"ffn_gate-{il}", _w(c, f"blk.{il}.ffn_gate.weight", il), cur)
        cur = g.mul_mat(
            f"ffn_out-{il}",
            _w(c, f"blk.{il}.ffn_down.weight", il),
            g.new(f"ffn_swiglu-{il}", "GLU", "F32", gate.ne, gate, up),
        )
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_res)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    n_routing = md.get_int(f"{hp.arch}.decision.routing_block_count") or 0
    n_joint = md.get_int(f"{hp.arch}.decision.block_count") or 0
    n_head = md.get_int(f"{hp.arch}.decision.head_count") or 1
    out = _head(c, g, cur, n_routing, n_joint, n_head)
    out.flags |= OUTPUT
    return out


def unbuildable(model: GGUFModel) -> str | None:
    """Why the clef graph cannot be built from this file (None when it can): the Gated DeltaNet dimensions, the
    decision head's counts and tensors (clef.cpp:7-96)."""
    md = model.metadata
    a = model.architecture or "clef"
    d = _gdn_dims(model)
    if isinstance(d, str):
        return d
    hp = hparams(model)
    if hp.head_k <= 0 or hp.head_k != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length > 0"
    names = {t.name for t in model.tensors}
    heads = md.get_int(f"{a}.decision.head_count") or 0
    n_blocks = (md.get_int(f"{a}.decision.routing_block_count") or 0) + (md.get_int(f"{a}.decision.block_count") or 0)
    mem = next((t for t in model.tensors if t.name == "decision.proj_memory.weight"), None)
    if mem is None or heads <= 0 or mem.shape[1] % heads:
        return "the graph needs decision.proj_memory.weight and a decision.head_count dividing its width"
    need = ["token_embd.weight", "output_norm.weight", "decision.scales", "token_types.weight"]
    need += [
        f"decision.{n}.weight"
        for n in ("hidden_norm", "option_summary_norm", "field_norm", "option_norm", "scorer", "scorer_out")
    ]
    need += [
        f"decision.proj_{n}.weight"
        for n in ("question", "option_question", "global", "option_context", "option_lexical")
    ]
    need += [
        f"dec.blk.{il}.{n}.weight"
        for il in range(n_blocks)
        for n in ("cross_attn_norm", "cross_attn_q", "cross_attn_o", "ffn_up", "ffn_down")
    ]
    for il in range(hp.n_layer):
        need += [f"blk.{il}.{n}.weight" for n in ("attn_norm", "post_attention_norm", "ffn_up", "ffn_gate", "ffn_down")]
    missing = next((x for x in need if x not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
