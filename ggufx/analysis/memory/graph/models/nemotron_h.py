"""The ``nemotron_h`` decoder (src/models/nemotron-h.cpp): one mixer per layer after its RMS norm: Mamba-2
(a layer of no KV heads and no FFN: ``build_mamba2_layer``, :func:`~ggufx.analysis.memory.graph.models.ssm.mamba2_layer`),
attention without RoPE (no FFN: Q, K, V, the output projection and its optional bias) or a squared-ReLU MLP
(up, ReLU, square, down, optional biases); the residual after each. The final norm runs over every token
(its output kept: the NextN draft head's seed, ``t_h_nextn``), then the output rows are gathered.

With experts (``nemotron_h_moe``, whose graph this is; Nemotron 3) the MLP layers are a mixture of
experts: sigmoid routing with a selection bias, up-only squared-ReLU experts, normalized and scaled
weights, optional latent projections around the experts, and a squared-ReLU shared expert."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import (
    _attn_inp,
    _Ctx,
    _inp_embd,
    _norm,
    _proj,
    _w,
    _weight,
    moe_weighted_sum,
    moe_weights_norm,
    topk_fusion,
)
from ggufx.analysis.memory.graph.models._dense import _qkv, nextn_output
from ggufx.analysis.memory.graph.models.qwen3next import attn_core, file_value, n_expert_used
from ggufx.analysis.memory.graph.models.ssm import check_shapes, mamba2_dims, mamba2_layer, rs_inp
from ggufx.analysis.memory.hparams import _arr, hparams
from ggufx.model import GGUFModel

LLAMA_MAX_EXPERTS = 1024  # llama-hparams.h:12


def _mlp(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """``build_ffn`` with no gate and ``LLM_FFN_RELU_SQR``: up (and its bias), ReLU, square, down (and
    its bias)."""
    p = f"blk.{il}."
    up = _proj(c, g, f"ffn_up-{il}", p + "ffn_up", cur, il)
    act = g.op(f"ffn_sqr(relu)-{il}", "SQR", g.op(f"ffn_relu-{il}", "UNARY", up))
    return _proj(c, g, f"ffn_out-{il}", p + "ffn_down", act, il)


def _relu_sqr(g: _Graph, x: _T, name: str) -> _T:
    return g.op(name, "SQR", g.op(name, "UNARY", x))


def _moe(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """``build_ffn_layer``'s experts (nemotron-h.cpp:291-333): the router logits, ``build_moe_ffn``
    (llama-graph.cpp:2044-2420: sigmoid gating, the selection bias, the weights normalized and scaled
    as the file says, the routing expanded early, up-only experts with squared ReLU, the weighted sum)
    between the optional latent projections, plus the shared expert."""
    p = f"blk.{il}."
    n_used, T = n_expert_used(c), cur.ne[1]
    latent_down, latent_up = _weight(c, p + "ffn_latent_down.weight", il), _weight(c, p + "ffn_latent_up.weight", il)
    inp = g.mul_mat(f"ffn_latent_down-{il}", latent_down, cur) if latent_down is not None else cur
    logits = g.mul_mat(f"ffn_moe_logits-{il}", _w(c, p + "ffn_gate_inp.weight", il), cur)
    n_exp = logits.ne[0]
    probs = g.op(f"ffn_moe_probs-{il}", "UNARY", logits)
    biased = g.op(f"ffn_moe_probs_biased-{il}", "ADD", probs, _w(c, p + "exp_probs_b.bias", il))
    argsort = g.new(f"ffn_moe_argsort-{il}", "ARGSORT", "I32", (n_exp, T), biased)
    topk = g.view(argsort, (n_used, T), argsort.nb[:2])
    probs3 = g.reshape(probs, 1, n_exp, T)
    weights = g.new(f"ffn_moe_weights-{il}", "GET_ROWS", "F32", (1, n_used, T), probs3, topk)
    routing = [probs, probs3, biased, argsort, topk, weights]
    if file_value(c, f"{c.hp.arch}.expert_weights_norm") is True:
        routing += moe_weights_norm(g, weights, il)
        weights = routing[-1]
    scale = file_value(c, f"{c.hp.arch}.expert_weights_scale")
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale not in (0, 1):
        weights = g.op(f"ffn_moe_weights_scaled-{il}", "SCALE", weights)
        routing.append(weights)
    g.expand(weights)
    g.fused.extend(topk_fusion(n_exp, routing))
    x = g.reshape(inp, inp.ne[0], 1, T)
    up_w, down_w = _w(c, p + "ffn_up_exps.weight", il), _w(c, p + "ffn_down_exps.weight", il)
    up = g.new(f"ffn_moe_up-{il}", "MUL_MAT_ID", "F32", (up_w.ne[1], n_used, T), up_w, x, topk)
    act = _relu_sqr(g, up, f"ffn_moe_relu_sqr-{il}")
    experts = g.new(f"ffn_moe_down-{il}", "MUL_MAT_ID", "F32", (down_w.ne[1], n_used, T), down_w, act, topk)
    out = moe_weighted_sum(g, experts, weights, il, experts.ne[0], n_used)
    if latent_up is not None:
        out = g.mul_mat(f"ffn_latent_up-{il}", latent_up, out)
    sh_up = g.mul_mat(f"ffn_up_shexp-{il}", _w(c, p + "ffn_up_shexp.weight", il), cur)
    sh = g.mul_mat(f"ffn_shexp-{il}", _w(c, p + "ffn_down_shexp.weight", il), _relu_sqr(g, sh_up, f"ffn_shexp-{il}"))
    return g.op(f"ffn_out-{il}", "ADD", out, sh)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (nemotron-h.cpp:188-264, with ``embeddings_nextn_masked`` false, as
    llama_context sets it)."""
    sp = c.sp
    n_out = c.n_outputs
    x = _inp_embd(c, g)
    rs = rs_inp(c, g)
    full = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        pre = f"blk.{il}."
        cur = _norm(c, g, x, pre + "attn_norm.weight", il)
        if _weight(c, pre + "ssm_in.weight", il) is not None:
            cur = mamba2_layer(c, g, cur, il, rs)
        elif _weight(c, pre + "ffn_down.weight", il) is not None:
            cur = _mlp(c, g, cur, il)
        elif _weight(c, pre + "ffn_down_exps.weight", il) is not None:
            cur = _moe(c, g, cur, il)
        else:  # build_attention_layer: no RoPE
            q, k, v = _qkv(c, g, cur, il, reshape=True)
            cur = _proj(c, g, f"attn_out-{il}", pre + "attn_output", attn_core(c, g, q, k, v, il, full), il)
        x = g.op(f"nemotron_h_block_out-{il}", "ADD", cur, x)
    return nextn_output(c, g, x, out_ids)


