"""``phimoe`` (src/models/phimoe.cpp's loader, phi3.cpp's graph: Phi-3.5-MoE): phi3's layer (RMS norms with
their biases, the query scaled before attention, the output projection's bias, the residual added first
after the FFN, the output norm's and the head's biases) with the experts for the FFN in every layer
(``build_moe_ffn``: softmax, normalized weights, no scale). phimoe has no sliding window (one cache)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _w, _weight
from ggufx.analysis.memory.graph.models import _moe_dense
from ggufx.analysis.memory.graph.models._dense import Dense, _attention, _n
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, routed
from ggufx.model import GGUFModel

_D = Dense(q_scale=True)


def build(c: _Ctx, g: _Graph) -> _T:
    """phi3.cpp's ``graph<false>::graph`` with phimoe's tensors."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        residual = x
        cur = _attention(c, g, _n(c, g, x, b + "attn_norm.weight", il, _D), il, inp, False, _D)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            residual = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), residual, out_ids)
        residual = g.op(f"ffn_inp-{il}", "ADD", cur, residual)
        cur = _n(c, g, residual, b + "ffn_norm.weight", il, _D)
        cur, _ = routed(c, g, cur, il, norm_w=True)
        x = g.op(f"l_out-{il}", "ADD", residual, cur)
    g.at(GLOBAL)
    cur = _n(c, g, x, "output_norm.weight", hp.n_layer, _D, pin=False)
    cur.flags |= OUTPUT
    logits = g.mul_mat("result_output", _w(c, "output.weight", hp.n_layer), cur)
    ob = _weight(c, "output.bias", hp.n_layer)
    if ob is not None:
        logits = g.op("result_output", "ADD", logits, ob)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Per layer the router and the experts, and the norms' and projections' tensors phimoe.cpp's loader
    requires (their biases included)."""
    names = {t.name for t in model.tensors}
    n_layer = model.metadata.get_int("phimoe.block_count") or 0
    needed = ["output_norm.bias", "output.weight", "output.bias"]
    for il in range(min(n_layer, 513)):
        needed += [f"blk.{il}.{r}.bias" for r in ("attn_norm", "attn_output", "ffn_norm")]
    missing = next((n for n in needed if n not in names), None)
    if missing:
        return f"the graph needs tensor {missing}, which the file lacks"
    return _moe_dense.unbuildable(model, lambda il: (list(ROUTER), EXPERTS))
