"""``minicpm3`` (src/models/minicpm3.cpp: MiniCPM3-4B): multi-head latent attention in its expanded form
(not absorbed: an ordinary cache of ``key_length`` K and ``value_length`` V values per head): Q from
``attn_q_a``, its RMS norm and ``attn_q_b``; the compressed KV and the rope part of K from
``attn_kv_a_mqa``, the compressed part RMS-normed and expanded by ``attn_kv_b`` into each head's K (no
rope part) and V (made contiguous); RoPE of Q (its last ``n_rot`` values) and of the shared rope part,
repeated over the heads and concatenated to K. The embeddings scaled by 12, each residual branch by
``1.4 / sqrt(n_layer)``, the output norm by ``256 / n_embd`` before the head."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _proj, _w
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import (
    Dense,
    _attn_kv,
    _ffn,
    _n,
    rope_factors,
    tied_head,
)
from ggufx.analysis.memory.graph.models.qwen3next import file_value
from ggufx.model import GGUFModel

_D = Dense()
_LAYER = (
    "attn_norm", "attn_q_a", "attn_q_a_norm", "attn_q_b", "attn_kv_a_mqa", "attn_kv_a_norm", "attn_kv_b",
    "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down",
)  # fmt: skip


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """minicpm3.cpp:104-191: Q from ``attn_q_a``, its norm and ``attn_q_b``; K and V
    (:func:`expanded_kv`), the attention, the output projection."""
    hp, T = c.hp, c.n_tokens
    nh, hd = hp.n_head[il], hp.head_k
    p = f"blk.{il}."
    q = g.mul_mat(f"q-{il}", _w(c, p + "attn_q_a.weight", il), x)
    q = _n(c, g, q, p + "attn_q_a_norm.weight", il, _D)
    q = g.reshape(g.mul_mat(f"q-{il}", _w(c, p + "attn_q_b.weight", il), q), hd, nh, T)
    q, k, v = expanded_kv(c, g, x, q, il, rope_factors(c, il))
    cur = _attn_kv(c, g, q, k, v, il, inp, False, _D)
    return _proj(c, g, f"attn_out-{il}", p + "attn_output", cur, il)


def expanded_kv(c: _Ctx, g: _Graph, x: _T, q: _T, il: int, freqs: _T | None) -> tuple[_T, _T, _T]:
    """The expanded MLA of minicpm3.cpp:122-186 and plm.cpp:88-157 (the same code): the compressed KV
    and the rope part of K from ``attn_kv_a_mqa`` of the layer's input ``x``, the compressed part
    RMS-normed and expanded by ``attn_kv_b`` into each head's K (no rope part) and V (made contiguous),
    RoPE (with the rope ``freqs`` factors) of Q ``[head_k, n_head, n_tokens]`` and of the shared rope
    part, repeated over the heads and concatenated to K: the roped Q, K and V."""
    hp, T = c.hp, c.n_tokens
    nh, hd, hv = hp.n_head[il], hp.head_k, hp.head_v
    n_rot = file_value(c, f"{hp.arch}.rope.dimension_count")
    assert isinstance(n_rot, int)
    nope = hd - n_rot
    p = f"blk.{il}."
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
    src = [c.pos, *([freqs] if freqs else [])]
    q = g.new(f"q-{il}", "ROPE", "F32", q.ne, q, *src)
    k_pe = g.new(f"k_pe-{il}", "ROPE", "F32", k_pe.ne, k_pe, *src)
    rep = g.new(f"k_pe_rep-{il}", "REPEAT", "F32", (n_rot, nh, T), k_pe)
    k = g.new(f"k_states-{il}", "CONCAT", "F32", (hd, nh, T), k_nope, rep)
    return q, k, v


def build(c: _Ctx, g: _Graph) -> _T:
    """minicpm3.cpp's ``graph::graph``."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    x = g.op("inp_scaled", "SCALE", _inp_embd(c, g))
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
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", g.op(f"scale_res-{il}", "SCALE", cur), inp_sa)
        cur = _ffn(c, g, _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _D), il, _D)
        x = g.op(f"l_out-{il}", "ADD", g.op(f"scale_res-{il}", "SCALE", cur), ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    cur = g.op("lmhead_scaling", "SCALE", cur)
    out_w = tied_head(c)
    logits = g.mul_mat("result_output", out_w, cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    md = model.metadata
    n_rot = md.get_int("minicpm3.rope.dimension_count") or 0
    hd = md.get_int("minicpm3.attention.key_length") or 0
    if not 0 < n_rot < hd:
        return "the graph needs 0 < rope.dimension_count < attention.key_length (the rope part of each K head)"
    return _plain.needs(model, _LAYER, qkv=False)
