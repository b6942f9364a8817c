"""``step35`` (src/models/step35.cpp: Step-3.5-Flash): sliding-window layers (the pattern array) on their own
cache and mask, per-layer head counts (and RoPE dimensions: the same node shapes), optional RMS norms of
each Q and K head; the attention output (no projection inside ``build_attn``) times the sigmoid of the
head-wise gate ``attn_gate`` where the file has it, then the output projection; a dense FFN in layers
without a router, else the routed experts (the file's gating, sigmoid when unset; the optional selection
bias; the file's weight normalization and scale) plus the shared expert. The last layer's rows are picked
after the layers (the hidden state is an output, ``t_h_nextn``), then the output norm and head. The MTP
blocks are not in the graph. The SwiGLU clamps of a layer (``swiglu_clamp_exp`` for the experts,
``swiglu_clamp_shexp`` for every other ``build_ffn`` of the layer: the shared expert and the dense FFN)
replace the GLU by the clamped up projection times the clamped SiLU of the gate (llama-graph.cpp
``build_ffn`` and ``build_moe_ffn``: CLAMP, SILU, CLAMP, MUL)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _rot, _w, _weight, model_of
from ggufx.analysis.memory.graph.models import _moe_dense, deepseek2, qwen3next
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, _ffn, _n, _qkv, rope_factors, rope_qk
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, GATINGS, ROUTER, SHARED, shared
from ggufx.analysis.memory.graph.models._plain import rot
from ggufx.analysis.memory.graph.models.deepseek2 import SIGMOID
from ggufx.format.values import GGUFArray
from ggufx.model import GGUFModel

_D = Dense()


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """step35.cpp:40-115."""
    hp, T = c.hp, c.n_tokens
    nh, hv = hp.n_head[il], hp.head_v
    p = f"blk.{il}."
    q, k, v = _qkv(c, g, x, il, reshape=True)
    if _weight(c, p + "attn_q_norm.weight", il) is not None:
        q = _n(c, g, q, p + "attn_q_norm.weight", il, _D)
    if _weight(c, p + "attn_k_norm.weight", il) is not None:
        k = _n(c, g, k, p + "attn_k_norm.weight", il, _D)
    q, k = rope_qk(g, q, k, c.pos, None if c.swa[il] else rope_factors(c, il))
    v = rot(g, v, inp.v_rot)  # a V view of the fused QKV made contiguous for a rotated cache
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, v_rot=None), True, _D)
    g.expand(cur)  # build_attn_mha expands the attention's output before the rotation
    cur = _rot(g, cur, inp.v_rot)
    gate_w = _weight(c, p + "attn_gate.weight", il)
    if gate_w is not None:
        gate = g.op(f"attn_gate-{il}", "UNARY", g.mul_mat(f"attn_gate-{il}", gate_w, x))
        gated = g.op(f"attn_gated-{il}", "MUL", g.reshape(cur, hv, nh, T), g.reshape(gate, 1, nh, T))
        cur = g.reshape(gated, hv * nh, T)
    return g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_output.weight", il), cur)


class _ClampedExperts:
    """The graph as :func:`~.deepseek2.moe_ffn` sees it, but for the experts' GLU, which becomes
    ``build_moe_ffn``'s clamped SwiGLU (llama-graph.cpp: ``up`` clamped to +-limit, the SiLU of the gate
    clamped above at limit, their product): everything else is the graph's."""

    def __init__(self, g: _Graph, il: int) -> None:
        self._g, self._il = g, il

    def __getattr__(self, name: str) -> Any:
        return getattr(self._g, name)

    def new(self, name: str, op: str, type_: str, ne: tuple[int, ...], *src: _T) -> _T:
        if op != "GLU" or name != f"ffn_moe_swiglu-{self._il}":
            return self._g.new(name, op, type_, ne, *src)
        return _clamped_swiglu(self._g, src[0], src[1], "ffn_moe_", self._il)


def _clamped_swiglu(g: _Graph, gate: _T, up: _T, prefix: str, il: int) -> _T:
    up = g.op(f"{prefix}up_clamped-{il}", "CLAMP", up)
    act = g.op(f"{prefix}silu_clamped-{il}", "CLAMP", g.op(f"{prefix}silu-{il}", "UNARY", gate))
    return g.op(f"{prefix}swiglu_limited-{il}", "MUL", act, up)


