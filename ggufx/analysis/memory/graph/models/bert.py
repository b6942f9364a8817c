"""``bert``, ``nomic-bert``, ``nomic-bert-moe``, ``jina-bert-v2`` and ``jina-bert-v3`` (src/models/bert.cpp, whose graph the others take:
``using graph = llama_model_bert::graph``): the embedding encoders (bge, all-MiniLM, nomic-embed-text v1/v1.5
and v2-moe, jina-embeddings v2 and v3). llama.cpp makes no memory
for them (create_memory: ``res = nullptr``), so the attention runs over the micro-batch alone
(``build_attn_inp_no_cache``: a ``[n_tokens, n_tokens]`` mask, no causal rule) and ``build_attn_mha`` casts K and V
to F16 for flash attention (llama-graph.cpp:2726-2733).

The graph: the token rows, plus the first token-type row, plus (bert) the learned positions; a LayerNorm; per layer
Q, K, V (separate with biases, or a fused ``attn_qkv``), jina-v2's optional Q/K LayerNorms, RoPE (nomic, jina-v3;
jina-v2 has ALiBi and no positions), the attention and its output, the residual, ``attn_output_norm`` (jina-v2: the
input re-added and ``attn_norm_2`` when present), the FFN (bert, jina-v3: up + bias, GELU, down + bias; nomic:
SwiGLU without biases; nomic-moe: every ``moe_every_n_layers``-th layer from layer 1 a GELU mixture of experts,
the others bert's FFN; jina-v2: GEGLU over a double-width up, or over gate and up, or GELU), the residual, ``layer_output_norm``; the last layer gathers the output rows before its residual. The result is
``t_embd`` (no logits; pooling is added only with ``--embedding``, which llama-completion does not set)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import (
    _Ctx,
    _inp_embd,
    _proj,
    _w,
    _weight,
    attn_no_flash,
    model_of,
    moe_weighted_sum,
    with_pooling,
)
from ggufx.analysis.memory.graph.models._dense import Dense, _ffn, _n, _qkv
from ggufx.analysis.memory.graph.models.qwen3next import n_expert_used
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

_NORM = Dense(norm="NORM")  # build_norm with LLM_NORM: NORM, times the weight, plus the bias


def attn_no_cache(c: _Ctx, g: _Graph, q: _T, k: _T, v: _T, il: int, mask: _T) -> _T:
    """``build_attn`` over ``llm_graph_input_attn_no_cache`` (llama-graph.cpp:2858-2908) with ``build_attn_mha``
    (:2691-2830): Q, K and V expanded; with flash attention K and V cast to F16 (``ggml_cast``: a CPY into a new
    tensor), without it the scores, their softmax, V made contiguous transposed, the product, the heads made
    contiguous."""
    hp, T = c.hp, c.n_tokens
    nh, hv = hp.n_head[il], hp.head_v
    for t in (q, k, v):
        g.expand(t)
    qp, kp, vp = g.permute(q, 0, 2, 1, 3), g.permute(k, 0, 2, 1, 3), g.permute(v, 0, 2, 1, 3)
    if c.sp.flash_attn:
        k16 = g.new(f"{k.name} (copy)", "CPY", "F16", kp.ne, kp)
        k16.src.append(k16)
        v16 = g.new(f"{v.name} (copy)", "CPY", "F16", vp.ne, vp)
        v16.src.append(v16)
        out = g.new(f"fattn-{il}", "FLASH_ATTN_EXT", "F32", (hv, nh, T, 1), qp, k16, v16, mask)
        cur = g.reshape(out, hv * nh, T)
    else:
        cur = attn_no_flash(c, g, qp, kp, vp, mask, il, v_cont=True)
    g.expand(cur)
    return cur


def _qk_norm(c: _Ctx, g: _Graph, x: _T, weight: str, il: int) -> _T:
    """jina-bert-v2's optional LayerNorm of the whole Q or K projection (bert.cpp: reshaped to 2-D and back)."""
    if _weight(c, weight, il) is None:
        return x
    return g.reshape(_n(c, g, g.reshape(x, x.ne[0] * x.ne[1], x.ne[2]), weight, il, _NORM), *x.ne)