def _moe_shapes(model: GGUFModel, n_layer: int) -> list[dict[str, tuple[int, ...]]] | str:
    """Per layer, the shapes of an expert layer's tensors (nemotron-h.cpp:118-140), or why the graph
    cannot read them: a positive expert_used_count (one for every layer) at most expert_count, each
    layer's expert FFN size (expert_feed_forward_length, else feed_forward_length / expert_used_count)."""
    arch = model.architecture or ""
    md = model.metadata
    hp = hparams(model)
    E = hp.n_embd
    n_exp = md.get_int(f"{arch}.expert_count") or 0
    n_used = md.get_int(f"{arch}.expert_used_count") or 0
    if not 0 < n_used <= n_exp <= LLAMA_MAX_EXPERTS:
        return (
            f"the graph needs 0 < expert_used_count <= expert_count <= {LLAMA_MAX_EXPERTS} (one count for every layer)"
        )
    n_ff = _arr(model, f"{arch}.feed_forward_length", n_layer, 0)
    n_ff_exp = _arr(model, f"{arch}.expert_feed_forward_length", n_layer, 0)
    n_shexp = md.get_int(f"{arch}.expert_shared_feed_forward_length") or 0
    latent = md.get_int(f"{arch}.moe_latent_size") or 0
    moe_e = latent if latent > 0 else E
    names = {t.name for t in model.tensors}
    out = []
    for il in range(n_layer):
        f = n_ff_exp[il] or n_ff[il] // n_used
        w: dict[str, tuple[int, ...]] = {
            "ffn_gate_inp.weight": (E, n_exp),
            "exp_probs_b.bias": (n_exp,),
            "ffn_up_exps.weight": (moe_e, f, n_exp),
            "ffn_down_exps.weight": (f, moe_e, n_exp),
            "ffn_up_shexp.weight": (E, n_shexp),
            "ffn_down_shexp.weight": (n_shexp, E),
        }
        for name, shape in (("ffn_latent_down.weight", (E, moe_e)), ("ffn_latent_up.weight", (moe_e, E))):
            if f"blk.{il}.{name}" in names:  # optional to the loader
                w[name] = shape
        out.append(w)
    return out


