"""The dense decoder graph that many of llama.cpp's model files share with ``src/models/llama.cpp``, with
the switches where they differ (not a llama.cpp model file itself: the modules ``qwen2``, ``qwen3``,
``gemma2``, ``phi3``, ``olmo2``, ``exaone4``, ``cohere2``, ``smollm3``... are each one such file, built
from :func:`build_dense` with that file's :class:`Dense`).

Each switch names the lines of the llama.cpp file that differ: Q/K/V biases and the output bias,
RMS norms of Q and K (per head, or over the whole projection before the reshape), layers without
RoPE, the query scaled before attention, attention logit soft-capping, norms after attention and
after the FFN in place of (or beside) the pre-norms, layer norm in place of RMS norm, the fused
gate-up projection, attention and FFN in parallel, GELU, the embedding and logit scales and the
final logit soft-capping. The graph's node order is ``ggml_build_forward_expand``'s (sources depth
first), so what matters is which node reads which, not the order llama.cpp creates them in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import (
    _attn_inp,
    _AttnInp,
    _Ctx,
    _inp_embd,
    _proj,
    _rot,
    _w,
    _weight,
    attn_no_flash,
    kv_cache_views,
)
from ggufx.model import GGUFModel


@dataclass(frozen=True, slots=True)
class Dense:
    """What one llama.cpp model file does differently from ``src/models/llama.cpp``."""

    norm: str = "RMS_NORM"  # the op of every build_norm (cohere2: LLM_NORM, "NORM")
    attn_norm: bool = True  # a norm before attention (olmo2, exaone4: none)
    ffn_norm: bool = True  # a norm before the FFN (olmo2, exaone4: none)
    ffn_norm_name: str = "ffn_norm"  # its weight (seed_oss: post_attention_norm)
    qk_norm: str = ""  # "head": RMS norm of each Q and K head (qwen3); "full": of the 2-D projection (olmo2)
    rope: Callable[[_Ctx, int], bool] | None = None  # whether layer il applies RoPE (None: all)
    q_scale: bool = False  # ggml_scale of Q before attention (gemma2, phi3)
    attn_softcap: bool = False  # attention logit soft-capping (gemma2): SCALE, TANH, SCALE before soft_max
    post_attn_norm: bool = False  # a norm of the attention output (gemma2, olmo2, exaone4)
    post_ffn_norm: bool = False  # a norm of the FFN output, built with il = -1 (not pinned)
    post_ffn_norm_pin: bool = False  # glm4 builds it with the layer's il: pinned like the others
    gelu: bool = False  # GEGLU in place of SwiGLU (gemma2)
    fused_up: bool = False  # phi3: one ffn_up of 2 n_ff, ggml_swiglu over its halves, no ffn_gate
    parallel: bool = False  # cohere2: the FFN reads the attention's input norm; both add to the residual
    embd_scale: bool = False  # gemma2: ggml_scale of the token embeddings
    logit_softcap: bool = False  # gemma2: SCALE, TANH, SCALE of the logits
    logit_scale: bool = False  # cohere2: SCALE of the logits (when f_logit_scale is set)
    residual_first: bool = False  # openelm: ffn_inp = residual + attention (the residual's rows gathered first)
    n_pos: int = 1  # positions per token (n_pos_per_embd: 4 with M-RoPE, qwen2vl)
    ffn_residual_first: bool = False  # phi3: l_out = residual + FFN (ggml-alloc tries the residual in place first)


_ROPE_FACTORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


def rope_factors(c: _Ctx, il: int) -> _T | None:
    """``get_rope_factors`` (llama-model.cpp:2343): ``rope_freqs``, else phi3's long or short factors, where the
    file has them."""
    return next((f for n in _ROPE_FACTORS if (f := _weight(c, n, il)) is not None), None)


def rope_qk(g: _Graph, q: _T, k: _T, pos: _T | None, freqs: _T | None) -> tuple[_T, _T]:
    """``ggml_rope_ext`` of Q, then of K, over the positions (and the rope ``freqs`` factors where given)."""
    assert pos is not None
    src = [pos, *([freqs] if freqs is not None else [])]
    return g.new(q.name, "ROPE", "F32", q.ne, q, *src), g.new(k.name, "ROPE", "F32", k.ne, k, *src)


def qk_prep(c: _Ctx, g: _Graph, q: _T, k: _T, v: _T, il: int, d: Dense) -> tuple[_T, _T, _T]:
    """What :class:`Dense`'s attention does to ``build_qkv``'s Q, K and V before ``build_attn``: the Q and K norms
    (``d.qk_norm``; "full": over the whole projection, then the heads' reshape), RoPE with the rope factors
    (unless ``d.rope`` says no for the layer), the scaled query (``d.q_scale``)."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    p = f"blk.{il}."
    if d.qk_norm:
        q = _n(c, g, q, p + "attn_q_norm.weight", il, d)
        k = _n(c, g, k, p + "attn_k_norm.weight", il, d)
    if d.qk_norm == "full":
        q, k, v = g.reshape(q, hd, nh, T), g.reshape(k, hd, nkv, T), g.reshape(v, hv, nkv, T)
    if d.rope is None or d.rope(c, il):
        q, k = rope_qk(g, q, k, c.pos, rope_factors(c, il))
    if d.q_scale:
        q = g.op(q.name, "SCALE", q)
    return q, k, v


def _n(c: _Ctx, g: _Graph, x: _T, weight: str, il: int, d: Dense, pin: bool = True) -> _T:
    """``build_norm``: the norm (named "norm", pinned to the layer's device by ``graph_get_cb`` when the
    call passes the layer), times its weight, plus its bias when there is one."""
    cur = g.op(f"norm-{il}", d.norm, x)
    if pin:
        cur.backend = c.pin[il]
    cur = g.op(f"normed-{il}", "MUL", cur, _w(c, weight, il))
    b = _weight(c, weight.removesuffix(".weight") + ".bias", il)
    return g.op(f"normed-{il}", "ADD", cur, b) if b is not None else cur


def _qkv(c: _Ctx, g: _Graph, x: _T, il: int, reshape: bool) -> tuple[_T, _T, _T]:
    """``build_qkv`` (llama-graph.cpp:1684): the fused ``attn_qkv`` projection and three views of it, or
    the separate projections with their optional biases."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    p = f"blk.{il}."
    if _weight(c, p + "attn_qkv.weight", il) is not None:
        qkv = _proj(c, g, f"wqkv-{il}", p + "attn_qkv", x, il)
        es, row = qkv.nb[0], qkv.nb[1]
        if reshape:
            # ggml_view_3d(cur, head, heads, tokens, nb1 = head * element, nb2 = the row, offset)
            q = g.view(qkv, (hd, nh, T), (es, es * hd, row))
            k = g.view(qkv, (hd, nkv, T), (es, es * hd, row))
            v = g.view(qkv, (hv, nkv, T), (es, es * hv, row))
            return q, k, v
        views = [g.view(qkv, (n, T), (es, row)) for n in (hd * nh, hd * nkv, hv * nkv)]
        q, k, v = (g.new(f"cont-{il}", "CONT", "F32", t.ne[:2], t) for t in views)
        return q, k, v
    q = _proj(c, g, f"Qcur-{il}", p + "attn_q", x, il)
    k = _proj(c, g, f"Kcur-{il}", p + "attn_k", x, il)
    v = _proj(c, g, f"Vcur-{il}", p + "attn_v", x, il)
    if reshape:
        return g.reshape(q, hd, nh, T), g.reshape(k, hd, nkv, T), g.reshape(v, hv, nkv, T)
    return q, k, v


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp, iswa: bool, d: Dense) -> _T:
    """Q/K/V, their norms, RoPE, the attention (:func:`_attn_kv`) and the output projection."""
    q, k, v = qk_prep(c, g, *_qkv(c, g, x, il, reshape=d.qk_norm != "full"), il, d)
    cur = _attn_kv(c, g, q, k, v, il, inp, iswa, d)
    return _proj(c, g, f"attn_out-{il}", f"blk.{il}.attn_output", cur, il)


def _attn_kv(c: _Ctx, g: _Graph, q: _T, k: _T, v: _T, il: int, inp: _AttnInp, iswa: bool, d: Dense) -> _T:
    """``build_attn`` (llama-graph.cpp:2950-3060, :3195-3290) with ``build_attn_mha`` (:2691): the cache
    writes of K and V (:func:`~ggufx.analysis.memory.graph.llm.kv_cache_views`; ``cpy_v``,
    llama-kv-cache.cpp: into a transposed cache, a V that is a strided view of a fused projection is
    copied contiguous first, and padded to the cache's widest layer), then the attention, with the
    logit soft-capping of the path without flash attention."""
    hp, sp = c.hp, c.sp
    T, ns = c.n_tokens, sp.n_streams
    nh, nkv, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_v
    fa = sp.flash_attn
    v_gqa = max(hp.n_head_kv) * hv

    def v_rows(v: _T) -> _T:
        if v.nb[2] == v.nb[0] * hv * nkv:
            v2 = g.reshape(v, hv * nkv, T)
        else:
            v2 = g.new(f"Vcur_cont-{il}", "CONT", "F32", (hv * nkv, T), v)
        if hv * nkv < v_gqa:  # [TAG_V_CACHE_VARIABLE]: fewer KV heads than the cache's widest layer
            v2 = g.new(f"Vcur_pad-{il}", "PAD", "F32", (v_gqa, T), v2)
        return v2

    qv, kp, vp = kv_cache_views(c, g, q, k, v, il, inp, iswa, fa, v_rows=v_rows)
    if fa:
        out = g.new(f"node_fa-{il}", "FLASH_ATTN_EXT", "F32", (hv, nh, T // ns, ns), qv, kp, vp, inp.mask)
        cur = g.reshape(out, hv * nh, T)
    else:
        cur = attn_no_flash(c, g, qv, kp, vp, inp.mask, il, softcap=d.attn_softcap)
    # build_attn_mha expands the attention's output (llama-graph.cpp:2827); the V rotation and the output
    # projection join the graph where their consumer is expanded: after the FFN in a parallel block
    g.expand(cur)
    return _rot(g, cur, inp.v_rot) if inp.v_rot is not None else cur


def _ffn(c: _Ctx, g: _Graph, x: _T, il: int, d: Dense) -> _T:
    """``build_ffn`` with a parallel gate (SwiGLU or GEGLU: one GLU node over gate and up), or phi3's
    fused gate-up projection (``ggml_swiglu`` over its two halves)."""
    p = f"blk.{il}."
    if d.fused_up:
        up = _proj(c, g, f"ffn_up-{il}", p + "ffn_up", x, il)
        act = g.new(f"ffn_swiglu-{il}", "GLU", "F32", (up.ne[0] // 2, *up.ne[1:]), up)
    else:
        gate = _proj(c, g, f"ffn_gate-{il}", p + "ffn_gate", x, il)
        up = _proj(c, g, f"ffn_up-{il}", p + "ffn_up", x, il)
        act = g.new(f"ffn_glu-{il}", "GLU", "F32", gate.ne, gate, up)
    return _proj(c, g, f"ffn_out-{il}", p + "ffn_down", act, il)


def build_dense(c: _Ctx, g: _Graph, d: Dense) -> _T:
    """The transformer of a llama-style model file, with ``d``'s differences."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    x = _inp_embd(c, g)
    if d.embd_scale:
        x = g.op("inp_scaled", "SCALE", x)
    c.pos = g.input("inp_pos", "I32", T * d.n_pos)
    iswa = any(c.swa)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa) if iswa else full
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        inp_sa = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, d) if d.attn_norm else x
        ffn_in = cur
        cur = _attention(c, g, cur, il, swa if c.swa[il] else full, iswa, d)
        last = il == hp.n_layer - 1
        if last:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
            if d.residual_first:
                g.expand(inp_sa)
            if d.parallel:
                ffn_in = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), ffn_in, out_ids)
        if d.parallel:  # cohere2.cpp:104-130: FFN of the attention's input norm, then + input + attention
            attn_out = cur
            cur = _ffn(c, g, ffn_in, il, d)
            cur = g.op(f"ffn_out-{il}", "ADD", cur, inp_sa)
            x = g.op(f"l_out-{il}", "ADD", cur, attn_out)
            continue
        if d.post_attn_norm:
            cur = _n(c, g, cur, b + "post_attention_norm.weight", il, d)
        add = (inp_sa, cur) if d.residual_first else (cur, inp_sa)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", *add)
        cur = _n(c, g, ffn_inp, b + d.ffn_norm_name + ".weight", il, d) if d.ffn_norm else ffn_inp
        cur = _ffn(c, g, cur, il, d)
        if d.post_ffn_norm:  # built with il = -1 (not pinned) but in glm4
            cur = _n(c, g, cur, b + "post_ffw_norm.weight", il, d, pin=d.post_ffn_norm_pin)
        x = g.op(f"l_out-{il}", "ADD", *((ffn_inp, cur) if d.ffn_residual_first else (cur, ffn_inp)))
    g.at(GLOBAL)
    cur = g.op("norm", d.norm, x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    nb = _weight(c, "output_norm.bias", hp.n_layer)
    if nb is not None:
        cur = g.op("result_norm", "ADD", cur, nb)
    cur.flags |= OUTPUT
    out_w = _weight(c, "output.weight", hp.n_layer) or _w(c, "token_embd.weight", hp.n_layer)
    logits = g.mul_mat("result_output", out_w, cur)
    ob = _weight(c, "output.bias", hp.n_layer)
    if ob is not None:
        logits = g.op("result_output", "ADD", logits, ob)
    if d.logit_softcap:
        logits = g.op("result_output", "UNARY", g.op("result_output", "SCALE", logits))
        logits = g.op("result_output", "SCALE", logits)
    if d.logit_scale:
        logits = g.op("result_output", "SCALE", logits)
    logits.flags |= OUTPUT
    return logits


Attention = Callable[[_Ctx, _Graph, _T, int, _AttnInp], _T]  # (c, g, normed input, il, KV inputs)
Ffn = Callable[[_Ctx, _Graph, _T, int], _T]  # (c, g, normed input, il)


def decoder(
    c: _Ctx,
    g: _Graph,
    x: _T,
    attention: Attention,
    ffn: Ffn,
    d: Dense,
    ffn_norm: str = "ffn_norm",
    iswa: bool = False,
    n_layer: int | None = None,
) -> _T:
    """The pre-norm layers as llama.cpp's model files write them out one by one (bitnet.cpp, plm.cpp,
    dbrx.cpp, grovemoe.cpp, apertus.cpp, exaone-moe.cpp, mimo2.cpp...): the positions, the KV cache's
    inputs (with ``iswa`` the sliding-window cache's too, given to its layers) and the output rows; per
    layer the attention norm (``d.norm``) and the file's ``attention``, the last layer's rows picked, the
    residual, the ``ffn_norm`` norm and the file's ``ffn``, the residual. ``n_layer``: the trunk's layers
    (the NextN/MTP blocks after them are not in the graph). The last layer's output."""
    hp, T, n_out, E = c.hp, c.n_tokens, c.n_outputs, c.hp.n_embd
    last = (hp.n_layer if n_layer is None else n_layer) - 1
    c.pos = g.input("inp_pos", "I32", T)
    full = _attn_inp(c, g, c.sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa) if iswa else full
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        if il > last:  # a NextN/MTP block: not in the graph
            continue
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        cur = attention(c, g, _n(c, g, x, b + "attn_norm.weight", il, d), il, swa if iswa and c.swa[il] else full)
        if il == last:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = ffn(c, g, _n(c, g, ffn_inp, f"{b}{ffn_norm}.weight", il, d), il)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return x


def tied_head(c: _Ctx) -> _T:
    """The head of the logits: ``output.weight``, else the token embeddings (tied: their copy on the output
    layer's buffer type, ``TENSOR_DUPLICATED``)."""
    n_layer = c.hp.n_layer
    return _weight(c, "output.weight", n_layer) or _w(c, "token_embd.weight", n_layer)


def output(c: _Ctx, g: _Graph, x: _T, head: _T, norm: str = "RMS_NORM") -> _T:
    """The output norm (``norm`` times ``output_norm``, an output) and the logits over ``head``."""
    g.at(GLOBAL)
    cur = g.op("norm", norm, x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", c.hp.n_layer))
    cur.flags |= OUTPUT
    logits = g.mul_mat("result_output", head, cur)
    logits.flags |= OUTPUT
    return logits


def nextn_output(c: _Ctx, g: _Graph, x: _T, out_ids: _T, norm: str = "RMS_NORM", scale: bool = False) -> _T:
    """The head of the builders with a NextN/MTP draft head's input (qwen35.cpp, qwen3next.cpp,
    nemotron-h.cpp, hy-v3.cpp, cohere2-moe.cpp...): the output norm over every token kept as an output
    (``t_h_nextn``, ``llm_graph_result::set_outputs``, llama-graph.cpp:1406), the output rows picked after
    it (``result_norm``, an output too), the logits over ``output.weight`` or the tied embeddings (scaled
    with ``scale``)."""
    n_layer = c.hp.n_layer
    g.at(GLOBAL)
    cur = g.op("norm", norm, x)
    cur = g.op("h_nextn", "MUL", cur, _w(c, "output_norm.weight", n_layer))
    cur.flags |= OUTPUT
    cur = g.new("result_norm", "GET_ROWS", "F32", (c.hp.n_embd, c.n_outputs), cur, out_ids)
    cur.flags |= OUTPUT
    out_w = _weight(c, "output.weight", n_layer) or _w(c, "token_embd.weight", n_layer)
    logits = g.mul_mat("result_output", out_w, cur)
    if scale:
        logits = g.op("result_output", "SCALE", logits)
    logits.flags |= OUTPUT
    return logits


def layer_weights(d: Dense) -> tuple[str, ...]:
    """The weights every layer of a ``d`` graph multiplies by (llama.cpp refuses a file without them);
    the Q/K/V projections are checked apart (``attn_qkv`` or the three)."""
    w = ["attn_output", "ffn_up", "ffn_down"]
    w += ["attn_norm"] if d.attn_norm else []
    w += [d.ffn_norm_name] if d.ffn_norm and not d.parallel else []
    w += [] if d.fused_up else ["ffn_gate"]
    w += ["attn_q_norm", "attn_k_norm"] if d.qk_norm else []
    w += ["post_attention_norm"] if d.post_attn_norm else []
    w += ["post_ffw_norm"] if d.post_ffn_norm else []
    return tuple(w)


def dense_unbuildable(model: GGUFModel, d: Dense) -> str | None:
    """Why this file cannot be built as a ``d`` graph (None when it can): a tensor the graph reads
    that the file lacks (llama.cpp would refuse it), or a graph part not rebuilt here."""
    arch = model.architecture or ""
    scale = model.metadata.get(f"{arch}.attention.temperature_scale")
    if isinstance(scale, (int, float)) and scale != 0:  # mistral3.cpp: build_inp_attn_scale, Q times it
        return f"{arch} graphs with attention temperature scaling are not simulated"
    names = {t.name for t in model.tensors}
    n_layer = model.metadata.get_int(f"{arch}.block_count") or 0
    needed = ["token_embd.weight", "output_norm.weight"]
    for il in range(min(n_layer, 513)):
        needed += [f"blk.{il}.{role}.weight" for role in layer_weights(d)]
        if f"blk.{il}.attn_qkv.weight" not in names:
            needed += [f"blk.{il}.attn_{r}.weight" for r in "qkv"]
    missing = next((n for n in needed if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
