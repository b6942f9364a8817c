"""``grok`` (src/models/grok.cpp: Grok-1, Grok-2): the token embeddings scaled by ``embedding_scale``
(``build_inp_embd``; Grok-1's default when the key is absent, none when it is 0); the llama-style attention whose logits
``build_attn_mha`` scales and soft-caps (``LLM_ARCH_GROK``: SCALE, TANH, SCALE before the softmax; llama.cpp
turns flash attention off for grok), the RMS norm of the attention output (``attn_output_norm``) before the
residual; the experts (softmax, normalized weights, GELU: GEGLU with the gate experts) plus, where the file
has it (Grok-2), the dense FFN (GEGLU), their sum scaled by sqrt(2)/2; the RMS norm of the FFN output
(``layer_output_norm``, else ``post_ffw_norm``) before the residual; the logits scaled by ``logit_scale``
(always: its default is Grok-1's) and soft-capped when ``final_logit_softcapping`` is set."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _w, _weight
from ggufx.analysis.memory.graph.models import _moe_check
from ggufx.analysis.memory.graph.models._dense import Dense, _ffn, _n, tied_head
from ggufx.analysis.memory.graph.models._moe_dense import ROUTER, routed
from ggufx.analysis.memory.graph.models._plain import attention
from ggufx.analysis.memory.graph.models.qwen3next import file_value
from ggufx.model import GGUFModel

_D = Dense(attn_softcap=True, gelu=True)


def _post_norm(c: _Ctx, il: int) -> str:
    """grok.cpp's loader: ``layer_output_norm`` when the file has it, else ``post_ffw_norm``."""
    name = f"blk.{il}.layer_output_norm.weight"
    return name if _weight(c, name, il) is not None else f"blk.{il}.post_ffw_norm.weight"


def build(c: _Ctx, g: _Graph) -> _T:
    """grok.cpp's ``graph::graph``."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    x = _inp_embd(c, g)
    scale = file_value(c, "grok.embedding_scale")
    if scale is None or scale != 0:  # build_inp_embd scales by f_embedding_scale (default 78.38...) when set
        x = g.op("embd", "SCALE", x)
        g.expand(x)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        cur = attention(c, g, _n(c, g, x, b + "attn_norm.weight", il, _D), il, inp, _D)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        cur = _n(c, g, cur, b + "attn_output_norm.weight", il, _D)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _D)
        moe, _ = routed(c, g, cur, il, norm_w=True)
        if _weight(c, b + "ffn_up.weight", il) is not None:
            dense = _ffn(c, g, cur, il, _D)
            cur = g.op(f"ffn_out-{il}", "SCALE", g.op(f"ffn_out-{il}", "ADD", dense, moe))
        else:
            cur = moe
        cur = _n(c, g, cur, _post_norm(c, il), il, _D)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    out_w = tied_head(c)
    logits = g.op("result_output", "SCALE", g.mul_mat("result_output", out_w, cur))
    cap = file_value(c, "grok.final_logit_softcapping")
    if isinstance(cap, (int, float)) and cap != 0:
        logits = g.op("result_output", "SCALE", g.op("result_output", "UNARY", g.op("result_output", "SCALE", logits)))
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Per layer the norms, the router and the experts grok.cpp's loader requires, the gate experts (the
    ungated GELU experts of a file without them are not built) and, where the file has ``ffn_up``, the dense
    FFN's gate and down projections."""
    names = {t.name for t in model.tensors}

    def needed(il: int) -> tuple[list[str], list[str]]:
        p = f"blk.{il}."
        post = "layer_output_norm" if p + "layer_output_norm.weight" in names else "post_ffw_norm"
        dense = ["ffn_gate", "ffn_up", "ffn_down"] if p + "ffn_up.weight" in names else []
        flat = ["attn_norm", "attn_output", "attn_output_norm", "ffn_norm", post, *ROUTER, *dense]
        return flat, ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]

    return _moe_check.unbuildable(model, needed)
