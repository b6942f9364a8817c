"""The graphs of the multi-token-prediction (MTP) draft context: ``--spec-type draft-mtp`` makes a second
``llama_context`` of type ``LLAMA_CONTEXT_TYPE_MTP`` over the main model's weights, whose graph
(``LLM_GRAPH_TYPE_DECODER_MTP``) runs the NextN block alone on the trunk's last hidden states.

Built here: Qwen 3.5 / 3.6 dense and MoE (``qwen35``, ``qwen35moe``: ``graph_mtp`` of src/models/qwen35.cpp
and src/models/qwen35moe.cpp): the token rows (of ``nextn.embed_tokens`` or the embeddings) and the trunk's
hidden state (``mtp_h_input``), each RMS-normed, concatenated and projected by ``nextn.eh_proj``, then one
full-attention Qwen 3.5 block (gated M-RoPE attention over the MTP context's own KV cache, the dense FFN or
the experts plus the gated shared expert), the head norm (``nextn.shared_head_norm`` or ``output_norm``: the
``h_nextn`` output) and the logits of the picked rows (``nextn.shared_head_head`` or ``output``)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _norm, _proj, _w, _weight
from ggufx.analysis.memory.graph.models._dense import tied_head
from ggufx.analysis.memory.graph.models.qwen3next import _ffn, n_expert_used
from ggufx.analysis.memory.graph.models.qwen35 import _gated_attn
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

ARCHS = ("qwen35", "qwen35moe", "qwen3next", "glm4moe", "deepseek2")  # the architectures whose MTP graph is built here


def build(c: _Ctx, g: _Graph) -> _T:
    """The MTP graph's logits (qwen35moe.cpp:551-742, qwen35.cpp:501-659), in llama.cpp's order: the
    inputs (tokens, hidden state, positions, output rows, the KV cache's), the two norms, their concat
    and projection, the block, the head."""
    hp, sp = c.hp, c.sp
    T, n_out = c.n_tokens, c.n_outputs
    il = hp.n_layer_main  # the NextN block (one: both graphs assert n_layer_nextn == 1)
    p = f"blk.{il}."
    moe = hp.arch in ("qwen35moe", "qwen3next")
    if moe:
        c.moe = n_expert_used(c)
    mrope = hp.arch in ("qwen35", "qwen35moe")
    tokens = g.input("inp_tokens", "I32", T)
    tok_w = _weight(c, p + "nextn.embed_tokens.weight", il) or _w(c, "token_embd.weight", -1)
    tok = g.new(f"mtp_tok_embd-{il}", "GET_ROWS", "F32", (hp.n_embd, T), tok_w, tokens)
    h = g.input("mtp_h_input", "F32", hp.n_embd, T)
    c.pos = g.input("inp_pos", "I32", T * (4 if mrope else 1))  # M-RoPE: 4 positions per token (llama-graph.cpp:2540)
    out_ids = g.input("out_ids", "I32", n_out)
    if hp.arch == "deepseek2":  # build_attn_inp_k: the MLA cache's rows and mask (deepseek2.cpp:245)
        ns = sp.n_streams
        k_idxs = g.input("attn_inp_k_idxs", "I64", T)
        mask = g.input("attn_inp_kq_mask", "F16" if sp.flash_attn else "F32", sp.n_kv, T // ns, 1, ns)
    else:
        inp = _attn_inp(c, g, sp.n_kv)
    g.at(0)
    h_norm = _norm(c, g, h, p + "nextn.hnorm.weight", il)
    e_norm = _norm(c, g, tok, p + "nextn.enorm.weight", il)
    cat = g.new(f"mtp_concat-{il}", "CONCAT", "F32", (2 * hp.n_embd, T), e_norm, h_norm)
    x = g.mul_mat(f"mtp_eh_proj-{il}", _w(c, p + "nextn.eh_proj.weight", il), cat)
    cur = _norm(c, g, x, p + "attn_norm.weight", il)
    picked = hp.arch == "qwen3next"  # the rows are picked after the attention (qwen3next.cpp graph_mtp)
    if hp.arch == "deepseek2":
        x = _deepseek2_block(c, g, cur, x, il, k_idxs, mask, out_ids)
    elif hp.arch == "glm4moe":
        x = _glm4moe_block(c, g, cur, x, il, inp)
    else:
        cur = _gated_attn(c, g, cur, il, inp)
        if picked:
            cur = g.new("node_rows", "GET_ROWS", "F32", (hp.n_embd, n_out), cur, out_ids)
            x = g.new("node_rows", "GET_ROWS", "F32", (hp.n_embd, n_out), x, out_ids)
        res = g.op(f"mtp_attn_residual-{il}", "ADD", cur, x)
        cur = _norm(c, g, res, p + "post_attention_norm.weight", il)
        if moe:
            cur = _ffn(c, g, cur, il)
        else:
            gate = _proj(c, g, f"ffn_gate-{il}", p + "ffn_gate", cur, il)
            up = _proj(c, g, f"ffn_up-{il}", p + "ffn_up", cur, il)
            glu = g.new(f"ffn_glu-{il}", "GLU", "F32", gate.ne, gate, up)
            cur = _proj(c, g, f"ffn_out-{il}", p + "ffn_down", glu, il)
        x = g.op(f"mtp_post_ffn-{il}", "ADD", cur, res)
    g.at(GLOBAL)
    head_norm = _weight(c, p + "nextn.shared_head_norm.weight", il) or _w(c, "output_norm.weight", hp.n_layer)
    cur = g.op("norm", "RMS_NORM", x)  # build_norm(..., -1): no layer, not pinned
    cur = g.op("h_nextn", "MUL", cur, head_norm)
    cur.flags |= OUTPUT
    if not picked:
        cur = g.new("mtp_shared_head_norm", "GET_ROWS", "F32", (hp.n_embd, n_out), cur, out_ids)
    head = _weight(c, p + "nextn.shared_head_head.weight", il) or tied_head(c)
    logits = g.mul_mat("result_output", head, cur)
    logits.flags |= OUTPUT
    return logits


def _glm4moe_block(c: _Ctx, g: _Graph, cur: _T, x: _T, il: int, inp: _AttnInp) -> _T:
    """GLM-4.5's NextN block (glm4-moe.cpp:195-262): the trunk's attention (Q/K/V with their biases, the
    optional Q/K norms, RoPE, the output projection inside ``build_attn``), the residual, the post-attention
    norm, the routed experts (sigmoid gating with the selection bias, normalized and scaled weights) plus the
    shared expert, the residual."""
    from ggufx.analysis.memory.graph.models.deepseek2 import SIGMOID, ffn, moe_ffn, moe_params
    from ggufx.analysis.memory.graph.models.glm4moe import _attn

    mp = moe_params(c)
    cur = _attn(c, g, cur, il, inp)
    ffn_inp = g.op(f"mtp_ffn_inp-{il}", "ADD", cur, x)
    cur = _norm(c, g, ffn_inp, f"blk.{il}.post_attention_norm.weight", il)
    moe_out, routed = moe_ffn(c, g, cur, il, mp, mp.gating or SIGMOID)
    if _weight(c, f"blk.{il}.ffn_up_shexp.weight", il) is not None:
        cur = g.op(f"mtp_ffn_out-{il}", "ADD", moe_out, ffn(c, g, cur, il, "_shexp", routed))
    else:  # build_ffn of null weights: the SiLU of its input
        cur = g.op(f"mtp_ffn_out-{il}", "ADD", moe_out, g.op(f"ffn_silu-{il}", "UNARY", cur))
    return g.op(f"mtp_post_ffn-{il}", "ADD", cur, ffn_inp)


def _deepseek2_block(c: _Ctx, g: _Graph, cur: _T, x: _T, il: int, k_idxs: _T, mask: _T, out_ids: _T) -> _T:
    """DeepSeek V3's NextN block (deepseek2.cpp:170-400): the trunk's absorbed MLA attention with the Q LoRA
    (``build_attn`` over the K-only cache, the output projection in it), the residual, the FFN norm, the
    routed experts (the trunk's gating, selection bias, normalized and scaled weights) plus the shared ones,
    the residual: the trunk's layer tail of a mixture-of-experts layer."""
    from ggufx.analysis.memory.graph.models.deepseek2 import SOFTMAX, _mla_attn, layer_tail, moe_params

    mp = moe_params(c)
    cur = _mla_attn(c, g, cur, il, k_idxs, mask, None)
    return layer_tail(c, g, cur, x, il, False, out_ids, mp, mp.gating or SOFTMAX)


def unbuildable(model: GGUFModel) -> str | None:
    """Why the MTP graph of this file is not built (None when it is): another architecture, not one
    NextN block, or a tensor the graph reads missing or of another shape than the loader creates."""
    arch = model.architecture or ""
    if arch not in ARCHS:
        return f"the {arch!r} MTP graph is not built (built: {', '.join(ARCHS)})"
    hp = hparams(model)
    n_nextn = hp.n_layer - hp.n_layer_main
    if n_nextn != 1:  # qwen35moe.cpp:553-554: "currently only supports a single MTP block"
        return f"llama.cpp's {arch} MTP graph needs exactly one NextN block, not {n_nextn}"
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    extra = next((n for n in tensors if n.endswith(".scale")), None)
    if extra:
        return f"MTP graphs with tensor {extra} are not simulated"
    E, hd, il = hp.n_embd, hp.head_k, hp.n_layer_main
    p = f"blk.{il}."
    if arch == "deepseek2":
        return _deepseek2_unbuildable(model, tensors, p, E)
    nh, nkv = hp.n_head[il], hp.n_head_kv[il]
    if hd <= 0 or hd != hp.head_v or nh <= 0 or nkv <= 0 or nh % nkv:
        return "the MTP graph needs key_length = value_length > 0 and head_count a multiple of head_count_kv"
    if arch == "glm4moe":
        return _glm4moe_unbuildable(model, tensors, p, E)
    w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,), "post_attention_norm.weight": (E,)}
    w |= {"attn_q.weight": (E, 2 * hd * nh), "attn_k.weight": (E, hd * nkv), "attn_v.weight": (E, hd * nkv)}
    w |= {"attn_output.weight": (hd * nh, E), "attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,)}
    w |= {"nextn.eh_proj.weight": (2 * E, E), "nextn.enorm.weight": (E,), "nextn.hnorm.weight": (E,)}
    if arch in ("qwen35moe", "qwen3next"):
        from ggufx.analysis.memory.graph.models.qwen35moe import expert_shapes

        n_expert = model.metadata.get_int(f"{arch}.expert_count") or 0
        experts = expert_shapes(tensors, p, E, n_expert)
        if isinstance(experts, str):
            return experts
        w |= experts
    else:
        n_ff = hp.n_ff
        w |= {"ffn_gate.weight": (E, n_ff), "ffn_up.weight": (E, n_ff), "ffn_down.weight": (n_ff, E)}
    for name, shape in {p + n: s for n, s in w.items()}.items():
        if name not in tensors:
            return f"the MTP graph needs tensor {name}, which the file lacks"
        if tensors[name] != shape:
            return f"the MTP graph needs tensor {name} of shape {list(shape)}, not {list(tensors[name])}"
    return None


def _glm4moe_unbuildable(model: GGUFModel, tensors: dict[str, tuple[int, ...]], p: str, E: int) -> str | None:
    """The NextN block's tensors as glm4-moe.cpp:57-121 loads them: separate Q/K/V, split experts with the
    selection bias, the shared expert where the model has one, the NextN projection and norms."""
    if p + "attn_qkv.weight" in tensors:
        return "glm4moe MTP graphs with a fused attn_qkv are not simulated"
    need = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "post_attention_norm", "ffn_gate_inp"]
    need += ["nextn.enorm", "nextn.hnorm"]
    if (model.metadata.get_int("glm4moe.expert_shared_count") or 0) > 0:
        need += ["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]
    for role in need:
        if p + role + ".weight" not in tensors:
            return f"the MTP graph needs tensor {p}{role}.weight, which the file lacks"
    if p + "exp_probs_b.bias" not in tensors:
        return f"the MTP graph needs tensor {p}exp_probs_b.bias, which the file lacks"
    for role in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        if len(tensors.get(p + role + ".weight", ())) != 3:
            return f"the MTP graph needs a three-dimensional tensor {p}{role}.weight"
    if tensors.get(p + "nextn.eh_proj.weight") != (2 * E, E):
        return f"the MTP graph needs tensor {p}nextn.eh_proj.weight of shape {[2 * E, E]}"
    return None


def _deepseek2_unbuildable(model: GGUFModel, tensors: dict[str, tuple[int, ...]], p: str, E: int) -> str | None:
    """What deepseek2.cpp's ``graph_mtp`` asserts (:170-215): absorbed MLA with the Q LoRA, no attention
    temperature scaling, a mixture-of-experts block with split gate and up experts and the shared ones."""
    from ggufx.analysis.memory.graph.models.deepseek2 import unbuildable as trunk

    why = trunk(model)
    if why:
        return why
    md = model.metadata
    if (md.get_int("deepseek2.attention.q_lora_rank") or 0) <= 0:
        return "llama.cpp's deepseek2 MTP graph needs a Q LoRA (attention.q_lora_rank > 0)"
    if md.get("deepseek2.attention.temperature_scale") not in (None, 0, 0.0):
        return "llama.cpp's deepseek2 MTP graph does not support attention temperature scaling"
    need = ["attn_norm", "attn_q_a", "attn_q_a_norm", "attn_q_b", "attn_kv_a_mqa", "attn_kv_a_norm"]
    need += ["attn_k_b", "attn_v_b", "attn_output", "ffn_norm", "ffn_gate_inp"]
    need += ["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp", "nextn.enorm", "nextn.hnorm"]
    for role in need:
        if p + role + ".weight" not in tensors:
            return f"the MTP graph needs tensor {p}{role}.weight, which the file lacks"
    for role in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
        if len(tensors.get(p + role + ".weight", ())) != 3:
            return f"the MTP graph needs a three-dimensional tensor {p}{role}.weight (split gate and up experts)"
    if tensors.get(p + "nextn.eh_proj.weight") != (2 * E, E):
        return f"the MTP graph needs tensor {p}nextn.eh_proj.weight of shape {[2 * E, E]}"
    return None
