"""The llama-style mixture-of-experts decoders whose model files differ from ``src/models/llama.cpp``
only in the attention's switches and in the FFN (not a llama.cpp model file itself: ``qwen2moe``,
``ernie4_5-moe``, ``hunyuan-moe`` and ``minimax-m2`` are each one such file, built from :func:`build`
with that file's :class:`MoeDense`): pre-norm attention (:mod:`ggufx.analysis.memory.graph.models._dense`'s,
with Q/K/V biases, Q/K norms per head or over the projection, or, as ``hunyuan-moe``, after RoPE), the
rows of the last layer picked before its FFN, a pre-norm FFN of routed experts (``build_moe_ffn``:
:func:`ggufx.analysis.memory.graph.models.deepseek2.moe_ffn`) and the file's shared expert."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _proj
from ggufx.analysis.memory.graph.models import deepseek2, qwen3next
from ggufx.analysis.memory.graph.models._dense import (
    Dense,
    _attention,
    _attn_kv,
    _n,
    _qkv,
    output,
    rope_factors,
    rope_qk,
    tied_head,
)
from ggufx.analysis.memory.graph.models._moe_check import expert_counts, expert_groups, needs_ends
from ggufx.analysis.memory.graph.models.deepseek2 import SIGMOID, SOFTMAX, SOFTMAX_WEIGHT, MoeParams, Routed
from ggufx.model import GGUFModel

Ffn = Callable[[_Ctx, _Graph, _T, int], _T]


@dataclass(frozen=True, slots=True)
class MoeDense:
    """What one llama.cpp MoE model file does: its attention switches and its FFN of one layer."""

    ffn: Ffn
    attn: Dense = Dense()  # the attention's switches (biases come with the file's tensors)
    qk_norm_after_rope: bool = False  # hunyuan-moe.cpp:108-118: RMS norms of K and Q heads after RoPE


def routing(c: _Ctx, norm_w: bool, gating: int = SOFTMAX) -> tuple[MoeParams, int]:
    """The MoE parameters ``build_moe_ffn`` gets from these model files: the experts used per token
    (:func:`~ggufx.analysis.memory.graph.models.qwen3next.n_expert_used`), the file's expert groups
    (llama-model.cpp:1336 reads them for every architecture), the model file's own weight normalization,
    and no scale (none of these files loads ``expert_weights_scale``: hparams' 0)."""
    mp = deepseek2.moe_params(c)
    return replace(mp, n_used=qwen3next.n_expert_used(c), norm_w=norm_w, scale=0.0), gating


def routed(c: _Ctx, g: _Graph, cur: _T, il: int, norm_w: bool, gating: int = SOFTMAX) -> tuple[_T, Routed]:
    """The routed experts' output (``build_moe_ffn``, with the layer's ``exp_probs_b`` when the file has it)."""
    mp, gating = routing(c, norm_w, gating)
    return deepseek2.moe_ffn(c, g, cur, il, mp, gating)


def shared(c: _Ctx, g: _Graph, cur: _T, il: int, r: Routed | None) -> _T:
    """``build_ffn`` of the shared expert (SiLU, parallel gate), whose gate/up/GLU CUDA may move next to
    the routed experts' (``r``)."""
    return deepseek2.ffn(c, g, cur, il, "_shexp", r)


def _attention_after_rope_norms(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp, d: Dense) -> _T:
    """hunyuan-moe.cpp:85-126: Q/K/V (``build_qkv``), RoPE of Q and K, then the RMS norms of each K and
    Q head, the attention and the output projection."""
    p = f"blk.{il}."
    q, k, v = _qkv(c, g, x, il, reshape=True)
    q, k = rope_qk(g, q, k, c.pos, rope_factors(c, il))
    k = _n(c, g, k, p + "attn_k_norm.weight", il, d)
    q = _n(c, g, q, p + "attn_q_norm.weight", il, d)
    cur = _attn_kv(c, g, q, k, v, il, inp, False, d)
    return _proj(c, g, f"attn_out-{il}", p + "attn_output", cur, il)


def build(c: _Ctx, g: _Graph, spec: MoeDense) -> _T:
    """The transformer: per layer the attention norm, the attention, the residual (the last layer's
    rows picked first), the FFN norm, the file's FFN, the residual; then the output norm and head."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    d = spec.attn
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T * d.n_pos)  # four positions per token with M-RoPE
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        inp_sa = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, d)
        if spec.qk_norm_after_rope:
            cur = _attention_after_rope_norms(c, g, cur, il, inp, d)
        else:
            cur = _attention(c, g, cur, il, inp, False, d)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _n(c, g, ffn_inp, b + "ffn_norm.weight", il, d)
        cur = spec.ffn(c, g, cur, il)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return output(c, g, x, tied_head(c))


GATINGS = (SOFTMAX, SIGMOID, SOFTMAX_WEIGHT)  # the gating functions deepseek2.moe_ffn builds


def unbuildable(model: GGUFModel, needed: Callable[[int], tuple[list[str], list[str]]]) -> str | None:
    """Why this MoE file's graph cannot be built (None when it can): the expert counts and groups, and per
    layer the weights ``needed(il)`` names (``(weights, three-dimensional experts)`` by role, without the
    ``blk.N.`` prefix); the attention's Q/K/V as one ``attn_qkv`` or three projections."""
    arch = model.architecture or ""
    dims = {t.name: len(t.shape) for t in model.tensors}
    if why := expert_counts(model) or expert_groups(model) or needs_ends(dims):
        return why
    n_layer = model.metadata.get_int(f"{arch}.block_count") or 0
    for il in range(min(n_layer, 513)):
        p = f"blk.{il}."
        if p + "ffn_gate_up_exps.weight" in dims:
            return f"{arch} graphs with merged gate_up experts are not simulated"
        flat, three = needed(il)
        flat = ["attn_norm", "attn_output", "ffn_norm", *flat]
        if p + "attn_qkv.weight" not in dims:
            flat += ["attn_q", "attn_k", "attn_v"]
        for role in flat + three:
            if p + role + ".weight" not in dims:
                return f"the graph needs tensor {p}{role}.weight, which the file lacks"
        for role in three:
            if dims[p + role + ".weight"] != 3:
                return f"the graph needs a three-dimensional tensor {p}{role}.weight"
    return None


EXPERTS = ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
ROUTER = ["ffn_gate_inp"]
SHARED = ["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]
