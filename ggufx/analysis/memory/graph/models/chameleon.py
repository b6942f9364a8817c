"""``chameleon`` (src/models/chameleon.cpp: Chameleon 7B and 30B): llama's layer with RMS norms and a SwiGLU
FFN, the separate Q/K/V projections reshaped per head and each head layer-normed (``LLM_NORM`` with weights of
``{head, heads}`` and their optional biases) before RoPE; with ``chameleon.swin_norm`` (30B) the attention reads
the layer input itself, the attention and FFN outputs are RMS-normed *after* them (by ``attn_norm`` and
``ffn_norm``) and the FFN reads the normed attention output (the residual sum only joins after it).

After the head, the image tokens' logits (4 to 8195) are overwritten: a new 8,192-value F32 tensor of the graph
(allocated in the compute buffer), ``ggml_clamp`` of it (a new tensor) and ``ggml_set_1d`` over the logits (not
in place: a copy of the logits, the graph's output, beside the head's product)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _proj, _w
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _ffn, _n, _qkv, tied_head
from ggufx.model import GGUFModel

_RMS = Dense()  # the layer's norms, and build_attn's and build_ffn's switches (llama's)
_LN = Dense(norm="NORM")  # the Q/K head norms (LLM_NORM)
IMG_TOKENS = 8196 - 4  # chameleon.cpp:184-186: img_token_end_idx - img_token_start_idx


def swin_norm(c: _Ctx) -> bool:
    """``hparams.swin_norm`` (``chameleon.swin_norm``, optional, false without it)."""
    return c.model is not None and c.model.metadata.get("chameleon.swin_norm") is True


def attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """``build_qkv`` (the projections reshaped per head), the layer norm of each Q and K head (times its
    weight, plus its bias where the file has one), ``ggml_rope_ext`` without frequency factors, ``build_attn``
    and the output projection."""
    p = f"blk.{il}."
    q, k, v = _qkv(c, g, x, il, reshape=True)
    q = _n(c, g, q, p + "attn_q_norm.weight", il, _LN)
    k = _n(c, g, k, p + "attn_k_norm.weight", il, _LN)
    assert c.pos is not None
    q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
    cur = _attn_kv(c, g, q, k, v, il, inp, False, _RMS)
    return _proj(c, g, f"attn_out-{il}", p + "attn_output", cur, il)


def build(c: _Ctx, g: _Graph) -> _T:
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    swin = swin_norm(c)
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        cur = x if swin else _n(c, g, x, b + "attn_norm.weight", il, _RMS)
        cur = attention(c, g, cur, il, inp)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        if swin:
            cur = _n(c, g, cur, b + "attn_norm.weight", il, _RMS)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        # with swin_norm the FFN reads the normed attention output, not the residual (chameleon.cpp:158-170)
        cur = _ffn(c, g, cur if swin else _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _RMS), il, _RMS)
        if swin:
            cur = _n(c, g, cur, b + "ffn_norm.weight", il, _RMS)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    out_w = tied_head(c)
    logits = g.mul_mat("result_output_with_img_logits", out_w, cur)
    img = g.op("img_logits", "CLAMP", g.leaf("img_logits", "F32", (IMG_TOKENS,)))
    out = g.op("result_output", "SET", logits, img)
    out.flags |= OUTPUT
    return out


def unbuildable(model: GGUFModel) -> str | None:
    """chameleon.cpp's load_arch_tensors: every layer's norms (the Q/K head norms included), the separate Q/K/V
    projections, the output projection and the SwiGLU FFN are required; the head is the tied embeddings
    without ``output.weight``. ``ggml_set_1d`` writes 8,192 values from the fifth logit on: with a narrower head
    llama.cpp sizes its buffers but aborts computing the first token (ggml-cpu/ops.cpp:5041, ``offset + ... <=
    ggml_nbytes(dst)`` at one output), so such a file is refused."""
    layer = ("attn_norm", "attn_q_norm", "attn_k_norm", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    why = _plain.needs(model, layer)
    if why is not None:
        return why
    head = next((t for t in model.tensors if t.name == "output.weight"), None) or next(
        (t for t in model.tensors if t.name == "token_embd.weight"), None
    )
    if head is not None and len(head.shape) > 1 and head.shape[1] < 8196:
        n = head.shape[1]
        return f"the chameleon graph needs at least 8196 logits per token (the image tokens' are set), the head has {n}"
    return None
