"""``deci`` (src/models/deci.cpp: DeciLM, Llama-3.1/3.3-Nemotron 51B, Super 49B, Ultra 253B): the llama
graph whose layers differ by their ``head_count`` / ``head_count_kv`` / ``feed_forward_length`` arrays.

Per layer (deci.cpp's graph): no query heads is an attention-free layer (the residual itself goes to the
FFN, no attention norm, no add); query heads without KV heads is the "linear attention" of Nemotron-51B
(the attention norm times ``attn_output``, no bias, added to the residual); otherwise llama's attention
(rope_freqs when the file has them, optional biases). No FFN (``feed_forward_length`` 0, Ultra-253B) ends
the layer with ``continue`` before ``inpL = cur``: the attention it built (its cache writes and the
attention, which ``build_attn_mha`` expands) stays in the graph, its output projection and residual do
not, and the next layer reads the same input."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _w, model_of
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense, _ffn, _n, output, tied_head
from ggufx.analysis.memory.hparams import _arr
from ggufx.model import GGUFModel

SPEC = Dense()


def n_ff(model: GGUFModel) -> list[int]:
    """``hparams.n_ff(il)`` per layer (a scalar for every layer or the array, ``get_key_or_arr``)."""
    n = model.metadata.get_int("deci.block_count") or 0
    return _arr(model, "deci.feed_forward_length", n, 0)


def build(c: _Ctx, g: _Graph) -> _T:
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    ff = n_ff(model_of(c))
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        nh, nkv = hp.n_head[il], hp.n_head_kv[il]
        inp_sa = x
        cur = x if nh == 0 else _n(c, g, x, b + "attn_norm.weight", il, SPEC)
        if nh > 0 and nkv == 0:  # the "linear attention" of Nemotron-51B: attn_output alone
            cur = g.mul_mat(f"wo-{il}", _w(c, b + "attn_output.weight", il), cur)
        elif nh > 0:
            cur = _plain.attention(c, g, cur, il, inp, SPEC)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        if ff[il] == 0:  # deci.cpp's `continue`: the layer's output is not the next layer's input
            continue
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa) if nh > 0 else cur
        cur = _ffn(c, g, _n(c, g, ffn_inp, b + "ffn_norm.weight", il, SPEC), il, SPEC)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """The tensors deci.cpp's loader requires for each layer's kind (llama.cpp refuses the file without
    them), and at least one attention layer (llama.cpp takes the head size from layer 0's heads)."""
    md = model.metadata
    n_layer = md.get_int("deci.block_count") or 0
    heads = _arr(model, "deci.attention.head_count", n_layer, 0)
    kv = _arr(model, "deci.attention.head_count_kv", n_layer, heads[0] if heads else 0)
    if not heads or heads[0] == 0:  # llama_model_base::load_hparams: n_embd_head_k = n_embd / n_head(0)
        return "the graph needs query heads in layer 0 (llama.cpp sizes the heads from them)"
    if any(h not in (0, heads[0]) for h in heads):  # the head size is n_embd / n_head(0) for every layer
        return "deci graphs with other query head counts than layer 0's are not simulated"
    ff = n_ff(model)
    names = {t.name for t in model.tensors}
    needed = ["token_embd.weight", "output_norm.weight"]
    for il in range(min(n_layer, 513)):
        p = f"blk.{il}."
        if heads[il] > 0:
            needed += [p + "attn_norm.weight", p + "attn_output.weight"]
        if heads[il] > 0 and kv[il] > 0 and p + "attn_qkv.weight" not in names:
            needed += [p + f"attn_{r}.weight" for r in "qkv"]
        if ff[il] > 0:
            needed += [p + f"ffn_{r}.weight" for r in ("norm", "gate", "up", "down")]
    missing = next((n for n in needed if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
