"""``dflash`` (src/models/dflash.cpp): a DFlash block-diffusion draft, run by ``llama-server -m TARGET -md DRAFT
--spec-type draft-dflash`` (llama.cpp infers the type from a dflash file) in a draft context of its own whose
``ctx_other`` is the target's (the draft context gets the target's ``n_ctx``).

The decoder is dual-mode by batch type: an embedding batch (the target layers' hidden states, fused through ``fc``
and ``enc.output_norm``) only writes K/V into the draft's cache; a token batch (the anchor and the mask tokens of a
block) runs the layers over that cache. llama_context reserves ``LLM_GRAPH_TYPE_DEFAULT`` with a token micro-batch
(``llama_batch_allocr::ubatch_reserve``: tokens, no embeddings), so the token branch is the graph sized here:

the token rows (the draft's ``token_embd`` or the target's, ``ctx_other``; scaled by ``embedding_scale`` when set),
then per layer Qwen3's attention (``attn_norm``, Q/K/V projections, RMS norms of each Q and K head, RoPE with layer 0's
``rope_freqs`` when present, ``build_attn`` over the draft's own cache: non-causal, which changes the mask's values
only), the residual, ``ffn_norm`` and a SwiGLU (GEGLU with ``hidden_activation`` gelu) FFN, the residual; no output
rows (``llama_model_has_encoder``: the context reserves ``n_batch`` outputs, every token's logits); the output norm
(``t_embd``, an output), the logits over the draft's ``output`` or the target's, scattered through ``d2t`` with a
reduced vocabulary (eagle3.py's :func:`~ggufx.analysis.memory.graph.models.eagle3.head`). The server then attaches
a top-k sampler chain to each sequence, with ``n_max + 1`` output rows each (common_context_params_to_llama's
``n_outputs_max_per_seq`` for a block draft; ggufx passes them as the draft context's ``-np x (n_max + 1)``
outputs, the reservation's ``n_outputs``), which re-reserves the graph with ``build_sampling`` after it.

Not rebuilt (the generic estimate, with the reason): the K/V-sharing layers without ``attn_v``, sliding-window
drafts (``attention.sliding_window``), DFlash2's convolutions and selector, DSpark's Markov head, attention sinks,
the DeepSeek-V4 DSpark backbone and M-RoPE drafts."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _attn_kv, _Ctx, _norm, _proj, _weight, model_of
from ggufx.analysis.memory.graph.models.eagle3 import backend_sampling, head, missing_tensor, token_rows
from ggufx.model import GGUFModel

ARCH = "dflash"
LAYER = (
    "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm", "ffn_norm", "ffn_gate",
    "ffn_up", "ffn_down",
)  # fmt: skip
# dflash.cpp's optional parts this builder does not rebuild (their tensors or keys)
_NOT_BUILT = (
    ("selector_hidden.weight", "DFlash2's convolutions and candidate selector"),
    ("markov_w1.weight", "DSpark's Markov head"),
    ("hc_head_fn.weight", "the DeepSeek-V4 DSpark backbone"),
)


def build(c: _Ctx, g: _Graph) -> _T:
    hp, sp = c.hp, c.sp
    T = c.n_tokens
    md = model_of(c).metadata
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    tokens = g.input("inp_tokens", "I32", T)
    x = token_rows(c, g, tokens)
    if md.get(f"{ARCH}.embedding_scale"):
        x = g.op("inp_noise_embd", "SCALE", x)
    gelu = md.get_str(f"{ARCH}.hidden_activation") in ("gelu", "gelu_pytorch_tanh")
    freqs = _weight(c, "rope_freqs.weight", 0)
    src = [c.pos, *([freqs] if freqs is not None else [])]
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        nh, nkv, hd = hp.n_head[il], hp.n_head_kv[il], hp.head_k
        cur = _norm(c, g, x, b + "attn_norm.weight", il)
        q = g.reshape(_proj(c, g, f"Qcur-{il}", b + "attn_q", cur, il), hd, nh, T)
        k = g.reshape(_proj(c, g, f"Kcur-{il}", b + "attn_k", cur, il), hd, nkv, T)
        v = g.reshape(_proj(c, g, f"Vcur-{il}", b + "attn_v", cur, il), hp.head_v, nkv, T)
        q = _norm(c, g, q, b + "attn_q_norm.weight", il)
        k = _norm(c, g, k, b + "attn_k_norm.weight", il)
        q = g.new(f"Qcur-{il}", "ROPE", "F32", q.ne, q, *src)
        k = g.new(f"Kcur-{il}", "ROPE", "F32", k.ne, k, *src)
        cur = _proj(c, g, f"attn_out-{il}", b + "attn_output", _attn_kv(c, g, q, k, v, il, inp, False), il)
        if md.get(f"{ARCH}.attention.value_scale"):
            cur = g.op(f"attn_out_scaled-{il}", "SCALE", cur)
        if _weight(c, b + "attn_post_norm.weight", il) is not None:
            cur = _norm(c, g, cur, b + "attn_post_norm.weight", il)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, x)
        cur = _norm(c, g, ffn_inp, b + "ffn_norm.weight", il)
        gate = _proj(c, g, f"ffn_gate-{il}", b + "ffn_gate", cur, il)
        up = _proj(c, g, f"ffn_up-{il}", b + "ffn_up", cur, il)
        act = g.new(f"ffn_{'geglu' if gelu else 'swiglu'}-{il}", "GLU", "F32", gate.ne, gate, up)
        cur = _proj(c, g, f"ffn_out-{il}", b + "ffn_down", act, il)
        if _weight(c, b + "ffn_post_norm.weight", il) is not None:
            cur = _norm(c, g, cur, b + "ffn_post_norm.weight", il)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
        scale = _weight(c, b + "layer_output_scale.weight", il)
        if scale is not None:
            x = g.op(f"l_out-{il}", "MUL", x, scale)
    g.at(GLOBAL)
    cur = _norm(c, g, x, "output_norm.weight", hp.n_layer, pin=False)
    cur.flags |= OUTPUT  # t_embd
    logits = head(c, g, cur)
    g.expand(logits)
    # n_outputs_max_per_seq: the server's n_max + 1 (the draft context's n_outputs_max / sequences)
    return backend_sampling(c, g, logits, max(1, c.n_outputs // max(1, sp.n_seq_max)))


def unbuildable(model: GGUFModel) -> str | None:
    """dflash.cpp's loader: ``target_layers``, ``fc``, ``enc.output_norm``, ``output_norm`` and each layer's
    attention (Q/K head norms) and FFN; the parts of the newer drafts this builder does not rebuild."""
    md = model.metadata
    if md.get(f"{ARCH}.target_layers") is None:
        return "DFlash model requires 'target_layers' in GGUF metadata"
    names = {t.name for t in model.tensors}
    for tensor, what in _NOT_BUILT:
        if tensor in names:
            return f"{what} ({tensor}) is not rebuilt"
    if any(n.endswith("attn_sinks.weight") for n in names):
        return "attention sinks in a DFlash draft are not rebuilt"
    if (md.get_int(f"{ARCH}.attention.sliding_window") or 0) > 0:
        return "sliding-window DFlash drafts are not rebuilt"
    sections = md.get(f"{ARCH}.rope.dimension_sections")
    if sections is not None and any(int(s) for s in sections):
        return "M-RoPE DFlash drafts (rope.dimension_sections) are not rebuilt"
    n_layer = md.get_int(f"{ARCH}.block_count") or 0
    needed = ["fc.weight", "enc.output_norm.weight", "output_norm.weight"]
    needed += [f"blk.{il}.{r}.weight" for il in range(min(n_layer, 513)) for r in LAYER]
    return missing_tensor(model, needed)
