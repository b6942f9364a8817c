"""The ``qwen35moe`` hybrid (src/models/qwen35moe.cpp, Qwen3.5-MoE: 35B-A3B, 122B-A10B, 397B-A17B):
``qwen35``'s graph (:mod:`ggufx.analysis.memory.graph.models.qwen35`: gated M-RoPE attention every
``full_attention_interval``-th layer, Gated DeltaNet layers between them with the fused
``GATED_DELTA_NET`` node) whose dense FFN is ``qwen3next``'s mixture of experts with a sigmoid-gated
shared expert (:func:`ggufx.analysis.memory.graph.models.qwen3next._ffn`; qwen35moe.cpp:494-545 is
qwen3next.cpp's ``build_layer_ffn``). The MTP block (``nextn_predict_layers``) is loaded only for
speculative decoding (``TENSOR_SKIP`` otherwise) and never runs in the main graph."""

from __future__ import annotations

from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _norm
from ggufx.analysis.memory.graph.models._dense import nextn_output
from ggufx.analysis.memory.graph.models.qwen3next import _ffn, gdn_dims, n_expert_used, recurrent_layer
from ggufx.analysis.memory.graph.models.qwen35 import _gated_attn, _gated_delta_net, _gdn_dims
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (qwen35moe.cpp:156-249): attention or Gated DeltaNet, the residual, the
    post-attention norm, the experts plus the gated shared expert, the residual; the final norm
    (``h_nextn``) stays an output before the rows are picked."""
    hp, sp = c.hp, c.sp
    T, n_out = c.n_tokens, c.n_outputs
    c.moe = n_expert_used(c)
    x = _inp_embd(c, g)
    s_copy = g.input("rs_s_copy", "I32", sp.n_seq_max)  # get_n_rs of the full memory (llama-memory-recurrent.cpp:1336)
    full = _attn_inp(c, g, sp.n_kv)
    # build_inp_pos (llama-graph.cpp:2540): n_pos_per_embd = 4 M-RoPE positions per token
    c.pos = g.input("inp_pos", "I32", T * 4)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        if il >= hp.n_layer_main:  # the MTP block: not run by the main graph
            continue
        g.at(p)
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        g.expand(cur)
        if recurrent_layer(c, il):
            cur = _gated_delta_net(c, g, cur, il, s_copy, gdn_dims(c, il))
        else:
            cur = _gated_attn(c, g, cur, il, full)
        res = g.op(f"attn_residual-{il}", "ADD", cur, x)
        cur = _norm(c, g, res, f"blk.{il}.post_attention_norm.weight", il)
        cur = _ffn(c, g, cur, il)
        x = g.op(f"post_moe-{il}", "ADD", cur, res)
    return nextn_output(c, g, x, out_ids)


def unbuildable(model: GGUFModel) -> str | None:
    """Why the qwen35moe graph cannot be built from this file (None when it can): the expert counts,
    the Gated DeltaNet dimensions, and every tensor the main graph reads in the shape
    qwen35moe.cpp:36-146 creates it (llama.cpp refuses the file otherwise)."""
    md = model.metadata
    n_expert = md.get_int("qwen35moe.expert_count") or 0
    n_used = md.get_int("qwen35moe.expert_used_count") or 0
    if not 0 < n_used <= n_expert <= 1024:  # llama-model.cpp: LLAMA_MAX_EXPERTS
        return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
    # (expert_weights_scale is not read for qwen35moe: hparams' 0, no SCALE node; the expert groups are)
    if (md.get_int("qwen35moe.expert_group_count") or 0) > 1:  # llama-model.cpp:1336, llama-graph.cpp:2160
        return "qwen35moe graphs with expert groups are not simulated"
    d = _gdn_dims(model)
    if isinstance(d, str):
        return d
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    extra = next((n for n in tensors if n.endswith(".scale") or n.startswith("cls.")), None)
    if extra:
        return f"qwen35moe graphs with tensor {extra} are not simulated"
    hp = hparams(model)
    E, hd = hp.n_embd, hp.head_k
    if hd <= 0 or hd != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length > 0 (qwen35moe.cpp:160)"
    if len(tensors.get("token_embd.weight", ())) != 2 or tensors["token_embd.weight"][0] != E:
        return f"the graph needs a two-dimensional tensor token_embd.weight of {E} columns"
    inner, conv = d.head_v * d.n_v_heads, 2 * d.head_k * d.n_k_heads + d.head_v * d.n_v_heads
    recurrent = [k.is_recurrent for k in layer_kinds(model)]
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,)}
    for il in range(hp.n_layer_main):
        nh, nkv = hp.n_head[il], hp.n_head_kv[il]
        p = f"blk.{il}."
        w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,), "post_attention_norm.weight": (E,)}
        if il < len(recurrent) and recurrent[il]:
            w |= {"attn_qkv.weight": (E, conv), "attn_gate.weight": (E, inner), "ssm_conv1d.weight": (d.d_conv, conv)}
            w |= {"ssm_dt.bias": (d.n_v_heads,), "ssm_a": (d.n_v_heads,), "ssm_norm.weight": (d.head_v,)}
            w |= {"ssm_beta.weight": (E, d.n_v_heads), "ssm_alpha.weight": (E, d.n_v_heads)}
            w |= {"ssm_out.weight": (inner, E)}
        elif nh <= 0 or nkv <= 0 or nh % nkv:
            return f"the graph needs attention heads in layer {il} (head_count a multiple of head_count_kv)"
        else:
            w |= {"attn_q.weight": (E, 2 * hd * nh), "attn_k.weight": (E, hd * nkv), "attn_v.weight": (E, hd * nkv)}
            w |= {"attn_output.weight": (hd * nh, E), "attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,)}
        experts = expert_shapes(tensors, p, E, n_expert)
        if isinstance(experts, str):
            return experts
        shapes |= {p + n: shape for n, shape in (w | experts).items()}
    for name, shape in shapes.items():
        if name not in tensors:
            return f"the graph needs tensor {name}, which the file lacks"
        if tensors[name] != shape:
            return f"the graph needs tensor {name} of shape {list(shape)}, not {list(tensors[name])}"
    return None


def expert_shapes(
    tensors: dict[str, tuple[int, ...]], p: str, E: int, n_expert: int
) -> dict[str, tuple[int, ...]] | str:
    """The shapes of one layer's routed experts (gate and up apart) and gated shared expert, as qwen35moe.cpp
    and qwen4exp.cpp load them, their widths read from the file (or why the graph cannot be built)."""
    up = tensors.get(p + "ffn_up_exps.weight", ())
    if len(up) != 3:
        return f"the graph needs a three-dimensional tensor {p}ffn_up_exps.weight (separate gate and up experts)"
    n_ff_exp = up[1]
    w = {"ffn_gate_inp.weight": (E, n_expert), "ffn_up_exps.weight": (E, n_ff_exp, n_expert)}
    w |= {"ffn_gate_exps.weight": (E, n_ff_exp, n_expert), "ffn_down_exps.weight": (n_ff_exp, E, n_expert)}
    sh = tensors.get(p + "ffn_up_shexp.weight", ())
    if len(sh) != 2:
        return f"the graph needs a two-dimensional tensor {p}ffn_up_shexp.weight"
    w |= {"ffn_gate_inp_shexp.weight": (E,), "ffn_gate_shexp.weight": (E, sh[1])}
    return w | {"ffn_up_shexp.weight": (E, sh[1]), "ffn_down_shexp.weight": (sh[1], E)}
