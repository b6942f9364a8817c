"""``t5`` (src/models/t5.cpp: flan-t5, madlad400) and ``t5encoder`` (src/models/t5encoder.cpp, whose graph is t5's
encoder: ``using graph = llama_model_t5::graph<true>``).

``llama_context`` reserves the graph of ``LLM_GRAPH_TYPE_DEFAULT`` (llama-context.cpp:2557): for t5 that is the
decoder (``build_arch_graph``: DEFAULT and DECODER give ``graph<false>``), for t5encoder its only graph, the encoder.
The encoder's graph that t5's ``encode()`` runs later fits the decoder's reservation on every recorded run (the
``~llama_context`` line: "matches expectation").

The decoder (``graph<false>``) over ``dec_n_layer`` blocks (``decoder_block_count``, else ``block_count``):

* inputs: the token rows (``build_inp_embd``), the encoder's output ``cross_embd`` (``build_inp_cross_embd``: before
  any ``encode()`` it is ``[n_embd, n_ctx_train]``, the training context, whatever ``-c`` says), the position buckets
  ``[n_kv, n_tokens]`` (``build_inp_pos_bucket_dec``), the KV cache's rows and mask (``build_attn_inp_kv``), the cross
  attention's mask ``[n_ctx_train, n_tokens]`` (``build_attn_inp_cross``), the output rows;
* per block: RMS norm, Q/K/V, the position bias (``build_pos_bias``: the bucket rows of ``attn_rel_b``, block 0's
  when the block has none, permuted and made contiguous ``[n_kv, n_tokens, n_head]``), the self-attention over the
  cache *without* flash attention whatever ``-fa`` says (``build_attn_mha`` uses it only when ``kq_b`` is null: the
  scores plus the bias, the softmax, V made contiguous transposed where the cache is not), the output projection,
  the residual; RMS norm, the cross attention (Q from the block, K and V from ``cross_embd``: ``[n_embd_k_gqa,
  n_ctx_train]`` each, flash attention when on, K and V cast to F16 for it), the residual (the last block gathers the
  output rows first); RMS norm, the FFN (flan-t5: GELU-gated ``ffn_gate``/``ffn_up``; T5 v1.0: ``ffn_up``, ReLU),
  ``ffn_down``, the residual;
* ``dec.output_norm``, the lm_head (``output``, or the tied ``token_embd``).

The encoder (``graph<true>``, t5encoder) over ``block_count`` blocks: the token rows, the position buckets ``[n_tokens,
n_tokens]``, the attention over the micro-batch alone (``build_attn_inp_no_cache``: a ``[n_tokens, n_tokens]`` mask),
each block's attention with its position bias (never flash attention), the FFN as above, ``enc.output_norm``: the
embeddings (no lm_head).

The self-attention's bias is ``[n_kv, n_tokens, n_head]`` and does not broadcast over the per-sequence KV streams of
``-np`` > 1 without a unified cache: llama.cpp aborts while it reserves t5's graph (``ggml_add``:
``GGML_ASSERT(ggml_can_repeat(b, a))``), and so does :func:`build` (an :class:`~ggufx.errors.InputError` naming
``-np``)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import (
    _attn_inp,
    _AttnInp,
    _Ctx,
    _inp_embd,
    _norm,
    _rot,
    _w,
    _weight,
    attn_no_flash,
    kv_cache_views,
    model_of,
)
from ggufx.analysis.memory.graph.models._dense import tied_head
from ggufx.analysis.memory.hparams import hparams
from ggufx.errors import InputError
from ggufx.model import GGUFModel


def dec_n_layer(model: GGUFModel) -> int:
    """``hparams.dec_n_layer`` (t5.cpp load_arch_hparams): ``decoder_block_count``, else ``block_count``."""
    arch = model.architecture
    n_layer = model.metadata.get_int(f"{arch}.block_count") or 0
    dec = model.metadata.get_int(f"{arch}.decoder_block_count")
    return n_layer if dec is None else dec


def _rel_b(c: _Ctx, part: str, il: int) -> _T:
    """The block's ``attn_rel_b``, else block 0's (t5.cpp: ``layers[il].attn_rel_b ?: layers[0].attn_rel_b``)."""
    own = _weight(c, f"{part}.blk.{il}.attn_rel_b.weight", il)
    return own if own is not None else _w(c, f"{part}.blk.0.attn_rel_b.weight", 0)


def _pos_bias(g: _Graph, bucket: _T, rel_b: _T) -> _T:
    """``build_pos_bias`` (llama-graph.cpp:2676-2689): the bucket rows of ``attn_rel_b`` (``[n_head, n_kv *
    n_tokens]``), reshaped, permuted and made contiguous ``[n_kv, n_tokens, n_head]``. Not expanded: it joins the
    graph as the scores' ``ADD`` source."""
    n_kv, T = bucket.ne[0], bucket.ne[1]
    nh = rel_b.ne[0]
    flat = g.reshape(bucket, n_kv * T)
    rows = g.new("pos_bias", "GET_ROWS", "F32", (nh, n_kv * T), rel_b, flat)
    bias = g.permute(g.reshape(rows, nh, n_kv, T), 2, 0, 1, 3)
    return g.new("pos_bias", "CONT", "F32", bias.ne, bias)


