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

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _AttnInp, _Ctx, _inp_embd, _w
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, decoder, output
from ggufx.analysis.memory.graph.models._plain import RELU_SQR, Plain
from ggufx.analysis.memory.graph.models.minicpm3 import expanded_kv
from ggufx.model import GGUFModel

_D = Dense()
_FFN = Plain(ffn=RELU_SQR)
_LAYER = (
    "attn_norm", "attn_q", "attn_kv_a_mqa", "attn_kv_a_norm", "attn_kv_b", "attn_output", "ffn_norm", "ffn_up",
    "ffn_down",
)  # fmt: skip


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """plm.cpp:78-162: Q from ``attn_q``; K and V as minicpm3's (:func:`.minicpm3.expanded_kv`, no rope
    factors), the attention, the output projection."""
    hp, T = c.hp, c.n_tokens
    p = f"blk.{il}."
    q = g.reshape(g.mul_mat(f"q-{il}", _w(c, p + "attn_q.weight", il), x), hp.head_k, hp.n_head[il], T)
    q, k, v = expanded_kv(c, g, x, q, il, None)
    cur = _attn_kv(c, g, q, k, v, il, inp, False, _D)
    return g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), cur)


def _ffn(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    """plm.cpp's FFN: up, ReLU squared, down (no gate)."""
    return _plain.ffn(c, g, x, il, _FFN)


def build(c: _Ctx, g: _Graph) -> _T:
    """plm.cpp's ``graph::graph``: :func:`~._dense.decoder` of its attention and FFN, the head the token
    embeddings."""
    x = decoder(c, g, _inp_embd(c, g), _attention, _ffn, _D)
    return output(c, g, x, _w(c, "token_embd.weight", c.hp.n_layer))


def unbuildable(model: GGUFModel) -> str | None:
    md = model.metadata
    n_rot, hd = md.get_int("plm.rope.dimension_count"), md.get_int("plm.attention.key_length")
    if n_rot is None or hd is None or not 0 < n_rot <= hd:
        return "the plm graph needs plm.rope.dimension_count and plm.attention.key_length (0 < rope <= key)"
    return _plain.needs(model, _LAYER, qkv=False)
