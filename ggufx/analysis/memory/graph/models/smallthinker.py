"""``smallthinker`` (src/models/smallthinker.cpp): the router reads the layer's input before the attention
norm (its logits computed first, their rows picked with the last layer's); with a sliding window
(``graph<true>``) sliding-window layers on their own cache and mask and no RoPE in the layers where
``il % n_no_rope_layer_step == 0`` (its default 4) unless the model has exactly 4 layers, else one cache and
RoPE everywhere; in every layer the
experts (``build_moe_ffn`` given those logits: the file's gating, normalized weights, no scale, ReLU: a
REGLU of gate and up)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _w
from ggufx.analysis.memory.graph.models import _moe_dense, deepseek2, qwen3next
from ggufx.analysis.memory.graph.models._dense import Dense, _n, output, tied_head
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, GATINGS, ROUTER
from ggufx.analysis.memory.graph.models._plain import attention
from ggufx.analysis.memory.graph.models.exaone_moe import swa_attention
from ggufx.model import GGUFModel

_D = Dense()
_NO_ROPE_STEP = 4  # llama_hparams::n_no_rope_layer_step's default (with a window smallthinker.cpp keeps it)


class _GivenLogits:
    """The graph as :func:`~.deepseek2.moe_ffn` sees it, but for the router's product, which is the
    logits the layer computed before its attention (``build_moe_ffn``'s ``probs_in``)."""

    def __init__(self, g: _Graph, name: str, logits: _T) -> None:
        self._g, self._name, self._logits = g, name, logits

    def __getattr__(self, name: str) -> Any:
        return getattr(self._g, name)

    def mul_mat(self, name: str, w: _T, x: _T) -> _T:
        return self._logits if name == self._name else self._g.mul_mat(name, w, x)


def build(c: _Ctx, g: _Graph) -> _T:
    """smallthinker.cpp's ``graph<iswa>::graph``."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    iswa = any(c.swa)
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa) if iswa else full
    out_ids = g.input("out_ids", "I32", n_out)
    mp = deepseek2.moe_params(c)
    mp = replace(mp, n_used=qwen3next.n_expert_used(c), norm_w=True, scale=0.0)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        logits = g.mul_mat(f"ffn_moe_logits-{il}", _w(c, b + "ffn_gate_inp.weight", il), x)
        cur = _n(c, g, x, b + "attn_norm.weight", il, _D)
        if iswa:
            rope = _NO_ROPE_STEP == hp.n_layer or il % _NO_ROPE_STEP != 0
            cur = swa_attention(c, g, cur, il, swa if c.swa[il] else full, rope, qk_norm=False)
        else:
            cur = attention(c, g, cur, il, full, _D)  # the output expanded before the V cache's rotation
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
            logits = g.new("node_rows", "GET_ROWS", "F32", (logits.ne[0], n_out), logits, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _D)
        given = cast(_Graph, _GivenLogits(g, f"ffn_moe_logits-{il}", logits))
        cur, _ = deepseek2.moe_ffn(c, given, cur, il, mp, mp.gating)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """The gating function (``build_moe_ffn`` aborts on none: smallthinker.cpp reads it optional), and per
    layer the router and the experts the loader requires."""
    gating = model.metadata.get_int("smallthinker.expert_gating_func") or 0
    if gating not in GATINGS:
        return (
            f"the graph needs smallthinker.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), "
            f"not {gating}"
        )
    return _moe_dense.unbuildable(model, lambda il: (list(ROUTER), EXPERTS))
