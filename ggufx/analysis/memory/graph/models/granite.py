"""``granite`` and ``granitemoe`` (src/models/granite.cpp; ``llama_model_granite_moe`` uses its graph):
a llama-style decoder with Granite's scales: the embeddings times ``embedding_scale``, each residual
branch times ``residual_scale``, the logits divided by ``logit_scale`` (``SCALE`` nodes, each in place
where its source has no other reader), RoPE switched by ``rope.scaling.finetuned``; the dense FFN
(granite) or the softmax-routed, normalized experts plus an optional shared expert (granitemoe)."""

from __future__ import annotations

from dataclasses import dataclass

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import (
    _attn_inp,
    _attn_kv,
    _AttnInp,
    _Ctx,
    _inp_embd,
    _moe_ffn,
    _norm,
    _proj,
    _w,
    _weight,
    model_of,
)
from ggufx.analysis.memory.graph.models._dense import rope_qk, tied_head
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

__all__ = ["GraniteParams", "build", "params", "read_params", "unbuildable"]


@dataclass(frozen=True, slots=True)
class GraniteParams:
    """What granite.cpp's ``load_arch_hparams`` reads that the graph depends on."""

    embedding_scale: bool  # f_embedding_scale != 0: a SCALE of the embeddings
    residual_scale: bool  # f_residual_scale != 0: a SCALE of each residual branch
    rope: bool  # rope.scaling.finetuned (default true): RoPE on Q and K
    n_used: int  # expert_used_count (granitemoe)
    n_ff_shexp: int  # expert_shared_feed_forward_length (granitemoe shared)
    deepstack: bool = False  # deepstack_mapping present (Granite Vision 4.1: not rebuilt here)


def _nonzero(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0


def read_params(model: GGUFModel) -> GraniteParams:
    """The graph's parameters from a model's metadata."""
    md, arch = model.metadata, model.architecture or ""
    return GraniteParams(
        _nonzero(md.get(f"{arch}.embedding_scale")),
        _nonzero(md.get(f"{arch}.residual_scale")),
        bool(md.get(f"{arch}.rope.scaling.finetuned", True)),
        md.get_int(f"{arch}.expert_used_count") or 0,
        md.get_int(f"{arch}.expert_shared_feed_forward_length") or 0,
        f"{arch}.deepstack_mapping" in md,
    )


def params(c: _Ctx) -> GraniteParams:
    """The model's parameters."""
    return read_params(model_of(c))


def unbuildable(model: GGUFModel) -> str | None:
    """Why this granite/granitemoe file's graph cannot be built (None when it can): every tensor the
    graph reads (granite.cpp / granite-moe.cpp ``load_arch_tensors``), the expert counts; fused QKV,
    LongRoPE factors and Granite Vision's deepstack are not rebuilt here."""
    arch, p = model.architecture or "", read_params(model)
    n_layer = hparams(model).n_layer
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    if p.deepstack:
        return f"{arch} graphs with a deepstack_mapping (Granite Vision) are not simulated"
    odd = next((n for n in tensors if n.endswith((".attn_qkv.weight", "rope_factors_long.weight"))), None)
    if odd:
        return f"{arch} graphs with tensor {odd} are not simulated"
    needed = ["token_embd.weight", "output_norm.weight"]
    for il in range(n_layer):
        b = f"blk.{il}."
        needed += [b + n for n in ("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight")]
        needed += [b + "attn_output.weight", b + "ffn_norm.weight"]
        if b + "ffn_gate_inp.weight" in tensors:
            needed += [b + n for n in ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")]
            if p.n_ff_shexp > 0:
                needed += [b + f"ffn_{r}_shexp.weight" for r in ("gate", "up", "down")]
        else:
            needed += [b + n for n in ("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")]
    missing = next((n for n in needed if n not in tensors), None)
    if missing:
        return f"the graph needs tensor {missing}, which the file lacks"
    for il in range(n_layer):
        name = f"blk.{il}.ffn_up_exps.weight"
        if name in needed:
            if len(tensors[name]) != 3 or len(tensors[f"blk.{il}.ffn_down_exps.weight"]) != 3:
                return f"the graph needs a three-dimensional tensor {name}"
            if not 0 < p.n_used <= tensors[name][2]:
                return "the graph needs 0 < expert_used_count <= expert_count"
    return None


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp, rope: bool) -> _T:
    """``build_attention_layer`` (granite.cpp): Q/K/V (optional biases), RoPE with the rope factors
    when the model has them, attention over the cache, the output projection (optional bias)."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    p = f"blk.{il}."
    q = g.reshape(_proj(c, g, f"Qcur-{il}", p + "attn_q", x, il), hd, nh, T)
    k = g.reshape(_proj(c, g, f"Kcur-{il}", p + "attn_k", x, il), hd, nkv, T)
    v = g.reshape(_proj(c, g, f"Vcur-{il}", p + "attn_v", x, il), hv, nkv, T)
    if rope:
        q, k = rope_qk(g, q, k, c.pos, _weight(c, "rope_freqs.weight", il))
    cur = _attn_kv(c, g, q, k, v, il, inp, False)
    return _proj(c, g, f"attn_out-{il}", p + "attn_output", cur, il)


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int, role: str = "") -> _T:
    """``build_ffn`` with SiLU and a parallel gate (optional biases)."""
    b = f"blk.{il}."
    gate = _proj(c, g, f"ffn_gate{role}-{il}", b + f"ffn_gate{role}", cur, il)
    up = _proj(c, g, f"ffn_up{role}-{il}", b + f"ffn_up{role}", cur, il)
    act = g.new(f"ffn_swiglu{role}-{il}", "GLU", "F32", gate.ne, gate, up)
    return _proj(c, g, f"ffn_out{role}-{il}", b + f"ffn_down{role}", act, il)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph of granite.cpp."""
    hp, sp = c.hp, c.sp
    n_out, E = c.n_outputs, hp.n_embd
    gp = params(c)
    # graph_reserve (llama-context.cpp:2531) rounds the micro-batch up to a multiple of the sequences
    x = _inp_embd(c, g)
    if gp.embedding_scale:  # build_inp_embd: after the select, before "embd" is expanded
        x = g.op("embd", "SCALE", x)
        g.expand(x)
    if gp.rope:
        c.pos = g.input("inp_pos", "I32", c.n_tokens)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        cur = _attention(c, g, cur, il, inp, gp.rope)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        if gp.residual_scale:
            cur = g.op(cur.name, "SCALE", cur)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _norm(c, g, ffn_inp, f"blk.{il}.ffn_norm.weight", il)
        if _weight(c, f"blk.{il}.ffn_gate_inp.weight", il) is None:
            cur = _ffn(c, g, cur, il)
        else:
            c.moe = gp.n_used
            moe = _moe_ffn(c, g, cur, il)
            if gp.n_ff_shexp > 0:
                moe = g.op(f"ffn_out-{il}", "ADD", moe, _ffn(c, g, cur, il, "_shexp"))
            cur = moe
        if gp.residual_scale:
            cur = g.op(cur.name, "SCALE", cur)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return scaled_output(c, g, x)


def scaled_output(c: _Ctx, g: _Graph, x: _T) -> _T:
    """Granite's output head (granite.cpp, and the Granite-style graphs: Granite SWA, MiniCPM, Granite Switch):
    the final RMS norm, the output projection (the tied token embeddings where there is none) divided by
    ``logit_scale``."""
    hp = c.hp
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    out_w = tied_head(c)
    logits = g.op("result_output", "SCALE", g.mul_mat("result_output", out_w, cur))  # / logit_scale
    logits.flags |= OUTPUT
    return logits
