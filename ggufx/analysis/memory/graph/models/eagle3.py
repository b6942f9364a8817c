"""``eagle3`` (src/models/eagle3.cpp): an EAGLE-3 speculative-decoding head, run by
``llama-server -m TARGET -md HEAD --spec-type draft-eagle3`` in a draft context of its own whose ``ctx_other`` is
the target's (common/speculative.cpp ``common_speculative_init_result``: the draft context gets the target's
``n_ctx``). llama_context reserves ``LLM_GRAPH_TYPE_DEFAULT``: the decoder (``graph<false>``; the encoder, ``fc`` over
the three target layers' hidden states, is only run by ``llama_process(ENCODE)``).

``llama_model_has_encoder`` is true for eagle3, so the context reserves ``n_batch`` outputs whatever the server asks
(llama-context.cpp:252): the prompt-processing graph computes every token's logits (the decoder has no output rows).

The decoder: the token rows (the head's ``token_embd`` or the target's: ``ctx_other``) RMS-normed by
``attn_norm``, the fused target features (the ``inp_g_embeddings`` input, ``n_embd`` wide) by ``attn_norm_2``, the
two concatenated (2 x n_embd) into Q/K/V; RoPE (``rope_freqs`` when the head has them), ``build_attn`` over the
head's one-layer cache, the output projection; the residual (the raw features, or their norm with
``norm_before_residual``), the FFN norm, a SwiGLU FFN, the residual: ``eagle3_prenorm`` (``t_h_nextn``, an
output); the output norm, the logits over the head's ``output`` (its reduced draft vocabulary) or the target's,
and with ``d2t`` the draft logits scattered into a ``-inf``-filled tensor of the target's vocabulary
(``ggml_fill`` of a new tensor, ``ggml_set_rows``).

The server then attaches a backend sampler chain (top-k 10) to every sequence of the draft context
(``common_speculative_impl_draft_eagle3``: ``llama_set_sampler``), which re-reserves the graph with
``llm_graph_context::build_sampling`` (llama-graph.cpp:3897) after it: the logits padded by one row
(``ggml_pad``), then per sequence a view of its row, ``ggml_top_k`` and the top-k rows (``ggml_get_rows``):
:func:`backend_sampling`. That is the compute buffer the draft context keeps (its ``~llama_context`` line).
"""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _attn_kv, _Ctx, _norm, _proj, _weight, model_of
from ggufx.model import GGUFModel

ARCH = "eagle3"
TOP_K = 10  # common/speculative.cpp: the draft's sampler chain is top-k 10
LAYER = (
    "attn_norm", "attn_norm_2", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
    "ffn_down",
)  # fmt: skip


def _flag(c: _Ctx, key: str) -> bool:
    return bool(model_of(c).metadata.get(f"{ARCH}.{key}"))


def target_weight(c: _Ctx, g: _Graph, name: str, ne: tuple[int, ...], buft: str) -> _T:
    """A weight of the target (``ctx_other``'s model) the head borrows: a leaf outside this context's buffers."""
    t = g.leaf(f"{name} (target)", "F32", ne, buft=buft)
    t.weight = True
    return t


def token_rows(c: _Ctx, g: _Graph, tokens: _T) -> _T:
    """``ggml_get_rows`` of the head's ``token_embd`` or, without it, the target's (on the host, as llama.cpp
    loads the input layer)."""
    hp = c.hp
    tok = _weight(c, "token_embd.weight", -1)
    if tok is None:
        tok = target_weight(c, g, "token_embd.weight", (hp.n_embd, hp.n_vocab), "CPU")
    return g.new("inp_embd", "GET_ROWS", "F32", (hp.n_embd, c.n_tokens), tok, tokens)


def head(c: _Ctx, g: _Graph, cur: _T) -> _T:
    """The logits over the head's ``output`` or the target's, scattered through ``d2t`` into the target's
    vocabulary when the head has a reduced one (eagle3.cpp / dflash.cpp: ``ggml_fill`` of a new
    ``[1, n_vocab, n_outputs]`` tensor with -inf, ``ggml_set_rows`` of the draft logits into it)."""
    hp = c.hp
    n_layer = hp.n_layer
    out = _weight(c, "output.weight", n_layer)
    if out is None:
        out = target_weight(c, g, "output.weight", (hp.n_embd, hp.n_vocab), c.layer_buft[n_layer])
    logits = g.mul_mat("result_output", out, cur)
    d2t = _weight(c, "d2t", n_layer)
    if d2t is not None:
        n_draft, n_out = logits.ne[0], logits.ne[1]
        empty = g.leaf("logits", "F32", (1, hp.n_vocab, n_out))
        filled = g.new("logits", "FILL", "F32", empty.ne, empty)
        rows = g.view(filled, filled.ne, filled.nb, "SET_ROWS")
        rows.src = [g.reshape(logits, 1, n_draft, n_out), g.reshape(d2t, n_draft, 1, 1), filled]
        logits = g.reshape(rows, hp.n_vocab, n_out)
    logits.flags |= OUTPUT
    return logits


