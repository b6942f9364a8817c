"""The ``granitehybrid`` decoder (src/models/granite-hybrid.cpp, Granite 4.0 H): Mamba-2 layers (the
layers with no KV heads: ``build_mamba2_layer``, mamba-base.cpp:153-304, in models/ssm.py) and attention
layers (RoPE unless ``rope.scaling.finetuned`` is false), each with a dense FFN or a mixture of experts
plus a shared expert, and Granite's scales: the embeddings, each residual branch and the logits."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _norm, _proj, _w, _weight
from ggufx.analysis.memory.graph.models._dense import rope_qk, tied_head
from ggufx.analysis.memory.graph.models.moe import moe_ffn, shared_fuses
from ggufx.analysis.memory.graph.models.qwen3next import attn_core, file_value, n_expert_used
from ggufx.analysis.memory.graph.models.ssm import mamba2_layer, rs_inp
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

ARCH = "granitehybrid"


def _scale(c: _Ctx, key: str) -> bool:
    """Whether a Granite scale is set (a non-zero ``logit_scale``/``residual_scale``/``embedding_scale``:
    a ``SCALE`` node)."""
    v = file_value(c, f"{ARCH}.{key}")
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp, rope: bool) -> _T:
    """``build_attention_layer`` (granite-hybrid.cpp:202-230): Q, K, V (separate, or views of one
    fused projection), RoPE when the model uses it, attention, the output projection and its bias."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    p = f"blk.{il}."
    wqkv = _weight(c, p + "attn_qkv.weight", il)
    if wqkv is not None:
        qkv = _proj(c, g, f"wqkv-{il}", p + "attn_qkv", x, il)
        row = qkv.nb[1]
        q = g.view(qkv, (hd, nh, T), (4, 4 * hd, row))
        k = g.view(qkv, (hd, nkv, T), (4, 4 * hd, row))
        v = g.view(qkv, (hv, nkv, T), (4, 4 * hv, row))
    else:
        q = g.reshape(_proj(c, g, f"Qcur-{il}", p + "attn_q", x, il), hd, nh, T)
        k = g.reshape(_proj(c, g, f"Kcur-{il}", p + "attn_k", x, il), hd, nkv, T)
        v = g.reshape(_proj(c, g, f"Vcur-{il}", p + "attn_v", x, il), hv, nkv, T)
    if rope:
        q, k = rope_qk(g, q, k, c.pos, _weight(c, "rope_freqs.weight", il))
    cur = attn_core(c, g, q, k, v, il, inp)
    return _proj(c, g, f"attn_out-{il}", p + "attn_output", cur, il)


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """The dense FFN (SiLU, parallel gate, optional biases) or the experts plus the shared expert."""
    p = f"blk.{il}."
    if _weight(c, p + "ffn_gate_inp.weight", il) is None:
        gate = _proj(c, g, f"ffn_gate-{il}", p + "ffn_gate", cur, il)
        up = _proj(c, g, f"ffn_up-{il}", p + "ffn_up", cur, il)
        act = g.new(f"ffn_glu-{il}", "GLU", "F32", gate.ne, gate, up)
        return _proj(c, g, f"ffn_out-{il}", p + "ffn_down", act, il)
    assert c.moe is not None
    if _weight(c, p + "ffn_up_shexp.weight", il) is None:
        return moe_ffn(c, g, cur, il, c.moe)
    sh_gate_w, sh_up_w = _w(c, p + "ffn_gate_shexp.weight", il), _w(c, p + "ffn_up_shexp.weight", il)
    sh_up = g.mul_mat(f"ffn_up_shexp-{il}", sh_up_w, cur)
    sh_gate = g.mul_mat(f"ffn_gate_shexp-{il}", sh_gate_w, cur)
    sh_glu = g.new(f"ffn_swiglu_shexp-{il}", "GLU", "F32", sh_gate.ne, sh_gate, sh_up)
    routed = (_w(c, p + "ffn_gate_exps.weight", il), _w(c, p + "ffn_up_exps.weight", il))
    moe = moe_ffn(c, g, cur, il, c.moe, shared_glu=sh_glu if shared_fuses(routed, (sh_gate_w, sh_up_w)) else None)
    shexp = g.mul_mat(f"ffn_shexp-{il}", _w(c, p + "ffn_down_shexp.weight", il), sh_glu)
    return g.op(f"ffn_out-{il}", "ADD", moe, shexp)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (granite-hybrid.cpp:135-200, :232-302)."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    moe = any(_weight(c, f"blk.{il}.ffn_gate_inp.weight", il) is not None for il in range(hp.n_layer))
    if moe:
        c.moe = n_expert_used(c)
    residual = _scale(c, "residual_scale")
    finetuned = file_value(c, f"{ARCH}.rope.scaling.finetuned")
    rope = finetuned is None or bool(finetuned)  # llama_hparams::rope_finetuned, true by default
    x = _inp_embd(c, g)
    if _scale(c, "embedding_scale"):  # build_inp_embd (llama-graph.cpp:2509-2514)
        x = g.op("embd_scaled", "SCALE", x)
        g.expand(x)
    rs = rs_inp(c, g)
    full = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    if rope:
        c.pos = g.input("inp_pos", "I32", T)
    for p, il in enumerate(c.layers):
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        if hp.n_head_kv[il] == 0:
            cur = mamba2_layer(c, g, cur, il, rs)
        else:
            cur = _attention(c, g, cur, il, full, rope)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        if residual:
            cur = g.op(f"attn_scaled-{il}", "SCALE", cur)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _norm(c, g, ffn_inp, f"blk.{il}.ffn_norm.weight", il)
        cur = _ffn(c, g, cur, il)
        if residual:
            cur = g.op(f"ffn_scaled-{il}", "SCALE", cur)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    out_w = tied_head(c)
    logits = g.mul_mat("result_output", out_w, cur)
    if _scale(c, "logit_scale"):
        logits = g.op("result_output", "SCALE", logits)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Why the granitehybrid graph cannot be built from this file (None when it can): the Mamba-2
    dimensions, the experts, and every tensor the graph reads in the shape granite-hybrid.cpp:40-131
    creates it (the convolution bias is optional to the loader but the graph adds it)."""
    md = model.metadata
    hp = hparams(model)
    E, hd = hp.n_embd, hp.head_k
    keys = ("ssm.conv_kernel", "ssm.inner_size", "ssm.state_size", "ssm.time_step_rank", "ssm.group_count")
    vals = [md.get_int(f"{ARCH}.{k}") or 0 for k in keys]
    missing = next((k for k, v in zip(keys, vals, strict=True) if v <= 0), None)
    if missing:
        return f"the graph needs a positive {ARCH}.{missing}"
    d_conv, d_inner, d_state, n_head, n_group = vals
    if d_conv < 2 or d_inner % n_head or d_inner % n_group or d_inner != 2 * E:
        return "the graph needs ssm.conv_kernel >= 2 and ssm.inner_size = 2 x embedding_length, a multiple of the heads"
    n_expert = md.get_int(f"{ARCH}.expert_count") or 0
    n_used = md.get_int(f"{ARCH}.expert_used_count") or 0
    if n_expert and not 0 < n_used <= n_expert <= 1024:
        return "the graph needs 0 < expert_used_count <= expert_count <= 1024"
    n_shexp = md.get_int(f"{ARCH}.expert_shared_feed_forward_length") or 0
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    if len(tensors.get("token_embd.weight", ())) != 2 or tensors["token_embd.weight"][0] != E:
        return f"the graph needs a two-dimensional tensor token_embd.weight of {E} columns"
    channels = d_inner + 2 * n_group * d_state
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,)}
    for il in range(hp.n_layer):
        nh, nkv = hp.n_head[il], hp.n_head_kv[il]
        p = f"blk.{il}."
        w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,), "ffn_norm.weight": (E,)}
        if nkv == 0:
            w |= {"ssm_in.weight": (E, 2 * d_inner + 2 * n_group * d_state + n_head)}
            w |= {"ssm_conv1d.weight": (d_conv, channels), "ssm_conv1d.bias": (channels,), "ssm_dt.bias": (n_head,)}
            w |= {"ssm_a": (1, n_head), "ssm_d": (1, n_head), "ssm_out.weight": (d_inner, E)}
            w |= {"ssm_norm.weight": (d_inner // n_group, n_group)}
        elif nh <= 0 or nh % nkv or hd <= 0 or hd != hp.head_v:
            return f"the graph needs attention heads in layer {il} (head_count a multiple of head_count_kv)"
        elif p + "attn_qkv.weight" in tensors:
            w |= {"attn_qkv.weight": (E, hd * nh + 2 * hd * nkv), "attn_output.weight": (hd * nh, E)}
        else:
            w |= {"attn_q.weight": (E, hd * nh), "attn_k.weight": (E, hd * nkv), "attn_v.weight": (E, hd * nkv)}
            w |= {"attn_output.weight": (hd * nh, E)}
        if n_expert:
            f = hp.n_ff
            w |= {"ffn_gate_inp.weight": (E, n_expert), "ffn_up_exps.weight": (E, f, n_expert)}
            w |= {"ffn_gate_exps.weight": (E, f, n_expert), "ffn_down_exps.weight": (f, E, n_expert)}
            if n_shexp:
                w |= {"ffn_gate_shexp.weight": (E, n_shexp), "ffn_up_shexp.weight": (E, n_shexp)}
                w |= {"ffn_down_shexp.weight": (n_shexp, E)}
        else:
            w |= {"ffn_gate.weight": (E, hp.n_ff), "ffn_up.weight": (E, hp.n_ff), "ffn_down.weight": (hp.n_ff, E)}
        shapes |= {p + n: s for n, s in w.items()}
    for name, shape in shapes.items():
        if name not in tensors:
            return f"the graph needs tensor {name}, which the file lacks"
        if tensors[name] != shape:
            return f"the graph needs tensor {name} of shape {list(shape)}, not {list(tensors[name])}"
    return None
