"""``llama4`` (src/models/llama4.cpp): the llama graph with chunked attention (3 of 4 layers on the
chunked cache and mask), no RoPE in every fourth layer (``n_no_rope_layer_step``: there Q is
multiplied by the ``inp_attn_scale`` input), an RMS norm (no weight) of Q and K after RoPE
(``use_kq_norm``: all but the 128-expert model), and in the layers with a router
(``interleave_moe_layer_step``) ``build_moe_ffn`` with sigmoid gating as llama4 runs it (llama-graph.cpp:
experts chosen on the logits, the weights applied to the input before the experts) plus the shared
expert."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import (
    _attn_inp,
    _Ctx,
    _inp_embd,
    _proj,
    _w,
    _weight,
    model_of,
    moe_swiglu_experts,
    moe_weighted_sum,
)
from ggufx.analysis.memory.graph.models._dense import (
    Dense,
    _attn_kv,
    _ffn,
    _n,
    _qkv,
    output,
    rope_factors,
    rope_qk,
    tied_head,
)
from ggufx.model import GGUFModel

SPEC = Dense()
NO_ROPE_STEP = 4  # llama_hparams::n_no_rope_layer_step (llama-hparams.h:259), unless the window is 0


def header(c: _Ctx) -> tuple[int, int, bool]:
    """expert_used_count, expert_count and whether sliding_window is present and 0."""
    model = model_of(c)
    md, a = model.metadata, model.architecture
    window = md.get(f"{a}.attention.sliding_window")
    return md.get_int(f"{a}.expert_used_count") or 0, md.get_int(f"{a}.expert_count") or 0, window == 0


def _moe(c: _Ctx, g: _Graph, cur: _T, il: int, n_used: int) -> _T:
    """``build_moe_ffn`` for llama4 (llama-graph.cpp:2044-2420): sigmoid probabilities, the top-k of the
    logits, the weights gathered and expanded early, the input repeated per expert and weighted, the
    experts, one view per used expert and their sum (a CONT with one)."""
    T, E = cur.ne[1], cur.ne[0]
    p = f"blk.{il}."
    logits = g.mul_mat(f"ffn_moe_logits-{il}", _w(c, p + "ffn_gate_inp.weight", il), cur)
    n_exp = logits.ne[0]
    probs = g.op(f"ffn_moe_probs-{il}", "UNARY", logits)
    argsort = g.new(f"ffn_moe_argsort-{il}", "ARGSORT", "I32", (n_exp, T), logits)
    topk = g.view(argsort, (n_used, T), argsort.nb[:2])
    probs3 = g.reshape(probs, 1, n_exp, T)
    weights = g.new(f"ffn_moe_weights-{il}", "GET_ROWS", "F32", (1, n_used, T), probs3, topk)
    g.expand(weights)
    x = g.reshape(cur, E, 1, T)
    rep = g.new(f"ffn_moe_repeat-{il}", "REPEAT", "F32", (E, n_used, T), x)
    x = g.op(f"ffn_moe_weighted-{il}", "MUL", rep, weights)
    experts = moe_swiglu_experts(c, g, x, topk, il, n_used)[3]
    return moe_weighted_sum(g, experts, None, il, E, n_used)  # (weighted before the experts)


def build(c: _Ctx, g: _Graph) -> _T:
    hp, sp = c.hp, c.sp
    d = SPEC
    n_used, n_expert, no_window = header(c)
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    step = hp.n_layer if no_window else NO_ROPE_STEP  # llama4.cpp load_arch_hparams
    kq_norm = n_expert != 128  # use_kq_norm: all but LLM_TYPE_17B_128E
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    attn_scale = g.input("inp_attn_scale", "F32", 1, 1, T)
    iswa = any(c.swa)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa) if iswa else full
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, d)
        q, k, v = _qkv(c, g, cur, il, reshape=True)
        use_rope = step > 0 and (il + 1) % step != 0
        if use_rope:
            q, k = rope_qk(g, q, k, c.pos, rope_factors(c, il))
            if kq_norm:
                q, k = g.op(q.name, "RMS_NORM", q), g.op(k.name, "RMS_NORM", k)
        else:
            q = g.op(q.name, "MUL", q, attn_scale)
        cur = _attn_kv(c, g, q, k, v, il, swa if c.swa[il] else full, iswa, d)
        cur = _proj(c, g, f"attn_out-{il}", b + "attn_output", cur, il)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _n(c, g, ffn_inp, b + "ffn_norm.weight", il, d)
        if _weight(c, b + "ffn_gate_inp.weight", il) is None:
            cur = _ffn(c, g, cur, il, d)
        else:
            moe = _moe(c, g, cur, il, n_used)
            gate = _proj(c, g, f"ffn_gate-{il}", b + "ffn_gate_shexp", cur, il)
            up = _proj(c, g, f"ffn_up-{il}", b + "ffn_up_shexp", cur, il)
            sh = g.new(f"ffn_glu-{il}", "GLU", "F32", gate.ne, gate, up)
            sh = _proj(c, g, f"ffn_out-{il}", b + "ffn_down_shexp", sh, il)
            cur = g.op(f"ffn_moe_out_merged-{il}", "ADD", moe, sh)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return output(c, g, x, tied_head(c))


_ATTN = ("attn_norm", "attn_output", "ffn_norm")
_MOE = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp")


def unbuildable(model: GGUFModel) -> str | None:
    """Why this llama4 file cannot be built (None when it can): the expert counts, a tensor the graph reads."""
    md, a = model.metadata, model.architecture
    n_used, n_expert = md.get_int(f"{a}.expert_used_count") or 0, md.get_int(f"{a}.expert_count") or 0
    if not 0 < n_used <= n_expert:
        return "the graph needs 0 < expert_used_count <= expert_count"
    names = {t.name for t in model.tensors}
    needed = ["token_embd.weight", "output_norm.weight"]
    for il in range(min(md.get_int(f"{a}.block_count") or 0, 513)):
        b = f"blk.{il}."
        needed += [b + r + ".weight" for r in _ATTN]
        if b + "attn_qkv.weight" not in names:
            needed += [b + f"attn_{r}.weight" for r in "qkv"]
        moe = b + "ffn_gate_inp.weight" in names
        needed += [b + r + ".weight" for r in (_MOE if moe else ("ffn_gate", "ffn_up", "ffn_down"))]
    missing = next((n for n in needed if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