def unbuildable(model: GGUFModel) -> str | None:
    """Why the nemotron_h / nemotron_h_moe graph cannot be built from this file (None when it can): no
    NextN/MTP block, the Mamba-2 dimensions, the expert counts, and every tensor the graph reads in
    the shape nemotron-h.cpp:46-150 creates it, each layer of the kind llama.cpp gives it (Mamba-2
    where head_count_kv and feed_forward_length are 0, attention where only feed_forward_length is,
    else an MLP: a mixture of experts when the model has experts)."""
    arch = model.architecture or ""
    md = model.metadata
    if (md.get_int(f"{arch}.nextn_predict_layers") or 0) > 0:
        return f"{arch} graphs with a multi-token-prediction block are not built"
    d = mamba2_dims(model)
    if isinstance(d, str):
        return d
    hp = hparams(model)
    E, hd = hp.n_embd, hp.head_k
    n_ff = _arr(model, f"{arch}.feed_forward_length", hp.n_layer, 0)
    moe = _moe_shapes(model, hp.n_layer) if (md.get_int(f"{arch}.expert_count") or 0) > 0 else None
    if isinstance(moe, str):
        return moe
    names = {t.name for t in model.tensors}
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,)}
    mlp = "ffn_down_exps.weight" if moe else "ffn_down.weight"
    for il in range(hp.n_layer):
        nh, nkv, f = hp.n_head[il], hp.n_head_kv[il], n_ff[il]
        p = f"blk.{il}."
        w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,)}
        if nkv == 0 and f == 0:
            w |= d.tensors(E, norm=True)
            kind, others = "a Mamba-2", (mlp, "attn_output.weight")
        elif f == 0:
            if nh <= 0 or nkv <= 0 or nh % nkv or hd <= 0 or hd != hp.head_v:
                return f"the graph needs attention heads in layer {il} (head_count a multiple of head_count_kv)"
            if p + "attn_qkv.weight" in names:
                w |= {"attn_qkv.weight": (E, hd * (nh + 2 * nkv))}
            else:
                w |= {"attn_q.weight": (E, hd * nh), "attn_k.weight": (E, hd * nkv), "attn_v.weight": (E, hd * nkv)}
            w |= {"attn_output.weight": (hd * nh, E)}
            kind, others = "an attention", ("ssm_in.weight", mlp)
        else:
            w |= moe[il] if moe else {"ffn_up.weight": (E, f), "ffn_down.weight": (f, E)}
            kind, others = ("an expert" if moe else "an MLP"), ("ssm_in.weight", "attn_output.weight")
        odd = next((p + o for o in others if p + o in names), None)
        if odd:
            return f"layer {il} is {kind} layer (llama.cpp's kind), which has no tensor {odd}"
        shapes |= {p + n: s for n, s in w.items()}
    return check_shapes(model, shapes)
