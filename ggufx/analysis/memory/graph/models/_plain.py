"""The plain decoders whose layer differs from :mod:`._dense`'s in the FFN or in how the residual is
wired (not a llama.cpp model file itself: ``arcee``, ``starcoder2``, ``phi2`` and ``stablelm`` without an
FFN norm are each one such file, built from :func:`build` with that file's :class:`Plain`).

The attention is :mod:`._dense`'s (its :class:`~._dense.Dense` switches: the norm op, Q/K norms, the
scaled query, the biases that come with the file's tensors); what this module adds is the FFN without a
gate (``build_ffn`` with ``LLM_FFN_SEQ`` and no gate tensor: up, its optional bias, GELU or squared ReLU,
down, its optional bias) and the two parallel residuals of phi2.cpp and stablelm.cpp. As in
:mod:`._dense`, the node order is ``ggml_build_forward_expand``'s (sources depth first): what matters is
which node reads which."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph, _strides
from ggufx.analysis.memory.graph.llm import _attn_inp, _AttnInp, _Ctx, _inp_embd, _proj, _rot, _w, _weight
from ggufx.analysis.memory.graph.models._dense import (
    Dense,
    _attn_kv,
    _ffn,
    _n,
    _qkv,
    qk_prep,
    tied_head,
)
from ggufx.model import GGUFModel

GLU = "glu"  # ffn_gate and ffn_up in parallel, SwiGLU (GEGLU with Dense.gelu): _dense's FFN
GELU = "gelu"  # up (+ bias), GELU, down (+ bias): starcoder2.cpp, phi2.cpp
RELU_SQR = "relu_sqr"  # up, ReLU, square, down: arcee.cpp

SEQ = "seq"  # ffn_inp = attn + x; l_out = FFN(norm(ffn_inp)) + ffn_inp (llama.cpp)
COHERE = "cohere"  # l_out = (FFN(attn_norm(x)) + x) + attn (command-r.cpp:104-130)
PHI2 = "phi2"  # l_out = (attn + FFN(attn_norm(x))) + x (phi2.cpp:95-111)
STABLELM = "stablelm"  # ffn_inp = attn + x; l_out = FFN(attn_norm(x)) + ffn_inp (stablelm.cpp without ffn_norm)


@dataclass(frozen=True, slots=True)
class Plain:
    """What one llama.cpp model file does: the attention's switches, its FFN, its residual."""

    attn: Dense = Dense()
    ffn: str = GLU
    residual: str = SEQ


def rot(g: _Graph, x: _T, r: _T | None) -> _T:
    """``llama_mul_mat_hadamard`` (llama-impl.h:57): as :func:`~ggufx.analysis.memory.graph.llm._rot`,
    with the ``ggml_cont_2d`` it makes of a tensor that is not contiguous (V as a view of the fused QKV)."""
    if r is None:
        return x
    if x.nb == _strides(x.ne, x.type):
        return _rot(g, x, r)
    n = r.ne[0]
    cont = g.new(f"{x.name} (cont)", "CONT", x.type, (n, math.prod(x.ne) // n), x)
    return g.reshape(g.mul_mat(x.name, r, cont), *x.ne)


def attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp, d: Dense) -> _T:
    """Q/K/V, their norms, RoPE, the scaled query, the attention and the output projection, as
    :func:`._dense._attention` but for one thing that matters where the FFN runs beside the attention:
    ``build_attn_mha`` expands the attention's output *before* the Hadamard rotation of a quantized V
    cache (llama-graph.cpp:2827 then :3003), so the rotation and the output projection are reached only
    from the residual that reads them (after a parallel FFN)."""
    p = f"blk.{il}."
    q, k, v = qk_prep(c, g, *_qkv(c, g, x, il, reshape=d.qk_norm != "full"), il, d)
    v = rot(g, v, inp.v_rot)  # what _attn_kv does first, here, so that it returns the unrotated output
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, v_rot=None), False, d)
    g.expand(cur)
    cur = _rot(g, cur, inp.v_rot)
    return _proj(c, g, f"attn_out-{il}", p + "attn_output", cur, il)


