"""``gemma-embedding`` (src/models/gemma-embedding.cpp): EmbeddingGemma, Gemma 3's layer as an encoder. llama.cpp
makes no memory for it (create_memory: ``res = nullptr``): every layer attends over the micro-batch alone
(``build_attn_inp_no_cache``: a ``[n_tokens, n_tokens]`` mask, and a second one for the sliding-window layers,
symmetric windows), K and V cast to F16 for flash attention (:func:`.bert.attn_no_cache`).

The graph: the token rows scaled by ``sqrt(n_embd)`` (``build_inp_embd``'s ``inp_scale_rows``); per layer the RMS
norm, Q, K, V, the Q and K head norms and RoPE, Q scaled, the attention and its output, the post-attention norm,
the residual, the FFN norm, GEGLU, the post-FFN norm (built with il = -1), the residual; the output norm is
``t_embd`` (no logits, no pooling without ``--embedding``)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _norm, _proj, _w, with_pooling
from ggufx.analysis.memory.graph.models._dense import Dense, _ffn, _qkv
from ggufx.analysis.memory.graph.models.bert import attn_no_cache
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

_GEGLU = Dense(gelu=True)


def build(c: _Ctx, g: _Graph) -> _T:
    """gemma-embedding.cpp's graph (llama_model_gemma_embedding::graph)."""
    hp, T, E = c.hp, c.n_tokens, c.hp.n_embd
    n_out = c.n_outputs
    x = _inp_embd(c, g)
    x = g.op("inp_scaled", "MUL", x, g.input("inp_scale_rows", "F32", 1, T))  # tok_scale = sqrt(n_embd)
    g.expand(x)
    c.pos = g.input("inp_pos", "I32", T)
    mtype = "F16" if c.sp.flash_attn else "F32"
    mask = g.input("self_kq_mask", mtype, T, T, 1, 1)
    mask_swa = g.input("self_kq_mask_swa", mtype, T, T, 1, 1)  # swa_type SYMMETRIC: always made
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        inp = x
        cur = _norm(c, g, x, b + "attn_norm.weight", il)
        q, k, v = _qkv(c, g, cur, il, reshape=True)
        q = _norm(c, g, q, b + "attn_q_norm.weight", il)
        q = g.new(f"Qcur-{il}", "ROPE", "F32", q.ne, q, c.pos)
        k = _norm(c, g, k, b + "attn_k_norm.weight", il)
        k = g.new(f"Kcur-{il}", "ROPE", "F32", k.ne, k, c.pos)
        q = g.op(f"Qcur_scaled-{il}", "SCALE", q)
        cur = attn_no_cache(c, g, q, k, v, il, mask_swa if c.swa[il] else mask)
        cur = _proj(c, g, f"attn_out-{il}", b + "attn_output", cur, il)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp, out_ids)
        cur = _norm(c, g, cur, b + "post_attention_norm.weight", il)
        sa_out = g.op(f"sa_out-{il}", "ADD", cur, inp)
        cur = _norm(c, g, sa_out, b + "ffn_norm.weight", il)
        cur = _ffn(c, g, cur, il, _GEGLU)
        cur = _norm(c, g, cur, b + "post_ffw_norm.weight", il, pin=False)  # il = -1: not pinned
        x = g.op(f"l_out-{il}", "ADD", cur, sa_out)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    g.expand(cur)
    return with_pooling(c, g, cur, cur)


def unbuildable(model: GGUFModel) -> str | None:
    """Why gemma-embedding.cpp's graph cannot be built from this file (None when it can): equal Q/K/V head widths
    and the tensors the graph reads (what its load_arch_tensors requires). The dense projections of a model
    converted with ``--sentence-transformers-dense-modules`` run only with ``--embedding`` (build_dense_out after
    the pooling): not in this graph."""
    hp = hparams(model)
    if hp.head_k <= 0 or hp.head_k != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length > 0"
    names = {t.name for t in model.tensors}
    need = ["token_embd.weight", "output_norm.weight"]
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        if p + "attn_qkv.weight" not in names:
            need += [p + f"attn_{n}.weight" for n in "qkv"]
        need += [
            p + n + ".weight"
            for n in (
                "attn_norm",
                "attn_output",
                "attn_q_norm",
                "attn_k_norm",
                "post_attention_norm",
                "ffn_norm",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
                "post_ffw_norm",
            )
        ]
    missing = next((x for x in need if x not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