def _qkv(c: _Ctx, g: _Graph, x: _T, p: str, il: int, n_kv_rows: _T | None = None) -> tuple[_T, _T, _T]:
    """Q, K and V of block ``p`` (``build_qkv``'s separate path; the cross attention takes K and V from the encoder's
    output ``n_kv_rows``), reshaped to heads."""
    hp = c.hp
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    cross = "cross_" if n_kv_rows is not None else ""
    kv_in = n_kv_rows if n_kv_rows is not None else x
    q = g.mul_mat(f"Qcur-{il}", _w(c, f"{p}{cross}attn_q.weight", il), x)
    k = g.mul_mat(f"Kcur-{il}", _w(c, f"{p}{cross}attn_k.weight", il), kv_in)
    v = g.mul_mat(f"Vcur-{il}", _w(c, f"{p}{cross}attn_v.weight", il), kv_in)
    n = kv_in.ne[1]
    return g.reshape(q, hd, nh, x.ne[1]), g.reshape(k, hd, nkv, n), g.reshape(v, hv, nkv, n)


def _attn_self(c: _Ctx, g: _Graph, q: _T, k: _T, v: _T, kq_b: _T, il: int, inp: _AttnInp) -> _T:
    """``build_attn`` over the KV cache (llama-graph.cpp:2943-3030) with a position bias: the Hadamard rotations of a
    quantized cache, Q, V, K expanded, the cache writes (:func:`~ggufx.analysis.memory.graph.llm.kv_cache_views`),
    then ``build_attn_mha``'s path without flash attention (a ``kq_b`` turns it off, :2716): the scores over the
    cache, plus the bias, the softmax, V (transposed back into a contiguous copy where the cache was made for flash
    attention), the product, the heads made contiguous."""
    qv, kp, vp = kv_cache_views(c, g, q, k, v, il, inp, False, False)
    cur = attn_no_flash(c, g, qv, kp, vp, inp.mask, il, kq_b=kq_b)
    g.expand(cur)
    return _rot(g, cur, inp.v_rot) if inp.v_rot is not None else cur


def _attn_mha(c: _Ctx, g: _Graph, q: _T, k: _T, v: _T, kq_b: _T | None, mask: _T, il: int) -> _T:
    """``build_attn`` over the micro-batch (``llm_graph_input_attn_no_cache``, llama-graph.cpp:2858-2908) or over the
    encoder's rows (``llm_graph_input_attn_cross``, :3368-3400): Q, K and V expanded, then ``build_attn_mha``
    (:2691-2830): flash attention when on and there is no position bias (K and V, F32, cast to F16 first: a ``CPY``
    each), else the scores (plus the bias), the softmax, V made contiguous transposed, the product, the heads made
    contiguous."""
    hp, T = c.hp, c.n_tokens
    nh, hv = hp.n_head[il], hp.head_v
    for t in (q, k, v):
        g.expand(t)
    qp, kp, vp = g.permute(q, 0, 2, 1, 3), g.permute(k, 0, 2, 1, 3), g.permute(v, 0, 2, 1, 3)
    if c.sp.flash_attn and kq_b is None:
        k16 = g.new(f"{k.name} (copy)", "CPY", "F16", kp.ne, kp)
        k16.src.append(k16)
        v16 = g.new(f"{v.name} (copy)", "CPY", "F16", vp.ne, vp)
        v16.src.append(v16)
        out = g.new(f"node_fa-{il}", "FLASH_ATTN_EXT", "F32", (hv, nh, T, 1), qp, k16, v16, mask)
        cur = g.reshape(out, hv * nh, T)
    else:
        cur = attn_no_flash(c, g, qp, kp, vp, mask, il, kq_b=kq_b, v_cont=True)
    g.expand(cur)
    return cur


