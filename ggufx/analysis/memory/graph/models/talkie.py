"""``talkie`` (src/models/talkie.cpp, talkie-1930-13b): RMS norms without weights everywhere (the embeddings,
before attention and the FFN, K after RoPE, the output), Q normed after RoPE and multiplied by a per-head gain
(``attn_q_norm`` of ``[1, n_head]``), the optional per-tensor scales ``attn_output.scale`` and
``ffn_down.scale`` that the published conversion writes (``build_lora_mm``'s ``w_s``: a MUL after the
projection), the normed embeddings added to every layer's output times ``layer_output_scale``, no output norm
weight, the logits scaled by ``logit_scale``."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _w, _weight
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _ffn, _qkv
from ggufx.analysis.memory.graph.models._plain import norm
from ggufx.model import GGUFModel

_D = Dense()


def scaled(c: _Ctx, g: _Graph, x: _T, name: str, il: int) -> _T:
    """``build_lora_mm``'s optional per-tensor scale ``w_s`` (llama-graph.cpp:1563): ``x`` times ``name``
    where the file has it (llama-model.cpp:1651-1666 loads ``attn_output.scale`` / ``ffn_down.scale`` when
    present)."""
    s = _weight(c, name, il)
    return g.op(x.name, "MUL", x, s) if s is not None else x


def build(c: _Ctx, g: _Graph) -> _T:
    """talkie.cpp ``graph::graph``."""
    hp, T, n_out, E = c.hp, c.n_tokens, c.n_outputs, c.hp.n_embd
    x = norm(c, g, _inp_embd(c, g), "", -1, _D)  # inp_norm: build_norm(inpL, nullptr, ...) with il -1
    skip = x
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, c.sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        p = f"blk.{il}."
        inp_sa, inp_skip = x, skip
        cur = norm(c, g, x, "", il, _D)
        q, k, v = _qkv(c, g, cur, il, reshape=True)
        q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
        k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
        q = norm(c, g, q, p + "attn_q_norm.weight", il, _D)  # the per-head gain [1, n_head]
        k = norm(c, g, k, "", il, _D)
        cur = _attn_kv(c, g, q, k, v, il, inp, False, _D)
        cur = scaled(
            c, g, g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), cur), p + "attn_output.scale", il
        )
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
            inp_skip = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_skip, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _ffn(c, g, norm(c, g, ffn_inp, "", il, _D), il, _D)
        cur = scaled(c, g, cur, p + "ffn_down.scale", il)
        cur = g.op(f"ffn_out-{il}", "ADD", cur, ffn_inp)
        s = g.op(f"embd_skip-{il}", "MUL", inp_skip, _w(c, p + "layer_output_scale.weight", il))
        x = g.op(f"l_out-{il}", "ADD", cur, s)
    g.at(GLOBAL)
    cur = norm(c, g, x, "", -1, _D)
    cur.flags |= OUTPUT
    logits = g.op("result_output", "SCALE", g.mul_mat("result_output", _w(c, "output.weight", hp.n_layer), cur))
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """The tensors talkie.cpp's loader requires: the embeddings, the output, per layer Q/K/V (or the fused
    projection), the output projection, the Q gain, the FFN and ``layer_output_scale``."""
    layer = ("attn_output", "attn_q_norm", "ffn_gate", "ffn_up", "ffn_down", "layer_output_scale")
    names = {t.name for t in model.tensors}
    for top in ("token_embd.weight", "output.weight"):
        if top not in names:
            return f"the graph needs tensor {top}, which the file lacks"
    arch = model.architecture or ""
    n_layer = model.metadata.get_int(f"{arch}.block_count") or 0
    for il in range(min(n_layer, 513)):
        qkv = ["attn_qkv"] if f"blk.{il}.attn_qkv.weight" in names else ["attn_q", "attn_k", "attn_v"]
        missing = next((f"blk.{il}.{r}.weight" for r in (*qkv, *layer) if f"blk.{il}.{r}.weight" not in names), None)
        if missing:
            return f"the graph needs tensor {missing}, which the file lacks"
    return None


__all__ = ["build", "scaled", "unbuildable"]