def backend_sampling(c: _Ctx, g: _Graph, logits: _T, per_seq: int = 1) -> _T:
    """``build_sampling`` with the server's top-k chain on each of the ``n_seq_max`` sequences (each has a
        sampler; the reservation gives each ``min(tokens per sequence, per_seq)`` output rows, ``per_seq`` being the
        context's ``n_outputs_max_per_seq``: ``ubatch_prepare_reserve``, llama-context.cpp:2470-2522): the logits padded
        by a row, then per row of a sequence its view, ``ggml_top_k`` (its candidates) and the top-k logits
        (``ggml_get_rows``), each selected after the logits (``ggml_build_forward_select``); the candidates and the top-k
    logits are outputs (never freed). The graph's last node."""
    n_vocab = logits.ne[0]
    pad = g.new("logits_pad", "PAD", "F32", (n_vocab, logits.ne[1] + 1), logits)
    last = pad
    rows_each = min(c.n_tokens // max(1, c.sp.n_seq_max), per_seq)
    for _ in range(c.sp.n_seq_max * rows_each):
        row = g.view(pad, (n_vocab,), None)
        flat = g.reshape(row, n_vocab)
        top = g.new("top_k", "TOP_K", "I32", (TOP_K,), flat)
        rows = g.reshape(flat, 1, n_vocab)
        last = g.new("top_k_rows", "GET_ROWS", "F32", (1, TOP_K), rows, top)
        top.flags |= OUTPUT  # t_candidates and t_sampled_logits: outputs (llm_graph_result::set_outputs)
        last.flags |= OUTPUT
        g.expand(logits)
        g.expand(last)  # the logits, then the top-k rows (and their candidates, made on the way)
        g.expand(top)
    return last


def build(c: _Ctx, g: _Graph) -> _T:
    hp, sp = c.hp, c.sp
    T, E = c.n_tokens, hp.n_embd
    tokens = g.input("inp_tokens", "I32", T)
    inp_g = g.input("inp_g_embeddings", "F32", E, T)
    x = token_rows(c, g, tokens)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    il = 0
    g.at(0)
    b = "blk.0."
    embd_norm = _norm(c, g, x, b + "attn_norm.weight", il)
    g_norm = _norm(c, g, inp_g, b + "attn_norm_2.weight", il, pin=False)  # built with il = -1
    inp_sa = g_norm if _flag(c, "norm_before_residual") else inp_g
    cur = g.new("concat_embd-0", "CONCAT", "F32", (2 * E, T), embd_norm, g_norm)
    nh, nkv, hd = hp.n_head[il], hp.n_head_kv[il], hp.head_k
    q = g.reshape(_proj(c, g, "Qcur-0", b + "attn_q", cur, il), hd, nh, T)
    k = g.reshape(_proj(c, g, "Kcur-0", b + "attn_k", cur, il), hd, nkv, T)
    v = g.reshape(_proj(c, g, "Vcur-0", b + "attn_v", cur, il), hp.head_v, nkv, T)
    freqs = _weight(c, "rope_freqs.weight", il)
    src = [c.pos, *([freqs] if freqs is not None else [])]
    q = g.new("Qcur_rope-0", "ROPE", "F32", q.ne, q, *src)
    k = g.new("Kcur_rope-0", "ROPE", "F32", k.ne, k, *src)
    cur = _proj(c, g, "attn_out-0", b + "attn_output", _attn_kv(c, g, q, k, v, il, inp, False), il)
    ffn_inp = g.op("ffn_inp-0", "ADD", cur, inp_sa)
    cur = _norm(c, g, ffn_inp, b + "ffn_norm.weight", il)
    gate = _proj(c, g, "ffn_gate-0", b + "ffn_gate", cur, il)
    up = _proj(c, g, "ffn_up-0", b + "ffn_up", cur, il)
    cur = _proj(c, g, "ffn_out-0", b + "ffn_down", g.new("ffn_glu-0", "GLU", "F32", gate.ne, gate, up), il)
    cur = g.op("eagle3_prenorm-0", "ADD", cur, ffn_inp)
    cur.flags |= OUTPUT  # t_h_nextn
    g.at(GLOBAL)
    cur = _norm(c, g, cur, "output_norm.weight", hp.n_layer, pin=False)
    logits = head(c, g, cur)
    g.expand(logits)
    return backend_sampling(c, g, logits)


def unbuildable(model: GGUFModel) -> str | None:
    """eagle3.cpp's loader: three target layers, the fused-feature projection, the output norm and the one layer's
    weights (``enc.output_norm`` with norm_before_fc); its graph asserts a single layer."""
    md = model.metadata
    layers = md.get(f"{ARCH}.target_layers")
    if layers is None or len(layers) != 3:
        return "EAGLE3 requires exactly 3 entries in 'extract_layers' (eagle3.target_layers)"
    if (md.get_int(f"{ARCH}.block_count") or 0) != 1:
        return "the eagle3 graph has one decoder layer (eagle3.cpp asserts n_layer == 1)"
    needed = ["fc.weight", "output_norm.weight", *(f"blk.0.{r}.weight" for r in LAYER)]
    if md.get(f"{ARCH}.norm_before_fc"):
        needed.append("enc.output_norm.weight")
    return missing_tensor(model, needed)


def missing_tensor(model: GGUFModel, needed: list[str]) -> str | None:
    """The first of ``needed`` that the file lacks, as ``graphsim.unbuildable`` words it (None: none)."""
    names = {t.name for t in model.tensors}
    missing = next((n for n in needed if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