def _ffn(c: _Ctx, g: _Graph, x: _T, p: str, il: int) -> _T:
    """``build_ffn`` as t5.cpp calls it: with ``ffn_gate``, GELU over the parallel gate (``ggml_geglu_split``: one GLU
    node over gate and up); without, ``ffn_up`` then ReLU; ``ffn_down``."""
    up = g.mul_mat(f"ffn_up-{il}", _w(c, f"{p}ffn_up.weight", il), x)
    gate_w = _weight(c, f"{p}ffn_gate.weight", il)
    if gate_w is not None:
        gate = g.mul_mat(f"ffn_gate-{il}", gate_w, x)
        act = g.new(f"ffn_geglu-{il}", "GLU", "F32", gate.ne, gate, up)
    else:
        act = g.op(f"ffn_relu-{il}", "UNARY", up)
    return g.mul_mat(f"ffn_out-{il}", _w(c, f"{p}ffn_down.weight", il), act)


def _layers(c: _Ctx, n: int) -> list[int]:
    """The blocks to build: graphsim's plan over ``block_count`` layers, which is the decoder's when it has as many
    blocks (:func:`unbuildable` refuses the other decoders where a plan could leave layers out)."""
    if n == c.hp.n_layer:
        return list(c.layers)
    assert c.layers == list(range(c.hp.n_layer)), "a shortened plan over another block count"
    return list(range(n))


def n_outputs(c: _Ctx) -> int:
    """The outputs of this reservation: llama_context takes ``n_outputs_max = n_batch`` for a model with an encoder
    whatever the caller asked (llama-context.cpp:252: llama-server's ``-np`` outputs do not apply), so the
    prompt-processing reservation outputs the whole micro-batch (``min(n_ubatch, n_batch)``); the token one, one
    output per sequence."""
    return c.n_outputs if c.n_tokens == c.sp.n_seq_max else c.sp.n_ubatch


def build(c: _Ctx, g: _Graph) -> _T:
    """t5.cpp's graph that llama_context reserves: t5's decoder, t5encoder's encoder."""
    if c.hp.arch == "t5encoder":
        return _encoder(c, g)
    return _decoder(c, g)


def _decoder(c: _Ctx, g: _Graph) -> _T:
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, n_outputs(c), hp.n_embd
    # ggml_add(kq, kq_b): the bias [n_kv, n_tokens, n_head] against the scores [n_kv, n_tokens/ns, n_head, ns]
    if sp.n_streams > 1:
        raise InputError(
            f"-np {sp.n_seq_max}: llama.cpp aborts on t5's graph with a KV stream per sequence (its position bias "
            "does not broadcast over the streams: GGML_ASSERT(ggml_can_repeat(b, a)) in ggml_add); use -np 1 or "
            "a unified KV cache (-kvu)",
            "-np",
        )
    n_enc = hp.n_ctx_train
    x = _inp_embd(c, g)
    embd_enc = g.input("cross_embd", "F32", E, n_enc)
    bucket = g.input("pos_bucket_dec", "I32", sp.n_kv, T)
    inp = _attn_inp(c, g, sp.n_kv)
    cross_mask = g.input("cross_kq_mask", "F16" if sp.flash_attn else "F32", n_enc, T, 1, 1)
    out_ids = g.input("out_ids", "I32", n_out)
    layers = _layers(c, dec_n_layer(model_of(c)))
    last = layers[-1]
    for pos, il in enumerate(layers):
        g.at(pos)
        p = f"dec.blk.{il}."
        inp_sa = x
        cur = _norm(c, g, x, p + "attn_norm.weight", il)
        q, k, v = _qkv(c, g, cur, p, il)
        kq_b = _pos_bias(g, bucket, _rel_b(c, "dec", il))
        cur = _attn_self(c, g, q, k, v, kq_b, il, inp)
        cur = g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_o.weight", il), cur)
        cur = g.op(f"cross_inp-{il}", "ADD", cur, inp_sa)
        inp_ca = cur
        cur = _norm(c, g, cur, p + "cross_attn_norm.weight", il)
        q, k, v = _qkv(c, g, cur, p, il, embd_enc)
        cur = _attn_mha(c, g, q, k, v, None, cross_mask, il)
        cur = g.mul_mat(f"cross_out-{il}", _w(c, p + "cross_attn_o.weight", il), cur)
        if il == last:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_ca = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_ca, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_ca)
        cur = _ffn(c, g, _norm(c, g, ffn_inp, p + "ffn_norm.weight", il), p, il)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "dec.output_norm.weight", hp.n_layer))
    out = tied_head(c)
    logits = g.mul_mat("result_output", out, cur)
    logits.flags |= OUTPUT
    g.expand(logits)
    return logits


