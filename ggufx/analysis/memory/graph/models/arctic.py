"""``arctic`` (src/models/arctic.cpp: Snowflake Arctic): the llama-style attention; a dense FFN (SwiGLU of
n_embd) on the attention's residual after its RMS norm, added to that residual; beside it, the experts on
the layer's input normed by ``ffn_norm_exps`` (softmax, normalized weights, no scale), added to the dense
branch."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd
from ggufx.analysis.memory.graph.models import _moe_check
from ggufx.analysis.memory.graph.models._dense import Dense, _ffn, _n, output, tied_head
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, routed
from ggufx.analysis.memory.graph.models._plain import attention
from ggufx.model import GGUFModel

_D = Dense()


def build(c: _Ctx, g: _Graph) -> _T:
    """arctic.cpp's ``graph::graph``."""
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
        cur = attention(c, g, _n(c, g, x, b + "attn_norm.weight", il, _D), il, inp, _D)  # expanded before V's rotation
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _ffn(c, g, _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _D), il, _D)
        ffn_out = g.op(f"ffn_out-{il}", "ADD", cur, ffn_inp)
        moe, _ = routed(c, g, _n(c, g, inp_sa, b + "ffn_norm_exps.weight", il, _D), il, norm_w=True)
        x = g.op(f"l_out-{il}", "ADD", moe, ffn_out)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """Per layer the norms, the dense FFN, the router and the experts arctic.cpp's loader requires."""
    roles = ["attn_norm", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "ffn_norm_exps", *ROUTER]
    return _moe_check.unbuildable(model, lambda il: (roles, EXPERTS))
