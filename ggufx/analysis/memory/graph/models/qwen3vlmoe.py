"""``qwen3vlmoe`` (src/models/qwen3vlmoe.cpp), the text decoder of Qwen3-VL-30B-A3B / 235B-A22B: the
``qwen3vl`` graph (:mod:`ggufx.analysis.memory.graph.models.qwen3vl`: RMS norms of each Q and K head,
M-RoPE, deepstack input rows ``n_embd * (1 + n_deepstack_layers)`` wide whose slices the first layers
add) with ``build_moe_ffn`` in place of the dense FFN (softmax routing, normalized weights, no shared
expert), and without qwen3vl.cpp's Qwen3-TTS logit padding."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _w, _weight
from ggufx.analysis.memory.graph.models import _moe_dense
from ggufx.analysis.memory.graph.models._dense import _attention, _n
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, routed
from ggufx.analysis.memory.graph.models.qwen3vl import SPEC, inp_embd_wide, n_deepstack
from ggufx.model import GGUFModel


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph of qwen3vlmoe.cpp (qwen3vl.cpp's, the experts for the FFN)."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    n_ds = n_deepstack(c)
    x, padded = inp_embd_wide(c, g, E * (1 + n_ds)) if n_ds else (_inp_embd(c, g), None)
    c.pos = g.input("inp_pos", "I32", T * SPEC.n_pos)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        inp_sa = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, SPEC)
        cur = _attention(c, g, cur, il, inp, False, SPEC)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _n(c, g, ffn_inp, b + "ffn_norm.weight", il, SPEC)
        cur = routed(c, g, cur, il, norm_w=True)[0]  # qwen3vlmoe.cpp:144-157
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
        if il < n_ds:  # qwen3vlmoe.cpp:164-168: + a view of the il+1-th n_embd columns of the input rows
            assert padded is not None
            ds = g.view(padded, (E, T), padded.nb[:2])
            x = g.op(f"deepstack_out-{il}", "ADD", x, ds)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    out_w = _weight(c, "output.weight", hp.n_layer) or _w(c, "token_embd.weight", hp.n_layer)
    logits = g.mul_mat("result_output", out_w, cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Why this qwen3vlmoe file's graph cannot be built: the M-RoPE sections (read required,
    qwen3vlmoe.cpp:5), the expert counts, or a tensor the graph reads missing (llama.cpp refuses the file)."""
    if f"{model.architecture}.rope.dimension_sections" not in model.metadata:
        return f"the graph needs the metadata key {model.architecture}.rope.dimension_sections, which the file lacks"
    return _moe_dense.unbuildable(model, lambda il: (["attn_q_norm", "attn_k_norm", *ROUTER], EXPERTS))
