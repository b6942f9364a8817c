"""``gpt-oss`` (src/models/openai-moe.cpp, ``LLM_ARCH_OPENAI_MOE``): sliding-window (128) and full
attention layers alternating over two caches (``build_attn_inp_kv_iswa``), Q/K/V/O projections with
biases, attention sinks (``ggml_soft_max_add_sinks`` / ``ggml_flash_attn_ext_add_sinks``: one more
source of the softmax or of the flash-attention node), a post-attention norm, and a mixture of experts
whose router and experts have biases (``ADD_ID`` per selected expert), routed by ``SOFTMAX_WEIGHT``
(top-k of the logits, then the softmax of the chosen ones) through ``SWIGLU_OAI``; the final hidden
state (``t_h_nextn``) is an output before the output rows are picked."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import (
    _attn_inp,
    _attn_kv,
    _AttnInp,
    _Ctx,
    _inp_embd,
    _norm,
    _proj,
    _w,
    model_of,
    moe_weighted_sum,
)
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

__all__ = ["build", "n_expert_used", "unbuildable"]

# the tensors every layer's graph reads (openai-moe.cpp load_arch_tensors), biases included
LAYER_TENSORS = (
    "attn_norm.weight",
    "post_attention_norm.weight",
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "attn_output.bias",
    "attn_sinks.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_inp.bias",
    "ffn_gate_exps.weight",
    "ffn_up_exps.weight",
    "ffn_down_exps.weight",
    "ffn_gate_exps.bias",
    "ffn_up_exps.bias",
    "ffn_down_exps.bias",
)


def n_expert_used(c: _Ctx) -> int:
    """``n_expert_used``: the graph context's, else the model's ``expert_used_count``."""
    if c.moe:
        return c.moe
    model = model_of(c)
    return model.metadata.get_int(f"{model.architecture}.expert_used_count") or 0


def unbuildable(model: GGUFModel) -> str | None:
    """Why this gpt-oss file's graph cannot be built (None when it can): the sliding window, the expert
    counts, and every tensor the graph reads, the experts three-dimensional (llama.cpp refuses a file
    without them; a fused ``attn_qkv``, whose views are not rebuilt here, is refused too)."""
    hp = hparams(model)
    n_used = model.metadata.get_int(f"{hp.arch}.expert_used_count") or 0
    if hp.n_swa <= 0:
        return "the gpt-oss graph needs a positive gpt-oss.attention.sliding_window"
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    fused = next((n for n in tensors if n.endswith(".attn_qkv.weight")), None)
    if fused:
        return f"gpt-oss graphs with a fused {fused} are not simulated"
    needed = ["token_embd.weight", "output_norm.weight", "output.weight"]
    needed += [f"blk.{il}.{n}" for il in range(hp.n_layer) for n in LAYER_TENSORS]
    missing = next((n for n in needed if n not in tensors), None)
    if missing:
        return f"the graph needs tensor {missing}, which the file lacks"
    for il in range(hp.n_layer):
        for role in ("gate", "up", "down"):
            name = f"blk.{il}.ffn_{role}_exps.weight"
            if len(tensors[name]) != 3:
                return f"the graph needs a three-dimensional tensor {name}"
        n_expert = tensors[f"blk.{il}.ffn_gate_exps.weight"][2]
        if not 0 < n_used <= n_expert:
            return "the graph needs 0 < expert_used_count <= expert_count"
        if tensors[f"blk.{il}.attn_norm.weight"] != (hp.n_embd,):
            return f"the graph needs tensor blk.{il}.attn_norm.weight of {hp.n_embd} values"
    return None


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """``build_qkv`` (llama-graph.cpp:1684-1795, the separate Q/K/V path with biases), RoPE, and
    ``build_attn`` over the layer's cache (llama-graph.cpp:3190-3283) with the layer's sinks, then
    the output projection and its bias."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    pos = c.pos
    assert pos is not None
    p = f"blk.{il}."
    q = g.reshape(_proj(c, g, f"Qcur-{il}", p + "attn_q", x, il), hd, nh, T)
    k = g.reshape(_proj(c, g, f"Kcur-{il}", p + "attn_k", x, il), hd, nkv, T)
    v = g.reshape(_proj(c, g, f"Vcur-{il}", p + "attn_v", x, il), hv, nkv, T)
    q = g.new(q.name, "ROPE", "F32", q.ne, q, pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, pos)
    cur = _attn_kv(c, g, q, k, v, il, inp, True)
    _add_sinks(cur, _w(c, p + "attn_sinks.weight", il))
    return _proj(c, g, f"attn_out-{il}", p + "attn_output", cur, il)