def _clamped_ffn(c: _Ctx, g: _Graph, cur: _T, il: int, part: str) -> _T:
    """``build_ffn`` (SiLU, parallel gate) with the layer's clamp: up, gate, the clamped SwiGLU, down."""
    b = f"blk.{il}.ffn_"
    up = g.mul_mat(f"ffn_up{part}-{il}", _w(c, f"{b}up{part}.weight", il), cur)
    gate = g.mul_mat(f"ffn_gate{part}-{il}", _w(c, f"{b}gate{part}.weight", il), cur)
    act = _clamped_swiglu(g, gate, up, "ffn_", il)
    return g.mul_mat(f"ffn_out{part}-{il}", _w(c, f"{b}down{part}.weight", il), act)


def _limit(c: _Ctx, key: str, il: int) -> bool:
    """Whether the layer's clamp is on (``limit > 1e-6``)."""
    m = model_of(c)
    v = _clamps(m, key, il + 1)
    return len(v) > il and v[il] > 1e-6


def _ffn_of(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """step35.cpp:127-158: ``build_ffn`` without a router, else ``build_moe_ffn`` plus the shared expert."""
    shexp_clamp = _limit(c, "step35.swiglu_clamp_shexp", il)
    if _weight(c, f"blk.{il}.ffn_gate_inp.weight", il) is None:
        return _clamped_ffn(c, g, cur, il, "") if shexp_clamp else _ffn(c, g, cur, il, _D)
    mp = deepseek2.moe_params(c)
    mp = replace(mp, n_used=qwen3next.n_expert_used(c))
    if _limit(c, "step35.swiglu_clamp_exp", il):
        moe, r = deepseek2.moe_ffn(c, cast(_Graph, _ClampedExperts(g, il)), cur, il, mp, mp.gating or SIGMOID)
    else:
        moe, r = deepseek2.moe_ffn(c, g, cur, il, mp, mp.gating or SIGMOID)
    sh = _clamped_ffn(c, g, cur, il, "_shexp") if shexp_clamp else shared(c, g, cur, il, r)
    return g.op(f"ffn_out-{il}", "ADD", moe, sh)


def build(c: _Ctx, g: _Graph) -> _T:
    """step35.cpp's ``graph::graph`` (``embeddings_nextn_masked`` false: the rows picked after the layers)."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    last = hp.n_layer_main - 1
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        if il > last:  # an MTP block: not in the graph
            continue
        g.at(pos)
        b = f"blk.{il}."
        cur = _attention(c, g, _n(c, g, x, b + "attn_norm.weight", il, _D), il, swa if c.swa[il] else full)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, x)
        cur = _ffn_of(c, g, _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _D), il)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    x.flags |= OUTPUT  # t_h_nextn (llm_graph_result::set_outputs)
    cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), x, out_ids)
    cur = g.op("norm", "RMS_NORM", cur)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    logits = g.mul_mat("result_output", _w(c, "output.weight", hp.n_layer), cur)
    logits.flags |= OUTPUT
    return logits


def _clamps(model: GGUFModel, key: str, n: int) -> list[float]:
    v = model.metadata.get(key)
    if isinstance(v, GGUFArray):
        return [float(x) for x in v.tolist()][:n]
    return [float(v)] * n if isinstance(v, (int, float)) and not isinstance(v, bool) else []


def unbuildable(model: GGUFModel) -> str | None:
    """The sliding window, the gating, and per trunk layer the tensors the graph reads (optional to
    step35.cpp's loader but the norms, projections and output head)."""
    md = model.metadata
    if (md.get_int("step35.attention.sliding_window") or 0) <= 0:
        return "the step35 graph needs a positive step35.attention.sliding_window"
    n_trunk = (md.get_int("step35.block_count") or 0) - (md.get_int("step35.nextn_predict_layers") or 0)
    gating = md.get_int("step35.expert_gating_func") or 0
    if gating not in (0, *GATINGS):
        return f"the graph needs step35.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not {gating}"
    names = {t.name for t in model.tensors}

    def needed(il: int) -> tuple[list[str], list[str]]:
        if il >= n_trunk:
            return [], []
        if f"blk.{il}.ffn_gate_inp.weight" in names:
            return [*ROUTER, *SHARED], EXPERTS
        return ["ffn_gate", "ffn_up", "ffn_down"], []

    if "output.weight" not in names:
        return "the graph needs tensor output.weight, which the file lacks"
    return _moe_dense.unbuildable(model, needed)
