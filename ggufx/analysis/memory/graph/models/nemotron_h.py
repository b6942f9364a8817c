"""The ``nemotron_h`` decoder (src/models/nemotron-h.cpp): one mixer per layer after its RMS norm: Mamba-2
(a layer of no KV heads and no FFN: ``build_mamba2_layer``, :func:`~ggufx.analysis.memory.graph.models.ssm.mamba2_layer`),
attention without RoPE (no FFN: Q, K, V, the output projection and its optional bias) or a squared-ReLU MLP
(up, ReLU, square, down, optional biases); the residual after each. The final norm runs over every token
(its output kept: the NextN draft head's seed, ``t_h_nextn``), then the output rows are gathered.

``nemotron_h_moe`` (the same graph with its MoE layers) is not built: graphsim refuses it."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _norm, _proj, _w, _weight
from ggufx.analysis.memory.graph.models._dense import _qkv
from ggufx.analysis.memory.graph.models.qwen3next import attn_core, remember
from ggufx.analysis.memory.graph.models.ssm import check_shapes, mamba2_dims, mamba2_layer
from ggufx.analysis.memory.hparams import _arr, hparams
from ggufx.model import GGUFModel


def _mlp(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """``build_ffn`` with no gate and ``LLM_FFN_RELU_SQR``: up (and its bias), ReLU, square, down (and
    its bias)."""
    p = f"blk.{il}."
    up = _proj(c, g, f"ffn_up-{il}", p + "ffn_up", cur, il)
    act = g.op(f"ffn_sqr(relu)-{il}", "SQR", g.op(f"ffn_relu-{il}", "UNARY", up))
    return _proj(c, g, f"ffn_out-{il}", p + "ffn_down", act, il)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (nemotron-h.cpp:188-264, with ``embeddings_nextn_masked`` false, as
    llama_context sets it)."""
    hp, sp = c.hp, c.sp
    n_out, E = c.n_outputs, hp.n_embd
    x = _inp_embd(c, g)
    s_copy = g.input("rs_s_copy", "I32", sp.n_seq_max)
    full = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        pre = f"blk.{il}."
        cur = _norm(c, g, x, pre + "attn_norm.weight", il)
        if _weight(c, pre + "ssm_in.weight", il) is not None:
            cur = mamba2_layer(c, g, cur, il, s_copy)
        elif _weight(c, pre + "ffn_down.weight", il) is not None:
            cur = _mlp(c, g, cur, il)
        else:  # build_attention_layer: no RoPE
            q, k, v = _qkv(c, g, cur, il, reshape=True)
            cur = _proj(c, g, f"attn_out-{il}", pre + "attn_output", attn_core(c, g, q, k, v, il, full), il)
        x = g.op(f"nemotron_h_block_out-{il}", "ADD", cur, x)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("h_nextn", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT  # t_h_nextn: an output of every graph
    cur = g.new("result_norm", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
    cur.flags |= OUTPUT
    out_w = _weight(c, "output.weight", hp.n_layer) or _w(c, "token_embd.weight", hp.n_layer)
    logits = g.mul_mat("result_output", out_w, cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Why the nemotron_h graph cannot be built from this file (None when it can): no MoE layers, no
    NextN/MTP block, the Mamba-2 dimensions, and every tensor the graph reads in the shape
    nemotron-h.cpp:46-150 creates it, each layer of the kind llama.cpp gives it (Mamba-2 where
    head_count_kv and feed_forward_length are 0, attention where only feed_forward_length is)."""
    remember(model)
    arch = model.architecture or ""
    md = model.metadata
    if (md.get_int(f"{arch}.expert_count") or 0) > 0:
        return f"{arch} graphs with experts are not built"
    if (md.get_int(f"{arch}.nextn_predict_layers") or 0) > 0:
        return f"{arch} graphs with a multi-token-prediction block are not built"
    d = mamba2_dims(model)
    if isinstance(d, str):
        return d
    hp = hparams(model)
    E, hd = hp.n_embd, hp.head_k
    n_ff = _arr(model, f"{arch}.feed_forward_length", hp.n_layer, 0)
    names = {t.name for t in model.tensors}
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,)}
    for il in range(hp.n_layer):
        nh, nkv, f = hp.n_head[il], hp.n_head_kv[il], n_ff[il]
        p = f"blk.{il}."
        w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,)}
        if nkv == 0 and f == 0:
            w |= d.tensors(E, norm=True)
            kind, others = "a Mamba-2", ("ffn_down.weight", "attn_output.weight")
        elif f == 0:
            if nh <= 0 or nkv <= 0 or nh % nkv or hd <= 0 or hd != hp.head_v:
                return f"the graph needs attention heads in layer {il} (head_count a multiple of head_count_kv)"
            if p + "attn_qkv.weight" in names:
                w |= {"attn_qkv.weight": (E, hd * (nh + 2 * nkv))}
            else:
                w |= {"attn_q.weight": (E, hd * nh), "attn_k.weight": (E, hd * nkv), "attn_v.weight": (E, hd * nkv)}
            w |= {"attn_output.weight": (hd * nh, E)}
            kind, others = "an attention", ("ssm_in.weight", "ffn_down.weight")
        else:
            w |= {"ffn_up.weight": (E, f), "ffn_down.weight": (f, E)}
            kind, others = "an MLP", ("ssm_in.weight", "attn_output.weight")
        odd = next((p + o for o in others if p + o in names), None)
        if odd:
            return f"layer {il} is {kind} layer (llama.cpp's kind), which has no tensor {odd}"
        shapes |= {p + n: s for n, s in w.items()}
    return check_shapes(model, shapes)
