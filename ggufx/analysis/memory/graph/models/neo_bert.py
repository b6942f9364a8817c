"""``neo-bert`` (src/models/neo-bert.cpp: NeoBERT), ``eurobert`` (src/models/eurobert.cpp: EuroBERT) and
``llama-embed`` (src/models/llama-embed.cpp: llama.cpp's ``llama_model_llama::graph<true>``): pre-norm encoders with
RMS norms. llama.cpp makes no memory for the first two (create_memory: ``res = nullptr``); llama-embed gets the
default KV cache, which its graph never reads or writes. Every layer attends over the micro-batch alone (``build_attn_inp_no_cache``), K and V cast to F16 for flash attention
(:func:`.bert.attn_no_cache`).

Per layer: the RMS norm, Q, K, V (neo-bert's fused ``attn_qkv``; eurobert's separate or fused projections), RoPE,
the attention and its output, the residual, the FFN's RMS norm, the FFN (neo-bert: SwiGLU over a double-width
``ffn_up``; eurobert: SwiGLU over ``ffn_gate`` and ``ffn_up``), ``ffn_down``, the residual; the output RMS norm
(neo-bert: ``enc.output_norm``) is ``t_embd`` (llama-embed: no lm_head). llama-embed's optional biases and
``rope_freqs`` are read where the file has them; its mixture-of-experts variant is not built."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _norm, _proj, _w, _weight, with_pooling
from ggufx.analysis.memory.graph.models._dense import Dense, _ffn, _qkv
from ggufx.analysis.memory.graph.models.bert import attn_no_cache
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel


def _out_norm(arch: str | None) -> str:
    return "enc.output_norm.weight" if arch == "neo-bert" else "output_norm.weight"


def build(c: _Ctx, g: _Graph) -> _T:
    """neo-bert.cpp's and eurobert.cpp's graphs."""
    hp, T, E = c.hp, c.n_tokens, c.hp.n_embd
    n_out = c.n_outputs
    neo = hp.arch == "neo-bert"
    if hp.arch == "llama-embed":  # llama.cpp's graph<embed>: the embeddings before the positions
        x = _inp_embd(c, g)
        c.pos = g.input("inp_pos", "I32", T)
    else:
        c.pos = g.input("inp_pos", "I32", T)
        x = _inp_embd(c, g)
    mask = g.input("self_kq_mask", "F16" if c.sp.flash_attn else "F32", T, T, 1, 1)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        inp = x
        cur = _norm(c, g, x, b + "attn_norm.weight", il)
        q, k, v = _qkv(c, g, cur, il, reshape=True)
        # get_rope_factors (llama-model.cpp): llama's rope_freqs when the file has them
        rope = [c.pos, *([f] if (f := _weight(c, "rope_freqs.weight", il)) is not None else [])]
        q = g.new(f"Qcur-{il}", "ROPE", "F32", q.ne, q, *rope)
        k = g.new(f"Kcur-{il}", "ROPE", "F32", k.ne, k, *rope)
        cur = attn_no_cache(c, g, q, k, v, il, mask)
        cur = _proj(c, g, f"attn_out-{il}", b + "attn_output", cur, il)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp)
        cur = _norm(c, g, ffn_inp, b + "ffn_norm.weight", il)
        if neo:
            up = _proj(c, g, f"ffn_up-{il}", b + "ffn_up", cur, il)
            cur = g.new(f"ffn_swiglu-{il}", "GLU", "F32", (up.ne[0] // 2, *up.ne[1:]), up)
            cur = _proj(c, g, f"ffn_out-{il}", b + "ffn_down", cur, il)
        else:
            cur = _ffn(c, g, cur, il, Dense())
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, _out_norm(hp.arch), hp.n_layer))
    cur.flags |= OUTPUT
    g.expand(cur)
    return with_pooling(c, g, cur, cur)


def unbuildable(model: GGUFModel) -> str | None:
    """Why the graph cannot be built from this file (None when it can): equal Q/K/V head widths and the tensors the
    graph reads (what the files' load_arch_tensors require)."""
    hp = hparams(model)
    if hp.head_k <= 0 or hp.head_k != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length > 0"
    names = {t.name for t in model.tensors}
    if any(n.endswith("ffn_gate_inp.weight") for n in names):
        return "the graph of a mixture-of-experts llama-embed file is not built"
    neo = model.architecture == "neo-bert"
    need = ["token_embd.weight", _out_norm(model.architecture)]
    ffn = ("ffn_up", "ffn_down") if neo else ("ffn_gate", "ffn_up", "ffn_down")
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        if p + "attn_qkv.weight" not in names:
            need += [p + f"attn_{n}.weight" for n in "qkv"]
        need += [p + n + ".weight" for n in ("attn_norm", "attn_output", "ffn_norm", *ffn)]
    missing = next((x for x in need if x not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
