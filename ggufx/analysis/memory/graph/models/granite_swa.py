"""``granite_swa`` (src/models/granite-swa.cpp: IBM GraniteSWAForCausalLM): granite's layer (the embedding,
residual and logit scales) over interleaved sliding-window attention (the pattern array marks the layers
on the sliding-window cache), attention sinks in every layer, RoPE where ``attention.rope_pattern`` says
(every layer without it), the dense SwiGLU FFN (optional biases). Not simulated: the mixture-of-experts
layers of GraniteMoeSWAForCausalLM (fused gate-up experts, a fused shared expert) and Granite Vision's
deepstack."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import (
    _attn_inp,
    _AttnInp,
    _Ctx,
    _inp_embd,
    _norm,
    _proj,
    _rot,
    _w,
    model_of,
)
from ggufx.analysis.memory.graph.models import gpt_oss, granite
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _qkv, rope_factors, rope_qk
from ggufx.analysis.memory.graph.models._plain import rot
from ggufx.format.values import GGUFArray
from ggufx.model import GGUFModel

_D = Dense()
_LAYER = ("attn_norm", "attn_output", "attn_sinks", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def _ropes(c: _Ctx) -> list[bool]:
    """``hparams.has_rope(il)`` per layer: the ``attention.rope_pattern`` array (every layer without it)."""
    v = model_of(c).metadata.get("granite_swa.attention.rope_pattern")
    n = c.hp.n_layer
    return [bool(x) for x in v.tolist()][:n] if isinstance(v, GGUFArray) else [True] * n


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp, rope: bool) -> _T:
    """granite-swa.cpp's ``build_attention_layer``: Q/K/V (``build_qkv``), RoPE where the layer has it,
    ``build_attn`` (iSWA) with the layer's sinks, the output projection (optional bias)."""
    p = f"blk.{il}."
    q, k, v = _qkv(c, g, x, il, reshape=True)
    if rope:
        q, k = rope_qk(g, q, k, c.pos, rope_factors(c, il))
    # the Hadamard rotations of a quantized cache, Q/K/V made contiguous first where they are views
    q, k, v = rot(g, q, inp.k_rot), rot(g, k, inp.k_rot), rot(g, v, inp.v_rot)
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, k_rot=None, v_rot=None), True, _D)
    gpt_oss._add_sinks(cur, _w(c, p + "attn_sinks.weight", il))
    g.expand(cur)  # build_attn_mha expands the attention's output before the rotation and projection
    return _proj(c, g, f"attn_out-{il}", p + "attn_output", _rot(g, cur, inp.v_rot), il)


def build(c: _Ctx, g: _Graph) -> _T:
    hp, sp = c.hp, c.sp
    n_out, E = c.n_outputs, hp.n_embd
    gp = granite.params(c)
    ropes = _ropes(c)
    x = _inp_embd(c, g)
    if gp.embedding_scale:  # build_inp_embd: after the select, before "embd" is expanded
        x = g.op("embd", "SCALE", x)
        g.expand(x)
    c.pos = g.input("inp_pos", "I32", c.n_tokens)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        cur = _attention(c, g, cur, il, swa if c.swa[il] else full, ropes[il])
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        if gp.residual_scale:
            cur = g.op(cur.name, "SCALE", cur)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = granite._ffn(c, g, _norm(c, g, ffn_inp, f"blk.{il}.ffn_norm.weight", il), il)
        if gp.residual_scale:
            cur = g.op(cur.name, "SCALE", cur)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return granite.scaled_output(c, g, x)


def unbuildable(model: GGUFModel) -> str | None:
    md = model.metadata
    if "granite_swa.deepstack_mapping" in md:
        return "granite_swa graphs with a deepstack_mapping (Granite Vision) are not simulated"
    if (md.get_int("granite_swa.expert_count") or 0) > 0:
        return "granite_swa graphs with experts (GraniteMoeSWAForCausalLM) are not simulated"
    names = {t.name for t in model.tensors}
    n_layer = md.get_int("granite_swa.block_count") or 0
    needed = ["token_embd.weight", "output_norm.weight"]
    for il in range(min(n_layer, 513)):
        needed += [f"blk.{il}.{r}.weight" for r in _LAYER]
        if f"blk.{il}.attn_qkv.weight" not in names:
            needed += [f"blk.{il}.attn_{r}.weight" for r in "qkv"]
    missing = next((n for n in needed if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
