"""``gemma3n`` (src/models/gemma3n.cpp): Gemma 3n's decoder, with everything it adds to Gemma 3's layer:

- the token embeddings scaled per row (``build_inp_embd(tok_embd, sqrt(n_embd))``: ``inp_scale_rows``);
- per-layer embeddings: the rows of ``per_layer_token_embd`` for the tokens (their own tokens input),
  scaled, plus the embeddings projected by ``per_layer_model_proj``, normed, scaled and laid out as one
  ``[n_embd_altup, n_tokens]`` slice per layer (``build_inp_per_layer``, ``project_per_layer_inputs``);
- AltUp: the embeddings repeated to ``n_altup`` (4) streams (``altup_proj``, magnitudes matched), each layer
  predicting the streams from the active one (``altup_predict``: router, coefficients, a product over the
  streams), correcting them after the layer (``altup_correct``) and adding the gated per-layer input to the
  other streams; after the last layer the streams are unembedded (``altup_unembd_proj``) and averaged;
- LAuReL: a low-rank branch (``laurel_l``, ``laurel_r``, its norm) added beside attention;
- V normed without a weight, Q/K head norms, post-attention and post-FFN norms;
- activation sparsity in the first 10 layers' FFN gate (``gaussian_topk``: mean, std, cutoff, ReLU), GELU;
- shared KV: the layers from ``n_layer_kv_from_start`` (20) on compute Q only and attend over the cache of
  layer 18 (sliding-window layers) or 19 (the others) (llama-model.cpp:2798-2801), writing nothing;
- the output rows gathered after the unembedding; final logit soft-capping (SCALE, TANH, SCALE).

The graph's node order is ``ggml_build_forward_expand``'s: each tensor is built with its sources in the
order ggml gives them, and only the expansions gemma3n.cpp and ``build_attn`` make are made here."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import (
    _attn_inp,
    _AttnInp,
    _Ctx,
    _inp_embd,
    _proj,
    _rot,
    _w,
    attn_no_flash,
    v_cache_view,
)
from ggufx.analysis.memory.graph.models._dense import Dense, _attn_kv, tied_head
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

N_ALTUP = 4  # llama_hparams::n_altup (not read from the file)
I_ALTUP_ACT = 0  # llama_hparams::i_altup_act
N_EMBD_ALTUP = 256  # llama_hparams::n_embd_altup
LAUREL_RANK = 64  # llama_hparams::laurel_rank
KV_FROM_START = 20  # n_layer_kv_from_start (gemma3n.cpp load_arch_hparams)
N_LAYER_SPARSITY = 10  # models.h: the layers whose FFN gate goes through gaussian_topk

_D = Dense()


def _norm(c: _Ctx, g: _Graph, x: _T, weight: str, il: int, pin: bool = True) -> _T:
    """``build_norm`` with RMS: the norm (pinned to layer ``il``'s device by ``graph_get_cb`` when
    gemma3n.cpp passes the layer: ``pin``), times its weight (layer ``il``'s copy; -1: the input
    layer's, ``n_layer``: the output layer's)."""
    cur = g.op(f"norm-{il}", "RMS_NORM", x)
    if pin:
        cur.backend = c.pin[il]
    return g.op(f"normed-{il}", "MUL", cur, _w(c, weight, il))


def _slice(g: _Graph, x: _T) -> _T:
    """``gemma3n_view_2d_slice``: one ``[ne0, ne1]`` slice of a 3-D tensor."""
    return g.view(x, (x.ne[0], x.ne[1]), x.nb[:2])


def _rest(g: _Graph, x: _T) -> _T:
    """The ``ggml_view_3d`` of every stream but the first."""
    return g.view(x, (x.ne[0], x.ne[1], x.ne[2] - 1), x.nb[:3])


def _magnitude(g: _Graph, x: _T, name: str) -> _T:
    """``calc_magnitude``: sqrt(sum_rows(sqr(x)))."""
    s = g.new(name, "SUM_ROWS", "F32", (1, *x.ne[1:]), g.op(name, "SQR", x))
    return g.op(name, "SQRT", s)


def _router(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    """``altup_compute_router_modalities``: [n_altup, n_tokens]."""
    b = f"blk.{il}."
    cur = g.op(f"router-{il}", "SCALE", _norm(c, g, x, b + "altup_router_norm.weight", il))
    return g.op(f"modalities-{il}", "UNARY", g.mul_mat(f"router-{il}", _w(c, b + "altup_router.weight", il), cur))


def _predict(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """``altup_predict``: [n_embd, n_tokens, n_altup]."""
    T = cur.ne[1]
    modalities = _router(c, g, _slice(g, cur), il)
    coefs = g.mul_mat(f"all_coefs-{il}", _w(c, f"blk.{il}.altup_predict_coef.weight", il), modalities)
    coefs = g.reshape(coefs, N_ALTUP, N_ALTUP, T)
    permuted = g.permute(cur, 1, 2, 0, 3)
    permuted = g.new(f"permuted-{il}", "CONT", "F32", permuted.ne, permuted)
    pred = g.mul_mat(f"predictions-{il}", permuted, coefs)  # [n_altup, n_embd, n_tokens]
    pp = g.permute(pred, 0, 2, 1, 3)
    pred = g.new(f"predictions-{il}", "CONT", "F32", pp.ne, pp)
    return g.op(f"predictions-{il}", "ADD", pred, cur)


def _correct(c: _Ctx, g: _Graph, predictions: _T, activated: _T, il: int) -> _T:
    """``altup_correct``: [n_embd, n_tokens, n_altup]."""
    E, T = activated.ne[0], activated.ne[1]
    modalities = _router(c, g, activated, il)
    innovation = g.op(f"innovation-{il}", "SUB", activated, _slice(g, predictions))
    coefs = g.mul_mat(f"all_coefs-{il}", _w(c, f"blk.{il}.altup_correct_coef.weight", il), modalities)
    coefs = g.op(f"all_coefs-{il}", "SCALE", coefs)  # ggml_scale_bias: + 1.0
    coefs = g.permute(coefs, 1, 0, 2, 3)  # ggml_transpose
    coefs = g.new(f"all_coefs-{il}", "CONT", "F32", (1, T, N_ALTUP), coefs)
    rep = g.new(f"innovation-{il}", "REPEAT", "F32", (E, T, N_ALTUP), innovation)
    corrected = g.op(f"corrected-{il}", "MUL", rep, coefs)
    return g.op(f"corrected-{il}", "ADD", corrected, predictions)


def _attn_shared(c: _Ctx, g: _Graph, q: _T, il: int, src_il: int, inp: _AttnInp) -> _T:
    """``build_attn`` with no K or V (a layer that reuses layer ``src_il``'s cache): Q expanded, no cache
    writes, attention over ``src_il``'s cache views (``build_attn_mha``, llama-graph.cpp:2691)."""
    hp, sp = c.hp, c.sp
    T, ns = c.n_tokens, sp.n_streams
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    fa, vt = sp.flash_attn, sp.v_transposed
    n_kv = inp.n_kv
    v_gqa = max(hp.n_head_kv) * hv
    q = _rot(g, q, inp.k_rot)
    g.expand(q)
    buft = c.cache_buft[src_il]
    cache_k = g.leaf(f"cache_k_l{src_il}", sp.type_k, (hd * nkv, n_kv * ns), buft=buft)
    cache_v = g.leaf(f"cache_v_l{src_il}", sp.type_v, (v_gqa if vt else (hv * nkv), n_kv * ns), buft=buft)
    qv = g.permute(g.view(q, (hd, nh, T // ns, ns), (q.nb[0], q.nb[1], q.nb[2], q.nb[2] * (T // ns))), 0, 2, 1, 3)
    krow = cache_k.nb[1]
    kp = g.permute(g.view(cache_k, (hd, nkv, n_kv, ns), (cache_k.nb[0], krow // nkv, krow, krow * n_kv)), 0, 2, 1, 3)
    vp = v_cache_view(g, cache_v, il, nkv, hv, n_kv, ns, vt, v_gqa, fa)
    if fa:
        out = g.new(f"node_fa-{il}", "FLASH_ATTN_EXT", "F32", (hv, nh, T // ns, ns), qv, kp, vp, inp.mask)
        cur = g.reshape(out, hv * nh, T)
    else:
        cur = attn_no_flash(c, g, qv, kp, vp, inp.mask, il)
    return _rot(g, cur, inp.v_rot) if inp.v_rot is not None else cur


def _attention(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """Self-attention of one layer (gemma3n.cpp: its own K and V, or the shared cache), before the output
    projection's norm."""
    hp, T = c.hp, c.n_tokens
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    b = f"blk.{il}."
    assert c.pos is not None
    q = g.reshape(_proj(c, g, f"Qcur-{il}", b + "attn_q", x, il), hd, nh, T)
    q = _norm(c, g, q, b + "attn_q_norm.weight", il)
    q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
    if il < KV_FROM_START:
        k = g.reshape(_proj(c, g, f"Kcur-{il}", b + "attn_k", x, il), hd, nkv, T)
        k = _norm(c, g, k, b + "attn_k_norm.weight", il)
        v = g.reshape(_proj(c, g, f"Vcur-{il}", b + "attn_v", x, il), hv, nkv, T)
        v = g.op(f"Vcur_normed-{il}", "RMS_NORM", v)
        k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
        cur = _attn_kv(c, g, q, k, v, il, inp, True, _D)
    else:
        src_il = KV_FROM_START - (2 if c.swa[il] else 1)  # llama-model.cpp:2801
        cur = _attn_shared(c, g, q, il, src_il, inp)
    g.expand(cur)  # build_attn_mha expands the attention's output before the output projection
    return g.mul_mat(f"attn_out-{il}", _w(c, b + "attn_output.weight", il), cur)


def _gaussian_topk(g: _Graph, x: _T, il: int) -> _T:
    """``gaussian_topk``: relu(x - (mean + std * k))."""
    mean = g.new(f"mean-{il}", "MEAN", "F32", (1, *x.ne[1:]), x)
    sq = g.op(f"sq-{il}", "SQR", g.op(f"diff-{il}", "SUB", x, mean))
    std = g.op(f"std-{il}", "SQRT", g.op(f"std-{il}", "SCALE", g.new(f"std-{il}", "SUM_ROWS", "F32", mean.ne, sq)))
    cutoff = g.op(f"cutoff-{il}", "ADD", mean, g.op(f"cutoff-{il}", "SCALE", std))
    return g.op(f"relu-{il}", "UNARY", g.op(f"sparse-{il}", "SUB", x, cutoff))


def layer_kind(il: int) -> tuple[bool, bool]:
    """What makes a layer's graph differ from another's that graphsim's layer signatures do not see:
    activation sparsity, shared KV."""
    return il < N_LAYER_SPARSITY, il >= KV_FROM_START


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph of gemma3n.cpp."""
    hp, sp = c.hp, c.sp
    T, n_out, E, L = c.n_tokens, c.n_outputs, hp.n_embd, hp.n_layer
    x = _inp_embd(c, g)  # build_inp_embd(tok_embd, sqrt(n_embd)): the token rows times inp_scale_rows
    x = g.op("inp_scaled", "MUL", x, g.input("inp_scale_rows", "F32", 1, T))
    g.expand(x)
    c.pos = g.input("inp_pos", "I32", T)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa)
    # build_inp_per_layer: [n_embd_altup, n_layer, n_tokens], expanded at once
    rows = g.new("inp_per_layer", "GET_ROWS", "F32", (N_EMBD_ALTUP * L, T), _w(c, "per_layer_token_embd.weight", -1))
    rows.src.append(g.input("inp_per_layer_tokens", "I32", T))
    per_layer = g.op("inp_per_layer_selected", "SCALE", g.reshape(rows, N_EMBD_ALTUP, L, T))
    g.expand(per_layer)
    # project_per_layer_inputs: [n_embd_altup, n_tokens, n_layer] (built now, computed where first read);
    # per_layer_model_proj and its norm are layer 0's tensors, altup_proj the output layer's (llama-arch.cpp)
    proj = g.mul_mat("per_layer_proj", _w(c, "per_layer_model_proj.weight", 0), x)
    proj = g.reshape(g.op("per_layer_proj", "SCALE", proj), N_EMBD_ALTUP, L, T)
    proj = _norm(c, g, proj, "per_layer_proj_norm.weight", 0, pin=False)
    per_layer = g.op("inp_per_layer", "SCALE", g.op("inp_per_layer", "ADD", proj, per_layer))
    pp = g.permute(per_layer, 0, 2, 1, 3)
    per_layer = g.new("inp_per_layer", "CONT", "F32", pp.ne, pp)
    # the other AltUp streams: the embeddings projected, their magnitudes matched to the embeddings'
    target = _magnitude(g, x, "target_magnitude")
    rep = g.new("inp_repeated", "REPEAT", "F32", (E, T, N_ALTUP - 1), x)
    added = g.mul_mat("altup_added", _w(c, "altup_proj.weight", L), rep)
    new = _magnitude(g, added, "new_magnitude")
    added = g.op("altup_added", "DIV", g.op("altup_added", "MUL", added, target), new)
    cur = g.new("inp_stacked", "CONCAT", "F32", (E, T, N_ALTUP), x, added)
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        predictions = _predict(c, g, cur, il)
        active = _slice(g, predictions)
        attn_in = _norm(c, g, active, b + "attn_norm.weight", il)
        # laurel: built here, computed where attn_laurel reads it
        lr = g.mul_mat(
            f"laurel-{il}",
            _w(c, b + "laurel_r.weight", il),
            g.mul_mat(f"laurel-{il}", _w(c, b + "laurel_l.weight", il), attn_in),
        )
        laurel = g.op(f"laurel_out-{il}", "ADD", _norm(c, g, lr, b + "laurel_post_norm.weight", il), attn_in)
        a = _attention(c, g, attn_in, il, swa if c.swa[il] else full)
        a = _norm(c, g, a, b + "post_attention_norm.weight", il)
        a = g.op(f"attn_gated-{il}", "ADD", a, active)
        attn_laurel = g.op(f"attn_laurel-{il}", "SCALE", g.op(f"attn_laurel-{il}", "ADD", a, laurel))
        f = _norm(c, g, attn_laurel, b + "ffn_norm.weight", il)
        up = g.mul_mat(f"ffn_up-{il}", _w(c, b + "ffn_up.weight", il), f)
        gate = g.mul_mat(f"ffn_gate-{il}", _w(c, b + "ffn_gate.weight", il), f)
        if il < N_LAYER_SPARSITY:
            gate = _gaussian_topk(g, gate, il)
        gate = g.op(f"ffn_gelu-{il}", "UNARY", gate)
        f = g.mul_mat(f"ffn_out-{il}", _w(c, b + "ffn_down.weight", il), g.op(f"ffn_mul-{il}", "MUL", up, gate))
        f = _norm(c, g, f, b + "post_ffw_norm.weight", il, pin=False)  # built with il = -1 (gemma3n.cpp)
        gated = g.op(f"attn_ffw_laurel_gated-{il}", "ADD", f, attn_laurel)
        corrected = _correct(c, g, predictions, gated, il)
        first = g.op(f"first_prediction-{il}", "MUL", _slice(g, corrected), _w(c, b + "altup_correct_scale.weight", il))
        first = g.op(
            f"first_prediction_gated-{il}",
            "UNARY",
            g.mul_mat(f"first_prediction-{il}", _w(c, b + "inp_gate.weight", il), first),
        )
        first = g.op(f"first_prediction_scaled-{il}", "MUL", first, _slice(g, per_layer))
        first = g.mul_mat(f"first_prediction-{il}", _w(c, b + "proj.weight", il), first)
        first = _norm(c, g, first, b + "post_norm.weight", il)
        slice_first = _slice(g, corrected)
        tmp = g.op(f"corrected_rest-{il}", "ADD", _rest(g, corrected), first)
        cur = g.new(f"l_out-{il}", "CONCAT", "F32", corrected.ne, slice_first, tmp)
    g.at(GLOBAL)
    # the streams merged back: the others unembedded, their magnitudes matched to the active one's, the mean
    target = _magnitude(g, _slice(g, cur), "target_magnitude")
    unembd = g.mul_mat("altup_unembd", _w(c, "altup_unembd_proj.weight", L), _rest(g, cur))
    new = _magnitude(g, unembd, "new_magnitude")
    unembd = g.op("altup_unembd", "DIV", g.op("altup_unembd", "MUL", unembd, target), new)
    merged = _slice(g, cur)
    for _ in range(N_ALTUP - 1):
        merged = g.op("unembd_merged", "ADD", merged, _slice(g, unembd))
    merged = g.op("unembd_merged", "SCALE", merged)
    out_ids = g.input("out_ids", "I32", n_out)
    rows_out = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), merged, out_ids)
    res = _norm(c, g, rows_out, "output_norm.weight", L, pin=False)
    res.flags |= OUTPUT
    out_w = tied_head(c)
    logits = g.op("result_output", "SCALE", g.mul_mat("result_output", out_w, res))
    logits = g.op("result_output", "SCALE", g.op("result_output", "UNARY", logits))
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Why this gemma3n file's graph cannot be built: a tensor the graph reads that the file lacks, or one
    whose shape is not the one gemma3n.cpp creates (llama.cpp refuses the file either way), with the AltUp
    and per-layer sizes llama.cpp fixes (4 streams, 256-wide per-layer inputs, LAuReL rank 64)."""
    hp = hparams(model)
    E, L = hp.n_embd, hp.n_layer
    if L <= KV_FROM_START:
        return f"the graph needs more than {KV_FROM_START} layers (gemma3n's layers from {KV_FROM_START} reuse the KV)"
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    shapes: dict[str, tuple[int, ...]] = {
        "altup_proj.weight": (E, E, N_ALTUP - 1),
        "altup_unembd_proj.weight": (E, E, N_ALTUP - 1),
        "per_layer_model_proj.weight": (E, N_EMBD_ALTUP * L),
        "per_layer_proj_norm.weight": (N_EMBD_ALTUP,),
        "output_norm.weight": (E,),
    }
    for il in range(L):
        b = f"blk.{il}."
        w: dict[str, tuple[int, ...]] = {
            "inp_gate.weight": (E, N_EMBD_ALTUP),
            "proj.weight": (N_EMBD_ALTUP, E),
            "post_norm.weight": (E,),
            "altup_correct_coef.weight": (N_ALTUP, N_ALTUP),
            "altup_correct_scale.weight": (E,),
            "altup_predict_coef.weight": (N_ALTUP, N_ALTUP * N_ALTUP),
            "altup_router.weight": (E, N_ALTUP),
            "altup_router_norm.weight": (E,),
            "laurel_l.weight": (E, LAUREL_RANK),
            "laurel_r.weight": (LAUREL_RANK, E),
            "laurel_post_norm.weight": (E,),
        }
        shapes |= {b + n: s for n, s in w.items()}
        for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm", "attn_k_norm"):
            shapes.setdefault(b + n + ".weight", ())
        for n in ("post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm"):
            shapes.setdefault(b + n + ".weight", ())
    if "attn_qkv" in " ".join(tensors):
        return "gemma3n graphs with a fused attn_qkv projection are not simulated"
    for name, shape in [("token_embd.weight", ()), ("per_layer_token_embd.weight", ()), *shapes.items()]:
        if name not in tensors:
            return f"the graph needs tensor {name}, which the file lacks"
        if shape and tensors[name] != shape:
            return f"the graph needs tensor {name} of shape {list(shape)}, not {list(tensors[name])}"
    if tensors["per_layer_token_embd.weight"][0] != N_EMBD_ALTUP * L:
        return f"the graph needs per_layer_token_embd.weight rows of {N_EMBD_ALTUP * L}"
    return None