def ffn(c: _Ctx, g: _Graph, x: _T, il: int, p: Plain) -> _T:
    """``build_ffn`` of the file's kind (the biases are added where the file has them)."""
    if p.ffn == GLU:
        return _ffn(c, g, x, il, p.attn)
    b = f"blk.{il}."
    cur = _proj(c, g, f"ffn_up-{il}", b + "ffn_up", x, il)
    if p.ffn == GELU:
        cur = g.op(f"ffn_gelu-{il}", "UNARY", cur)
    else:
        cur = g.op(f"ffn_sqr(relu)-{il}", "SQR", g.op(f"ffn_relu-{il}", "UNARY", cur))
    return _proj(c, g, f"ffn_out-{il}", b + "ffn_down", cur, il)


def build(c: _Ctx, g: _Graph, p: Plain, after: Callable[[_Ctx, _Graph, _T, int], _T] | None = None) -> _T:
    """The transformer of the file: per layer the attention norm and attention, the last layer's rows
    picked, the file's FFN and residual (then ``after``, where the file does more at a layer's end: nanbeige's
    loop norm); then the output norm (optional bias), the head (optional bias)."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    d = p.attn
    x = _inp_embd(c, g)
    if d.embd_scale:
        x = g.op("inp_scaled", "SCALE", x)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        normed = _n(c, g, x, b + "attn_norm.weight", il, d)
        cur = attention(c, g, normed, il, inp, d)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
            if p.residual != SEQ:
                normed = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), normed, out_ids)
        if p.residual == PHI2:
            cur = g.op(f"attn_ffn-{il}", "ADD", cur, ffn(c, g, normed, il, p))
            x = g.op(f"l_out-{il}", "ADD", cur, inp_sa)
        elif p.residual == COHERE:
            out = g.op(f"ffn_out-{il}", "ADD", ffn(c, g, normed, il, p), inp_sa)
            x = g.op(f"l_out-{il}", "ADD", out, cur)
        else:
            ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
            src = normed if p.residual == STABLELM else _n(c, g, ffn_inp, b + "ffn_norm.weight", il, d)
            x = g.op(f"l_out-{il}", "ADD", ffn(c, g, src, il, p), ffn_inp)
        if after is not None:
            x = after(c, g, x, il)
    g.at(GLOBAL)
    cur = g.op("norm", d.norm, x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    nb = _weight(c, "output_norm.bias", hp.n_layer)
    if nb is not None:
        cur = g.op("result_norm", "ADD", cur, nb)
    cur.flags |= OUTPUT
    out_w = tied_head(c)
    logits = g.mul_mat("result_output", out_w, cur)
    ob = _weight(c, "output.bias", hp.n_layer)
    if ob is not None:
        logits = g.op("result_output", "ADD", logits, ob)
    if d.logit_scale:
        logits = g.op("result_output", "SCALE", logits)
    logits.flags |= OUTPUT
    return logits


def layer_weights(p: Plain) -> tuple[str, ...]:
    """The weights every layer of a ``p`` graph multiplies by (the Q/K/V projections apart)."""
    w = ["attn_norm", "attn_output", "ffn_up", "ffn_down"]
    w += ["ffn_norm"] if p.residual == SEQ else []
    w += ["ffn_gate"] if p.ffn == GLU else []
    w += ["attn_q_norm", "attn_k_norm"] if p.attn.qk_norm else []
    return tuple(w)


def needs(model: GGUFModel, layer: tuple[str, ...], top: tuple[str, ...] = (), qkv: bool = True) -> str | None:
    """The first tensor of ``layer`` (per layer, without ``blk.N.``), the Q/K/V projections (``attn_qkv``
    or the three; not with ``qkv`` false), ``token_embd``, ``output_norm`` and ``top`` that the file
    lacks, as ``graphsim.unbuildable`` words it (None: the file has them all)."""
    arch = model.architecture or ""
    names = {t.name for t in model.tensors}
    n_layer = model.metadata.get_int(f"{arch}.block_count") or 0
    needed = ["token_embd.weight", "output_norm.weight", *top]
    for il in range(min(n_layer, 513)):
        needed += [f"blk.{il}.{role}.weight" for role in layer]
        if qkv and f"blk.{il}.attn_qkv.weight" not in names:
            needed += [f"blk.{il}.attn_{r}.weight" for r in "qkv"]
    missing = next((n for n in needed if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None


# -- the classic decoders (issue 25): learned positions, an embedding norm, weightless norms, more residuals --

NEOX_PAR = "neox_par"  # gptneox.cpp use_par_res: l_out = (FFN(ffn_norm(x)) + x) + attn
FALCON = "falcon"  # falcon.cpp: l_out = (FFN(attn_norm(x)) + attn) + x (the attention of attn_norm_2(x) if any)


@dataclass(frozen=True, slots=True)
class Classic:
    """What one of the older llama.cpp model files does beyond :class:`Plain`: the learned absolute
    positions (``position_embd`` rows added to the token rows when the file has them: gpt2, starcoder,
    mpt), bloom's layer norm of the embeddings (``token_embd_norm``), norms without weights where the
    file has none (olmo's ``build_norm(x, NULL, NULL, LLM_NORM)``), and the residuals of gptneox's
    ``use_parallel_residual`` and falcon."""

    plain: Plain = Plain()
    residual: str = ""  # "" (the Plain's), NEOX_PAR, FALCON
    clamp: bool = False  # the loader reads attention.clamp_kqv (olmo, mpt): build_qkv clamps Q/K/V when set


def clamp_kqv(c: _Ctx) -> bool:
    """Whether the file sets ``{arch}.attention.clamp_kqv`` above 0 (``hparams.f_clamp_kqv``: read by the
    loaders of olmo and mpt; ``build_qkv`` then clamps Q/K/V)."""
    v = c.model.metadata.get(f"{c.hp.arch}.attention.clamp_kqv") if c.model is not None else None
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def norm(c: _Ctx, g: _Graph, x: _T, weight: str, il: int, d: Dense) -> _T:
    """``build_norm`` with the weight and the bias optional (olmo passes neither): the norm (pinned to the
    layer's device when ``il`` >= 0, as ``graph_get_cb`` does), times the weight, plus the bias, where the
    file has them."""
    cur = g.op(f"norm-{il}", d.norm, x)
    if il >= 0:
        cur.backend = c.pin[il]
    w = _weight(c, weight, il if il >= 0 else c.hp.n_layer)
    if w is not None:
        cur = g.op(f"normed-{il}", "MUL", cur, w)
    b = _weight(c, weight.removesuffix(".weight") + ".bias", il if il >= 0 else c.hp.n_layer)
    return g.op(f"normed-{il}", "ADD", cur, b) if b is not None else cur


def qkv_clamped(c: _Ctx, g: _Graph, x: _T, il: int) -> tuple[_T, _T, _T]:
    """``build_qkv`` (llama-graph.cpp:1684) with ``attention.clamp_kqv`` set: the fused projection (plus its
    bias) clamped before its three views, or each separate projection (plus its bias) clamped before its
    reshape (``ggml_clamp``: a new tensor, which ggml-alloc may place over its source)."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    p = f"blk.{il}."
    if _weight(c, p + "attn_qkv.weight", il) is not None:
        qkv = g.op(f"wqkv_clamped-{il}", "CLAMP", _proj(c, g, f"wqkv-{il}", p + "attn_qkv", x, il))
        es, row = qkv.nb[0], qkv.nb[1]
        q = g.view(qkv, (hd, nh, T), (es, es * hd, row))
        k = g.view(qkv, (hd, nkv, T), (es, es * hd, row))
        v = g.view(qkv, (hv, nkv, T), (es, es * hv, row))
        return q, k, v
    out = []
    for r, n, h in (("q", nh, hd), ("k", nkv, hd), ("v", nkv, hv)):
        t = g.op(f"{r.upper()}cur_clamped-{il}", "CLAMP", _proj(c, g, f"{r.upper()}cur-{il}", p + f"attn_{r}", x, il))
        out.append(g.reshape(t, h, n, T))
    return out[0], out[1], out[2]


def attention_classic(
    c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp, d: Dense, clamp: bool = False, iswa: bool = False
) -> _T:
    """:func:`attention` for the older files: Q/K/V (clamped with ``clamp``: :func:`qkv_clamped`), RoPE
    unless ``d.rope`` says no (ALiBi: bloom, mpt, jais, gpt2, starcoder, refact), and ``build_attn``'s
    Hadamard rotations of a quantized cache (llama-graph.cpp:2958-2966), which make Q, K and V contiguous
    first where they are views of the fused projection (:func:`rot`: the unroped Q and K, the V of a fused
    projection); ``iswa``: the model has a sliding-window cache (``build_attn``'s iSWA overload expands Q,
    K, V in that order)."""
    p = f"blk.{il}."
    qkv = qkv_clamped(c, g, x, il) if clamp else _qkv(c, g, x, il, reshape=d.qk_norm != "full")
    q, k, v = qk_prep(c, g, *qkv, il, d)
    q, k = rot(g, q, inp.k_rot), rot(g, k, inp.k_rot)
    v = rot(g, v, inp.v_rot)
    cur = _attn_kv(c, g, q, k, v, il, replace(inp, k_rot=None, v_rot=None), iswa, d)
    g.expand(cur)
    cur = _rot(g, cur, inp.v_rot)
    return _proj(c, g, f"attn_out-{il}", p + "attn_output", cur, il)


def build_classic(c: _Ctx, g: _Graph, k: Classic, use_par_res: bool = False) -> _T:
    """The transformer of an older model file: the token rows (plus the ``position_embd`` rows, then
    ``token_embd_norm``, where the file has them), per layer the attention norm and attention, the last
    layer's rows picked, the file's FFN and residual (gptneox's parallel one with ``use_par_res``); the
    output norm (weight and bias where present) and the head (the tied embeddings without ``output``)."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    p = k.plain
    d = p.attn
    residual = k.residual or p.residual
    clamp = k.clamp and clamp_kqv(c)
    if residual == NEOX_PAR and not use_par_res:
        residual = SEQ
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    pos_embd = _weight(c, "position_embd.weight", -1)
    if pos_embd is not None:  # gpt2.cpp, starcoder.cpp, mpt.cpp: inpL = tokens + get_rows(pos_embd, inp_pos)
        x = g.op("inp_embd_pos", "ADD", x, g.new("pos_embd", "GET_ROWS", "F32", (E, T), pos_embd, c.pos))
    if _weight(c, "token_embd_norm.weight", -1) is not None:  # bloom.cpp: build_norm(inpL, tok_norm, .., 0)
        x = norm(c, g, x, "token_embd_norm.weight", 0, d)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        inp_sa = x
        normed = norm(c, g, x, b + "attn_norm.weight", il, d)
        attn_in = normed
        if residual == FALCON and _weight(c, b + "attn_norm_2.weight", il) is not None:  # Falcon-40B
            attn_in = norm(c, g, x, b + "attn_norm_2.weight", il, d)
        cur = attention_classic(c, g, attn_in, il, inp, d, clamp)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
            if residual == FALCON:
                normed = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), normed, out_ids)
        if residual == FALCON:
            out = g.op(f"ffn_out-{il}", "ADD", ffn(c, g, normed, il, p), cur)
            x = g.op(f"l_out-{il}", "ADD", out, inp_sa)
            continue
        if residual == NEOX_PAR:
            out = ffn(c, g, norm(c, g, inp_sa, b + "ffn_norm.weight", il, d), il, p)
            x = g.op(f"l_out-{il}", "ADD", g.op(f"ffn_out-{il}", "ADD", out, inp_sa), cur)
            continue
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        x = g.op(f"l_out-{il}", "ADD", ffn(c, g, norm(c, g, ffn_inp, b + "ffn_norm.weight", il, d), il, p), ffn_inp)
    g.at(GLOBAL)
    cur = norm(c, g, x, "output_norm.weight", -1, d)
    cur.flags |= OUTPUT
    out_w = tied_head(c)
    logits = g.mul_mat("result_output", out_w, cur)
    logits.flags |= OUTPUT
    return logits


def needs_biases(model: GGUFModel, layer: tuple[str, ...], top: tuple[str, ...] = ()) -> str | None:
    """The first bias of ``layer`` (per layer, without ``blk.N.`` and ``.bias``) or of ``top`` (whole
    names) that the file lacks, as :func:`needs` words it (the loaders that require them refuse the file)."""
    arch = model.architecture or ""
    names = {t.name for t in model.tensors}
    n_layer = model.metadata.get_int(f"{arch}.block_count") or 0
    needed = [*top, *(f"blk.{il}.{r}.bias" for il in range(min(n_layer, 513)) for r in layer)]
    missing = next((n for n in needed if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