def _add_sinks(cur: _T, sinks: _T) -> None:
    """``ggml_flash_attn_ext_add_sinks`` (ggml.c:5579: source 4 of the flash-attention node) or
    ``ggml_soft_max_add_sinks`` (ggml.c:4218: source 2 of the masked softmax): set on the node once
    it is made, as build_attn_mha does (llama-graph.cpp:2732, :2787). The node is found below the
    attention output (its reshape, or the permuted product of V and the softmax)."""
    stack, seen = [cur], set()
    while stack:
        t = stack.pop()
        if t in seen or t.weight or t.op == "NONE":
            continue
        seen.add(t)
        if t.op == "FLASH_ATTN_EXT":
            assert len(t.src) == 4
            t.src.append(sinks)
            return
        if t.op == "SOFT_MAX" and len(t.src) == 2:
            t.src.append(sinks)
            return
        stack.extend(reversed(t.src))
    raise AssertionError("no attention node below the attention output")


def _moe(c: _Ctx, g: _Graph, cur: _T, il: int, n_used: int) -> _T:
    """``build_moe_ffn`` (llama-graph.cpp:2044-2420) as openai-moe.cpp calls it: the router's bias,
    ``SOFTMAX_WEIGHT`` gating (the top-k of the logits, then the softmax of the weights picked),
    no normalization or scale, the experts' biases (``ADD_ID``), ``SWIGLU_OAI``, then one view per
    used expert and their sum."""
    T, E = cur.ne[1], cur.ne[0]
    p = f"blk.{il}."
    logits = g.mul_mat(f"ffn_moe_logits-{il}", _w(c, p + "ffn_gate_inp.weight", il), cur)
    probs = g.op(f"ffn_moe_logits_biased-{il}", "ADD", logits, _w(c, p + "ffn_gate_inp.bias", il))
    n_exp = probs.ne[0]
    argsort = g.new(f"ffn_moe_argsort-{il}", "ARGSORT", "I32", (n_exp, T), probs)
    topk = g.view(argsort, (n_used, T), argsort.nb)  # ggml_argsort_top_k
    probs3 = g.reshape(probs, 1, n_exp, T)
    weights = g.new(f"ffn_moe_weights-{il}", "GET_ROWS", "F32", (1, n_used, T), probs3, topk)
    w2 = g.op(f"ffn_moe_weights_softmax-{il}", "SOFT_MAX", g.reshape(weights, n_used, T))
    w3 = g.reshape(w2, 1, n_used, T)
    g.expand(w3)  # early, so that CUDA can fuse the top-k (its delayed-softmax form adds no dependency)
    x = g.reshape(cur, E, 1, T)

    def experts(role: str, src: _T) -> _T:
        w = _w(c, p + f"ffn_{role}_exps.weight", il)
        out = g.new(f"ffn_moe_{role}-{il}", "MUL_MAT_ID", "F32", (w.ne[1], n_used, T), w, src, topk)
        return g.new(
            f"ffn_moe_{role}_biased-{il}", "ADD_ID", "F32", out.ne, out, _w(c, p + f"ffn_{role}_exps.bias", il), topk
        )

    up = experts("up", x)
    gate = experts("gate", x)
    act = g.new(f"ffn_moe_swiglu_oai-{il}", "GLU", "F32", gate.ne, gate, up)
    down = experts("down", act)
    return moe_weighted_sum(g, down, w3, il, E, n_used)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph of openai-moe.cpp: per layer the attention (sliding-window layers on their own cache
    and mask), the residual, the post-attention norm, the experts, the residual; then the rows of
    the outputs, the final norm and the output projection."""
    hp, sp = c.hp, c.sp
    n_out, E = c.n_outputs, hp.n_embd
    n_used = n_expert_used(c)
    # graph_reserve (llama-context.cpp:2531) rounds the micro-batch up to a multiple of the sequences
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", c.n_tokens)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        cur = _attention(c, g, cur, il, swa if c.swa[il] else full)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, x)
        cur = _norm(c, g, ffn_inp, f"blk.{il}.post_attention_norm.weight", il)
        cur = _moe(c, g, cur, il, n_used)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    x.flags |= OUTPUT  # t_h_nextn (llm_graph_result::set_outputs, llama-graph.cpp:1406)
    cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), x, out_ids)
    cur = g.op("norm", "RMS_NORM", cur)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    logits = g.mul_mat("result_output", _w(c, "output.weight", hp.n_layer), cur)
    logits.flags |= OUTPUT
    return logits
