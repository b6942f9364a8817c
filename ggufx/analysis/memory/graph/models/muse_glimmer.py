"""``muse-glimmer`` (src/models/muse-glimmer.cpp, Muse Glimmer 30B): the embeddings RMS-normed without a weight;
sliding-window layers (``load_swa_pattern(ml, 4)``: every fourth layer full) on their own cache and mask, RoPE
on them only (NoPE on the full ones); Q/K/V, RMS norms of each Q and K head, the attention without its output
projection times the sigmoid of ``attn_gate`` of the layer's normed input (afmoe.cpp's gate,
:mod:`.afmoe`), then the output projection; post-attention and post-FFN norms made with ``ggml_rms_norm``
directly (not named "norm": not pinned) beside the pre-norms; a SwiGLU FFN; the logits scaled by
``logit_scale`` and soft-capped unless ``final_logit_softcapping`` is 0 (its default is 30)."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _rot, _w
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _ffn, _n, _qkv
from ggufx.analysis.memory.graph.models._plain import needs, norm, rot
from ggufx.model import GGUFModel

_D = Dense()


def gated_attention(
    c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp, rope: bool, qk_norm: bool = True, block: int | None = None
) -> _T:
    """muse-glimmer.cpp:80-133 (afmoe.cpp:144-196, hrm-text.cpp:113-148 without the Q/K norms): Q/K/V
    (``build_qkv``), the gate projection of the attention's input, the Q/K head norms, RoPE where ``rope``,
    ``build_attn`` without the output projection (layer ``il``'s cache), the output times the gate's sigmoid,
    the output projection. ``block``: the weights' block when it is not ``il`` (hrm-text.cpp's aliased slots)."""
    bid = il if block is None else block
    p = f"blk.{bid}."
    q, k, v = _qkv(c, g, x, bid, reshape=True)
    gate = g.mul_mat(f"attn_gate_proj-{il}", _w(c, p + "attn_gate.weight", bid), x)
    if qk_norm:
        q = _n(c, g, q, p + "attn_q_norm.weight", il, _D)
        k = _n(c, g, k, p + "attn_k_norm.weight", il, _D)
    if rope:
        assert c.pos is not None
        q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
        k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
    v = rot(g, v, inp.v_rot)  # a V view of a fused QKV made contiguous for a rotated cache
    iswa = any(c.swa)
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, v_rot=None), iswa, _D)
    g.expand(cur)  # build_attn_mha expands the attention's output before the rotation
    cur = _rot(g, cur, inp.v_rot)
    cur = g.op(f"attn_gated-{il}", "MUL", cur, g.op(f"attn_gate_sig-{il}", "UNARY", gate))
    return g.mul_mat(f"attn_o_proj-{il}", _w(c, p + "attn_output.weight", bid), cur)


def build(c: _Ctx, g: _Graph) -> _T:
    """muse-glimmer.cpp ``graph::graph``."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    x = norm(c, g, _inp_embd(c, g), "", -1, _D)  # embd_norm: build_norm(inpL, NULL, ...) with il -1
    c.pos = g.input("inp_pos", "I32", T)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, _D)
        cur = gated_attention(c, g, cur, il, swa if c.swa[il] else full, c.swa[il])
        cur = _n(c, g, cur, b + "post_attention_norm.weight", il, _D, pin=False)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _ffn(c, g, _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _D), il, _D)
        cur = _n(c, g, cur, b + "post_ffw_norm.weight", il, _D, pin=False)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = norm(c, g, x, "output_norm.weight", -1, _D)
    cur.flags |= OUTPUT
    logits = g.op("result_output", "SCALE", g.mul_mat("result_output", _w(c, "output.weight", hp.n_layer), cur))
    if softcap(c):
        logits = g.op("result_output", "UNARY", g.op("result_output", "SCALE", logits))
        logits = g.op("result_output", "SCALE", logits)
    logits.flags |= OUTPUT
    return logits


def softcap(c: _Ctx) -> bool:
    """Whether the logits are soft-capped (muse-glimmer.cpp:185: SCALE, TANH, SCALE when
    ``f_final_logit_softcapping`` is not 0): the loader reads ``final_logit_softcapping`` optionally, over
    llama_hparams' default of 30 (llama-hparams.h:137), so only a file that sets it to 0 has none."""
    v = c.model.metadata.get(f"{c.hp.arch}.final_logit_softcapping", 30.0) if c.model is not None else 30.0
    return not (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0)


def unbuildable(model: GGUFModel) -> str | None:
    """Every tensor muse-glimmer.cpp's loader creates (all required)."""
    layer = (
        "attn_norm",
        "post_attention_norm",
        "attn_output",
        "attn_q_norm",
        "attn_k_norm",
        "attn_gate",
        "ffn_norm",
        "post_ffw_norm",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    )
    return needs(model, layer, ("output.weight",))
