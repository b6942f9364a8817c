"""``minicpm`` (src/models/minicpm.cpp: MiniCPM 1/2, ``using graph = llama_model_granite::graph``): granite's
graph (:mod:`.granite`) with MiniCPM's defaults (minicpm.cpp's ``load_arch_hparams``): the embeddings
scaled by ``embedding_scale`` (12 when absent), each residual branch by ``residual_scale`` (1.4 /
sqrt(n_layer) when absent), the logits divided by ``logit_scale`` (256 / n_embd when absent), RoPE in
every layer. Mixture-of-experts MiniCPM files are not built here."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _norm, model_of
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models.granite import _attention, _ffn, scaled_output
from ggufx.model import GGUFModel

_LAYER = ("attn_norm", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def _scale(model: GGUFModel, key: str, default: float) -> bool:
    """Whether the scale is set (nonzero): the file's key, else MiniCPM's default."""
    v = model.metadata.get(f"minicpm.{key}", default)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0


def build(c: _Ctx, g: _Graph) -> _T:
    """granite.cpp's ``graph::graph`` with MiniCPM's scales."""
    hp, sp = c.hp, c.sp
    n_out, E = c.n_outputs, hp.n_embd
    model = model_of(c)
    embedding_scale = _scale(model, "embedding_scale", 12.0)
    residual_scale = _scale(model, "residual_scale", 1.4)
    x = _inp_embd(c, g)
    if embedding_scale:  # build_inp_embd: after the select, before "embd" is expanded
        x = g.op("embd", "SCALE", x)
        g.expand(x)
    c.pos = g.input("inp_pos", "I32", c.n_tokens)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        cur = _attention(c, g, cur, il, inp, True)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        if residual_scale:
            cur = g.op(cur.name, "SCALE", cur)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _ffn(c, g, _norm(c, g, ffn_inp, f"blk.{il}.ffn_norm.weight", il), il)
        if residual_scale:
            cur = g.op(cur.name, "SCALE", cur)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return scaled_output(c, g, x)


def unbuildable(model: GGUFModel) -> str | None:
    if (model.metadata.get_int("minicpm.expert_count") or 0) > 0:
        return "mixture-of-experts minicpm graphs are not simulated"
    odd = next((t.name for t in model.tensors if t.name.endswith(".attn_qkv.weight")), None)
    if odd:  # granite's attention reads the three projections
        return f"minicpm graphs with tensor {odd} are not simulated"
    return _plain.needs(model, _LAYER)
