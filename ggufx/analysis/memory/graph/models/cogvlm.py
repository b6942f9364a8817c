"""``cogvlm`` (src/models/cogvlm.cpp: CogVLM's text decoder): the graph of a micro-batch of tokens, which runs
the language weights of every layer (the visual expert's ``vis_attn_qkv``, ``vis_attn_output``, ``vis_gate``,
``vis_up`` and ``vis_down`` run for a batch of image embeddings instead; llama.cpp loads them but the reserve's
graph, whose micro-batch has tokens, never reads them). llama's layer over the fused QKV: three views of it
(``ggml_view_3d`` per head), plain ``ggml_rope`` of Q and K (no frequency factors), ``build_attn``, RMS norms and
SwiGLU; the embeddings input has no mixed token/embedding branch (``llm_arch_supports_mixed_batch``: false
for cogvlm); unlike llama's graph there are no output rows (``build_inp_out_ids`` is not called): the last layer and
the head run over every token of the micro-batch."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _proj, _rot, _w
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _ffn, _n, _qkv, output, tied_head
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

_D = Dense()  # llama's switches: RMS norms, SwiGLU
LAYER = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
VISUAL = ("vis_attn_qkv", "vis_attn_output", "vis_gate", "vis_up", "vis_down")


def attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """The fused projection and its three per-head views, ``ggml_rope`` of Q and K, then ``build_attn``:
    the Hadamard rotations of a quantized cache (Q, K and the V view made contiguous first: :func:`_plain.rot`),
    the cache writes, the attention, the output rotation and the output projection."""
    p = f"blk.{il}."
    q, k, v = _qkv(c, g, x, il, reshape=True)
    assert c.pos is not None
    q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
    q, k = _plain.rot(g, q, inp.k_rot), _plain.rot(g, k, inp.k_rot)
    v = _plain.rot(g, v, inp.v_rot)
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, k_rot=None, v_rot=None), False, _D)
    g.expand(cur)
    cur = _rot(g, cur, inp.v_rot)
    return _proj(c, g, f"attn_out-{il}", p + "attn_output", cur, il)


def build(c: _Ctx, g: _Graph) -> _T:
    hp, T = c.hp, c.n_tokens
    # build_inp_embd without the mixed token/embedding branch (llm_arch_supports_mixed_batch: not cogvlm's)
    tokens = g.input("inp_tokens", "I32", T)
    x = g.new("embd", "GET_ROWS", "F32", (hp.n_embd, T), _w(c, "token_embd.weight", -1), tokens)
    g.expand(x)
    g.expand(g.input("inp_embd", "F32", hp.n_embd, T))  # the embeddings branch ggml_build_forward_select keeps
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, c.sp.n_kv)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        cur = attention(c, g, _n(c, g, x, b + "attn_norm.weight", il, _D), il, inp)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, x)
        cur = _ffn(c, g, _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _D), il, _D)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """cogvlm.cpp's load_arch_tensors requires the fused QKV, the output projection, the norms and the FFN of
    the language and of the visual expert in every layer (llama.cpp refuses a file without one)."""
    why = _plain.needs(model, (*LAYER, *VISUAL), qkv=False)
    if why is not None:
        return why
    # the loader's shape is {n_embd, n_embd_head_k * n_head * 3}: no grouped KV heads (CogVLM2's multi-query QKV,
    # hidden + 2 x 8 heads wide, is refused: "wrong shape")
    hp = hparams(model)
    width = 3 * hp.head_k * hp.n_head[0]
    odd = next((t for t in model.tensors if t.name.endswith("attn_qkv.weight") and t.shape[1] != width), None)
    if odd is not None:
        return f"the cogvlm graph needs {odd.name} {width} wide (3 x heads x head size), llama.cpp's loader refuses it"
    return None
