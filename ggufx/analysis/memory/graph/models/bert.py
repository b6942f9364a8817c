"""``bert`` and ``nomic-bert`` (src/models/bert.cpp, whose graph nomic-bert.cpp takes: ``using graph =
llama_model_bert::graph``): the embedding encoders (bge, all-MiniLM, nomic-embed-text). llama.cpp makes no memory
for them (create_memory: ``res = nullptr``), so the attention runs over the micro-batch alone
(``build_attn_inp_no_cache``: a ``[n_tokens, n_tokens]`` mask, no causal rule) and ``build_attn_mha`` casts K and V
to F16 for flash attention (llama-graph.cpp:2726-2733).

The graph: the token rows, plus the first token-type row, plus (bert) the learned positions; a LayerNorm; per layer
Q, K, V (separate with biases, or nomic's fused ``attn_qkv``), RoPE (nomic), the attention and its output, the
residual, ``attn_output_norm``, the FFN (bert: up + bias, GELU, down + bias; nomic: SwiGLU without biases), the
residual, ``layer_output_norm``; the last layer gathers the output rows before its residual. The result is
``t_embd`` (no logits; pooling is added only with ``--embedding``, which llama-completion does not set)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _proj, _w, _weight, kqv_on_host
from ggufx.analysis.memory.graph.models._dense import Dense, _ffn, _n, _qkv
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

_NORM = Dense(norm="NORM")  # build_norm with LLM_NORM: NORM, times the weight, plus the bias


def attn_no_cache(c: _Ctx, g: _Graph, q: _T, k: _T, v: _T, il: int, mask: _T) -> _T:
    """``build_attn`` over ``llm_graph_input_attn_no_cache`` (llama-graph.cpp:2858-2908) with ``build_attn_mha``
    (:2691-2830): Q, K and V expanded; with flash attention K and V cast to F16 (``ggml_cast``: a CPY into a new
    tensor), without it the scores, their softmax, V made contiguous transposed, the product, the heads made
    contiguous."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_v
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
        kq = g.new(f"kq-{il}", "MUL_MAT", "F32", (T, T, nh, 1), kp, qp)
        kq = g.op(f"kq_soft_max-{il}", "SOFT_MAX", kq, mask)
        vt = g.new(f"v_cont-{il}", "CONT", "F32", (T, hv, nkv, 1), g.permute(vp, 1, 0, 2, 3))
        kqv = g.new(f"kqv-{il}", "MUL_MAT", "F32", (hv, T, nh, 1), vt, kq)
        cur = kqv_on_host(c, g.new(f"kqv_out-{il}", "CONT", "F32", (hv * nh, T), g.permute(kqv, 0, 2, 1, 3)))
    g.expand(cur)
    return cur


def build(c: _Ctx, g: _Graph) -> _T:
    """bert.cpp's graph (llama_model_bert::graph) for bert and nomic-bert."""
    hp, T, E = c.hp, c.n_tokens, c.hp.n_embd
    n_out = c.n_outputs
    bert = hp.arch == "bert"
    rope = hp.arch in ("nomic-bert", "nomic-bert-moe", "jina-bert-v3")
    c.pos = g.input("inp_pos", "I32", T)
    x = _inp_embd(c, g)
    types = _weight(c, "token_types.weight", -1)
    if types is not None:  # token types are hardcoded to zero: the first row added
        x = g.op("inp_types", "ADD", x, g.view(types, (E,), (types.nb[0],)))
    if bert:
        pos = g.new("pos_rows", "GET_ROWS", "F32", (E, T), _w(c, "position_embd.weight", -1), c.pos)
        x = g.op("inp_embd", "ADD", pos, x)
    x = _n(c, g, x, "token_embd_norm.weight", 0, _NORM)
    mask = g.input("self_kq_mask", "F16" if c.sp.flash_attn else "F32", T, T, 1, 1)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        q, k, v = _qkv(c, g, x, il, reshape=True)
        if rope:
            q = g.new(f"Qcur-{il}", "ROPE", "F32", q.ne, q, c.pos)
            k = g.new(f"Kcur-{il}", "ROPE", "F32", k.ne, k, c.pos)
        cur = attn_no_cache(c, g, q, k, v, il, mask)
        cur = _proj(c, g, f"attn_out-{il}", b + "attn_output", cur, il)
        inp = x
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp, out_ids)
        cur = g.op(f"attn_res-{il}", "ADD", cur, inp)
        ffn_inp = _n(c, g, cur, b + "attn_output_norm.weight", il, _NORM)
        if bert:
            up = _proj(c, g, f"ffn_up-{il}", b + "ffn_up", ffn_inp, il)
            cur = _proj(c, g, f"ffn_out-{il}", b + "ffn_down", g.op(f"ffn_gelu-{il}", "UNARY", up), il)
        else:
            cur = _ffn(c, g, ffn_inp, il, Dense())
        cur = g.op(f"ffn_res-{il}", "ADD", cur, ffn_inp)
        x = _n(c, g, cur, b + "layer_output_norm.weight", il, _NORM)
    g.at(GLOBAL)
    x.flags |= OUTPUT
    g.expand(x)
    return x


def unbuildable(model: GGUFModel) -> str | None:
    """Why bert.cpp's graph cannot be built from this file (None when it can): equal Q/K/V head widths and the
    tensors the graph reads (what bert.cpp/nomic-bert.cpp's load_arch_tensors require)."""
    hp = hparams(model)
    if hp.head_k <= 0 or hp.head_k != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length > 0"
    names = {t.name for t in model.tensors}
    need = ["token_embd.weight", "token_embd_norm.weight", "token_embd_norm.bias"]
    if model.architecture == "bert":
        need.append("position_embd.weight")
    ffn = ("ffn_up", "ffn_down") if model.architecture == "bert" else ("ffn_up", "ffn_gate", "ffn_down")
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        if p + "attn_qkv.weight" not in names:
            need += [p + f"attn_{n}.weight" for n in "qkv"]
        need += [p + n + ".weight" for n in ("attn_output", *ffn)]
        need += [p + n for n in ("attn_output_norm.weight", "layer_output_norm.weight")]
    missing = next((x for x in need if x not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
