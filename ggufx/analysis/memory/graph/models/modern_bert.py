"""``modern-bert`` (src/models/modern-bert.cpp): ModernBERT encoders (modernbert-embed, gte-modernbert, IBM Granite
Embedding R2). llama.cpp makes no memory for them (create_memory: ``res = nullptr``): every layer attends over the
micro-batch alone (``build_attn_inp_no_cache``: a ``[n_tokens, n_tokens]`` mask, and a second one for the
sliding-window layers when the file has a window: every layer but each third, symmetric), K and V cast to F16 for
flash attention (:func:`.bert.attn_no_cache`).

The graph: the token rows, a LayerNorm without bias; per layer the attention norm (none in layer 0 when the file has
no ``blk.0.attn_norm``), the fused QKV projection and its views, RoPE, the attention and its output, the residual,
the FFN norm, ``ffn_up`` of twice the FFN width halved by a GLU (GEGLU, or SwiGLU / ReGLU per
``hidden_activation``), ``ffn_down``, the residual; the output LayerNorm is ``t_embd``. The decision-model variant
(``decision.block_count`` > 0: a scoring head per question type) is not built here (the generic estimate stands in,
labelled)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _proj, _weight, with_pooling
from ggufx.analysis.memory.graph.models._dense import Dense, _n, _qkv
from ggufx.analysis.memory.graph.models.bert import attn_no_cache
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

_NORM = Dense(norm="NORM")
_GLU_ACTS = ("gelu", "geglu", "silu", "swish", "swiglu", "reglu")  # llm_ffn_op_type_from_string's GLU kinds


def build(c: _Ctx, g: _Graph) -> _T:
    """modern-bert.cpp's graph (llama_model_modern_bert::graph) without a decision head."""
    hp, T, E = c.hp, c.n_tokens, c.hp.n_embd
    n_out = c.n_outputs
    c.pos = g.input("inp_pos", "I32", T)
    x = _inp_embd(c, g)
    x = _n(c, g, x, "token_embd_norm.weight", 0, _NORM)
    out_ids = g.input("out_ids", "I32", n_out)
    mtype = "F16" if c.sp.flash_attn else "F32"
    mask = g.input("self_kq_mask", mtype, T, T, 1, 1)
    mask_swa = g.input("self_kq_mask_swa", mtype, T, T, 1, 1) if any(c.swa) else mask
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        inp = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, _NORM) if _weight(c, b + "attn_norm.weight", il) else x
        q, k, v = _qkv(c, g, cur, il, reshape=True)
        q = g.new(f"Qcur-{il}", "ROPE", "F32", q.ne, q, c.pos)
        k = g.new(f"Kcur-{il}", "ROPE", "F32", k.ne, k, c.pos)
        cur = attn_no_cache(c, g, q, k, v, il, mask_swa if c.swa[il] else mask)
        cur = _proj(c, g, f"attn_out-{il}", b + "attn_output", cur, il)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp)
        cur = _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _NORM)
        up = _proj(c, g, f"ffn_up-{il}", b + "ffn_up", cur, il)
        cur = g.new(f"ffn_glu-{il}", "GLU", "F32", (up.ne[0] // 2, *up.ne[1:]), up)
        cur = _proj(c, g, f"ffn_out-{il}", b + "ffn_down", cur, il)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    x = _n(c, g, x, "output_norm.weight", -1, _NORM, pin=False)
    x.flags |= OUTPUT
    g.expand(x)
    return with_pooling(c, g, x, x)


def unbuildable(model: GGUFModel) -> str | None:
    """Why modern-bert.cpp's graph cannot be built here (None when it can): the decision head, an FFN activation
    that is not a GLU, unequal Q/K/V head widths, the tensors the graph reads."""
    md = model.metadata
    a = model.architecture or "modern-bert"
    if (md.get_int(f"{a}.decision.block_count") or 0) > 0:
        return "the graph of a decision model (decision.block_count > 0) is not built"
    act = md.get_str(f"{a}.hidden_activation")
    if act is not None and act not in _GLU_ACTS:
        return f"the graph needs a GLU hidden_activation, not {act}"
    hp = hparams(model)
    if hp.head_k <= 0 or hp.head_k != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length > 0"
    names = {t.name for t in model.tensors}
    need = ["token_embd.weight", "token_embd_norm.weight", "output_norm.weight"]
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        need += [p + n + ".weight" for n in ("attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")]
    missing = next((x for x in need if x not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
