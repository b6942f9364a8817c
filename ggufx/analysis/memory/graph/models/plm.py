"""``plm`` (src/models/plm.cpp: PLM-1.8B): minicpm3's expanded multi-head latent attention without the Q
compression (Q from ``attn_q``; the compressed KV and the rope part of K from ``attn_kv_a_mqa``, the
compressed part RMS-normed and expanded by ``attn_kv_b`` into each head's K and V, V made contiguous; RoPE
of Q and of the shared rope part, repeated over the heads and concatenated to K) over an ordinary cache;
an FFN of up, ReLU squared and down (no gate); the head is the token embeddings.

llama.cpp 11434 builds this graph with flash attention off only: with it on, the KV cache's ``cpy_v`` takes
plm.cpp's V (a 2-D view ``[n_embd_v_gqa, n_tokens]``) for one token of ``n_tokens`` heads and
``ggml_set_rows`` aborts (``GGML_ASSERT(a->ne[0] == b->ne[0])``). Without flash attention the same V is
written whole (the element count is the same): the graph here keeps V three-dimensional, as minicpm3's."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _w
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _n
from ggufx.analysis.memory.graph.models._plain import RELU_SQR, Plain
from ggufx.analysis.memory.graph.models.qwen3next import file_value
from ggufx.model import GGUFModel

_D = Dense()
_FFN = Plain(ffn=RELU_SQR)
_LAYER = (
    "attn_norm", "attn_q", "attn_kv_a_mqa", "attn_kv_a_norm", "attn_kv_b", "attn_output", "ffn_norm", "ffn_up",
    "ffn_down",
)  # fmt: skip


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """plm.cpp's attention block."""
    hp, T = c.hp, c.n_tokens
    nh, hd, hv = hp.n_head[il], hp.head_k, hp.head_v
    n_rot = file_value(c, "plm.rope.dimension_count")
    assert isinstance(n_rot, int)
    nope = hd - n_rot
    p = f"blk.{il}."
    q = g.reshape(g.mul_mat(f"q-{il}", _w(c, p + "attn_q.weight", il), x), hd, nh, T)
    kv_pe = g.mul_mat(f"kv_pe_compresseed-{il}", _w(c, p + "attn_kv_a_mqa.weight", il), x)
    kv_lora = kv_pe.ne[0] - n_rot
    es, row = kv_pe.nb[0], kv_pe.nb[1]
    compressed = g.view(kv_pe, (kv_lora, T), (es, row))
    k_pe = g.view(kv_pe, (n_rot, 1, T), (es, row, row))
    compressed = _n(c, g, compressed, p + "attn_kv_a_norm.weight", il, _D)
    kv = g.mul_mat(f"kv-{il}", _w(c, p + "attn_kv_b.weight", il), compressed)
    kes = kv.nb[0]
    k_nope = g.view(kv, (nope, nh, T), (kes, kes * (nope + hv), kes * (nope + hv) * nh))
    v = g.view(kv, (hv, nh, T), (kes, kes * (nope + hv), kes * (nope + hv) * nh))
    v = g.new(f"v_states-{il}", "CONT", "F32", (hv, nh, T), v)
    assert c.pos is not None
    q = g.new(f"q-{il}", "ROPE", "F32", q.ne, q, c.pos)
    k_pe = g.new(f"k_pe-{il}", "ROPE", "F32", k_pe.ne, k_pe, c.pos)
    rep = g.new(f"k_pe_rep-{il}", "REPEAT", "F32", (n_rot, nh, T), k_pe)
    k = g.new(f"k_states-{il}", "CONCAT", "F32", (hd, nh, T), k_nope, rep)
    cur = _attn_kv(c, g, q, k, v, il, inp, False, _D)
    return g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), cur)


def build(c: _Ctx, g: _Graph) -> _T:
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        cur = _attention(c, g, _n(c, g, x, b + "attn_norm.weight", il, _D), il, inp)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _plain.ffn(c, g, _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _D), il, _FFN)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    logits = g.mul_mat("result_output", _w(c, "token_embd.weight", hp.n_layer), cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    md = model.metadata
    n_rot, hd = md.get_int("plm.rope.dimension_count"), md.get_int("plm.attention.key_length")
    if n_rot is None or hd is None or not 0 < n_rot <= hd:
        return "the plm graph needs plm.rope.dimension_count and plm.attention.key_length (0 < rope <= key)"
    return _plain.needs(model, _LAYER, qkv=False)