def _encoder(c: _Ctx, g: _Graph) -> _T:
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, n_outputs(c), hp.n_embd
    x = _inp_embd(c, g)
    bucket = g.input("pos_bucket_enc", "I32", T, T)
    mask = g.input("self_kq_mask", "F16" if sp.flash_attn else "F32", T, T, 1, 1)
    out_ids = g.input("out_ids", "I32", n_out)
    layers = _layers(c, hp.n_layer)
    for pos, il in enumerate(layers):
        g.at(pos)
        p = f"enc.blk.{il}."
        inp_sa = x
        cur = _norm(c, g, x, p + "attn_norm.weight", il)
        q, k, v = _qkv(c, g, cur, p, il)
        kq_b = _pos_bias(g, bucket, _rel_b(c, "enc", il))
        cur = _attn_mha(c, g, q, k, v, kq_b, mask, il)
        cur = g.mul_mat(f"attn_out-{il}", _w(c, p + "attn_o.weight", il), cur)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _ffn(c, g, _norm(c, g, ffn_inp, p + "ffn_norm.weight", il), p, il)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "enc.output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    g.expand(cur)
    return cur


# the shortest run of identical layers graphsim's plan leaves layers out of (graphsim._plan: with two blocks kept,
# a run of five layers of one signature before the last trunk layer's)
_PLAN_MIN_LAYERS = 6


def unbuildable(model: GGUFModel) -> str | None:
    """Why t5.cpp's graph cannot be built from this file (None when it can): equal Q/K/V head widths, the position
    buckets, the tensors the graph reads (what load_arch_tensors requires, and block 0's ``attn_rel_b``, which every
    block without its own reads), a decoder of at most as many blocks as the encoder (llama.cpp's KV cache has
    ``block_count`` layers: a decoder block past them has no cache)."""
    hp = hparams(model)
    arch = model.architecture
    if hp.head_k <= 0 or hp.head_k != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length > 0"
    if (model.metadata.get_int(f"{arch}.attention.relative_buckets_count") or 0) <= 0:
        return "the graph needs a positive attention.relative_buckets_count"
    names = {t.name for t in model.tensors}
    encoder = arch == "t5encoder"
    n = hp.n_layer if encoder else dec_n_layer(model)
    if not encoder:
        if n > hp.n_layer:
            return (
                f"the decoder has {n} blocks (decoder_block_count) for a KV cache of block_count = {hp.n_layer} "
                "layers: llama.cpp's decoder has no cache for the blocks past them"
            )
        if n < hp.n_layer and hp.n_layer >= _PLAN_MIN_LAYERS:
            return "the graph of a decoder with fewer blocks than the encoder is rebuilt for up to 5 encoder blocks"
        if n <= 0 or hp.n_ctx_train <= 0:
            return "the graph needs decoder blocks and a positive context_length (the encoder rows it attends)"
    part = "enc" if encoder else "dec"
    roles = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_o", "ffn_norm", "ffn_up", "ffn_down"]
    if not encoder:
        roles += ["cross_attn_norm", "cross_attn_q", "cross_attn_k", "cross_attn_v", "cross_attn_o"]
    need = ["token_embd.weight", f"{part}.output_norm.weight", f"{part}.blk.0.attn_rel_b.weight"]
    need += [f"{part}.blk.{il}.{r}.weight" for il in range(n) for r in roles]
    missing = next((x for x in need if x not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
