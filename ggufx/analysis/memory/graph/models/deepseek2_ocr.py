"""``deepseek2-ocr`` (DeepSeek-OCR's decoder: ``llama_model_deepseek2ocr`` runs deepseek2.cpp's graph with
``is_ocr``): DeepSeek V2's layers without MLA. The attention is ``build_qkv`` with as many KV heads as
query heads, NeoX RoPE over whole heads and ``build_attn`` over an ordinary K/V cache
(:mod:`._dense`'s attention); the rest of each layer, the leading dense FFNs, the routed and shared
experts, and the output head are deepseek2's (:func:`.deepseek2.layer_tail`, :func:`.deepseek2.output_head`)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _norm
from ggufx.analysis.memory.graph.models import _moe_dense
from ggufx.analysis.memory.graph.models._dense import Dense, _attention
from ggufx.analysis.memory.graph.models.deepseek2 import SOFTMAX, layer_tail, moe_params, output_head
from ggufx.model import GGUFModel

_ATTN = Dense()


def build(c: _Ctx, g: _Graph) -> _T:
    sp = c.sp
    mp = moe_params(c)
    gating = mp.gating or SOFTMAX  # deepseek2ocr.cpp: no gating function in the file means softmax
    T, n_out = c.n_tokens, c.n_outputs
    last = c.hp.n_layer - 1
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        cur = _attention(c, g, cur, il, inp, False, _ATTN)
        x = layer_tail(c, g, cur, inp_sa, il, il == last, out_ids, mp, gating)
    return output_head(c, g, x)


def unbuildable(model: GGUFModel) -> str | None:
    """The expert counts and groups, and each layer's tensors as deepseek2ocr.cpp creates them."""
    md = model.metadata
    arch = model.architecture or ""
    n_lead = md.get_int(f"{arch}.leading_dense_block_count") or 0

    def needed(il: int) -> tuple[list[str], list[str]]:
        if il < n_lead:
            return ["ffn_gate", "ffn_up", "ffn_down"], []
        shared = ["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]
        return ["ffn_gate_inp", *shared], ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]

    return _moe_dense.unbuildable(model, needed)