def _ffn_jina_v2(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    """jina-bert-v2's FFN (bert.cpp): ``ffn_up`` (+ bias) of twice the FFN width halved by GEGLU when the file has no
    ``ffn_gate``; with one, GEGLU over gate and up; else GELU; then ``ffn_down`` + bias."""
    b = f"blk.{il}."
    up = _proj(c, g, f"ffn_up-{il}", b + "ffn_up", x, il)
    if _weight(c, b + "ffn_gate.weight", il) is not None:
        gate = g.mul_mat(f"ffn_gate-{il}", _w(c, b + "ffn_gate.weight", il), x)
        cur = g.new(f"ffn_geglu-{il}", "GLU", "F32", gate.ne, gate, up)
    elif up.ne[0] != c.hp.n_ff:
        cur = g.new(f"ffn_geglu-{il}", "GLU", "F32", (up.ne[0] // 2, *up.ne[1:]), up)
    else:
        cur = g.op(f"ffn_gelu-{il}", "UNARY", up)
    return _proj(c, g, f"ffn_out-{il}", b + "ffn_down", cur, il)


def _moe_every(c: _Ctx) -> int:
    """nomic-bert-moe's ``moe_every_n_layers`` (0: no MoE layer)."""
    return model_of(c).metadata.get_int(f"{c.hp.arch}.moe_every_n_layers") or 0


def _moe_gelu(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    """``build_moe_ffn`` as bert.cpp calls it for nomic-bert-moe (llama-graph.cpp:2044-2420): softmax gating, top-k,
    the weights neither normalized nor scaled, ``ffn_up_exps`` without a gate, GELU, ``ffn_down_exps``, the weighted
    experts' views summed."""
    T, E = x.ne[1], x.ne[0]
    n_used = n_expert_used(c)
    b = f"blk.{il}."
    logits = g.mul_mat(f"ffn_moe_logits-{il}", _w(c, b + "ffn_gate_inp.weight", il), x)
    probs = g.op(f"ffn_moe_probs-{il}", "SOFT_MAX", logits)
    n_exp = logits.ne[0]
    argsort = g.new(f"ffn_moe_argsort-{il}", "ARGSORT", "I32", (n_exp, T), probs)
    topk = g.view(argsort, (n_used, T), argsort.nb[:2])
    weights = g.new(f"ffn_moe_weights-{il}", "GET_ROWS", "F32", (1, n_used, T), g.reshape(probs, 1, n_exp, T), topk)
    g.expand(weights)
    x3 = g.reshape(x, E, 1, T)
    up_w, down_w = _w(c, b + "ffn_up_exps.weight", il), _w(c, b + "ffn_down_exps.weight", il)
    up = g.new(f"ffn_moe_up-{il}", "MUL_MAT_ID", "F32", (up_w.ne[1], n_used, T), up_w, x3, topk)
    act = g.op(f"ffn_moe_gelu-{il}", "UNARY", up)
    down = g.new(f"ffn_moe_down-{il}", "MUL_MAT_ID", "F32", (down_w.ne[1], n_used, T), down_w, act, topk)
    return moe_weighted_sum(g, down, weights, il, E, n_used)


def build(c: _Ctx, g: _Graph) -> _T:
    """bert.cpp's graph (llama_model_bert::graph) for bert, nomic-bert, jina-bert-v2 and jina-bert-v3."""
    hp, T, E = c.hp, c.n_tokens, c.hp.n_embd
    n_out = c.n_outputs
    arch = hp.arch
    moe_every = _moe_every(c) if arch == "nomic-bert-moe" else 0
    rope = arch in ("nomic-bert", "nomic-bert-moe", "jina-bert-v3")
    pos = None if arch == "jina-bert-v2" else g.input("inp_pos", "I32", T)  # jina-v2: ALiBi, no positions
    c.pos = pos
    x = _inp_embd(c, g)
    types = _weight(c, "token_types.weight", -1)
    if types is not None:  # token types are hardcoded to zero: the first row added
        x = g.op("inp_types", "ADD", x, g.view(types, (E,), (types.nb[0],)))
    if arch == "bert" and pos is not None:
        rows = g.new("pos_rows", "GET_ROWS", "F32", (E, T), _w(c, "position_embd.weight", -1), pos)
        x = g.op("inp_embd", "ADD", rows, x)
    x = _n(c, g, x, "token_embd_norm.weight", 0, _NORM)
    mask = g.input("self_kq_mask", "F16" if c.sp.flash_attn else "F32", T, T, 1, 1)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        q, k, v = _qkv(c, g, x, il, reshape=True)
        q = _qk_norm(c, g, q, b + "attn_q_norm.weight", il)
        k = _qk_norm(c, g, k, b + "attn_k_norm.weight", il)
        if rope and pos is not None:
            q = g.new(f"Qcur-{il}", "ROPE", "F32", q.ne, q, pos)
            k = g.new(f"Kcur-{il}", "ROPE", "F32", k.ne, k, pos)
        cur = attn_no_cache(c, g, q, k, v, il, mask)
        cur = _proj(c, g, f"attn_out-{il}", b + "attn_output", cur, il)
        inp = x
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp, out_ids)
        cur = g.op(f"attn_res-{il}", "ADD", cur, inp)
        cur = _n(c, g, cur, b + "attn_output_norm.weight", il, _NORM)
        if _weight(c, b + "attn_norm_2.weight", il) is not None:  # jina-bert-v2: the layer input re-added
            cur = _n(c, g, g.op(f"attn_res2-{il}", "ADD", cur, inp), b + "attn_norm_2.weight", il, _NORM)
        ffn_inp = cur
        if moe_every > 0 and il % moe_every == 1:
            cur = _moe_gelu(c, g, ffn_inp, il)
        elif arch == "jina-bert-v2":
            cur = _ffn_jina_v2(c, g, ffn_inp, il)
        elif arch in ("bert", "nomic-bert-moe", "jina-bert-v3"):
            up = _proj(c, g, f"ffn_up-{il}", b + "ffn_up", ffn_inp, il)
            cur = _proj(c, g, f"ffn_out-{il}", b + "ffn_down", g.op(f"ffn_gelu-{il}", "UNARY", up), il)
        else:
            cur = _ffn(c, g, ffn_inp, il, Dense())
        cur = g.op(f"ffn_res-{il}", "ADD", cur, ffn_inp)
        x = _n(c, g, cur, b + "layer_output_norm.weight", il, _NORM)
    g.at(GLOBAL)
    x.flags |= OUTPUT
    g.expand(x)
    return with_pooling(c, g, x, x)


def unbuildable(model: GGUFModel) -> str | None:
    """Why bert.cpp's graph cannot be built from this file (None when it can): equal Q/K/V head widths and the
    tensors the graph reads (what bert.cpp/nomic-bert.cpp's load_arch_tensors require)."""
    hp = hparams(model)
    if hp.head_k <= 0 or hp.head_k != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length > 0"
    names = {t.name for t in model.tensors}
    if model.architecture == "jina-bert-v2" and any(
        n.endswith(("attn_q_norm.weight", "attn_k_norm.weight")) for n in names
    ):
        if any(n.endswith("attn_qkv.weight") for n in names):  # ggml_reshape_2d of a view: llama.cpp asserts
            return "the graph needs separate Q and K projections beside attn_q_norm / attn_k_norm"
    need = ["token_embd.weight", "token_embd_norm.weight", "token_embd_norm.bias"]
    if model.architecture == "bert":
        need.append("position_embd.weight")
    if model.architecture == "jina-bert-v2":
        need.append("token_types.weight")
    ffn = ("ffn_up", "ffn_gate", "ffn_down") if model.architecture == "nomic-bert" else ("ffn_up", "ffn_down")
    every = model.metadata.get_int(f"{model.architecture}.moe_every_n_layers") or 0
    if model.architecture != "nomic-bert-moe":
        every = 0
    elif every > 0 and (model.metadata.get_int(f"{model.architecture}.expert_used_count") or 0) <= 0:
        return "the graph needs a positive expert_used_count"
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        moe = every > 0 and il % every == 1
        ffn_il = ("ffn_gate_inp", "ffn_up_exps", "ffn_down_exps") if moe else ffn
        if p + "attn_qkv.weight" not in names:
            need += [p + f"attn_{n}.weight" for n in "qkv"]
        need += [p + n + ".weight" for n in ("attn_output", *ffn_il)]
        need += [p + n for n in ("attn_output_norm.weight", "layer_output_norm.weight")]
        if model.architecture == "jina-bert-v2":  # its loader requires these biases
            need += [p + "attn_output.bias", p + "ffn_down.bias"]
    missing = next((x for x in need if x not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
