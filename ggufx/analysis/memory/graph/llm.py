"""``llm_graph_context``'s shared pieces (src/llama-graph.cpp): the graph inputs (embeddings, positions,
the KV cache's rows and masks), attention over the cache, norms, projections, the dense and the
mixture-of-experts FFN; what a builder of :mod:`ggufx.analysis.memory.graph.models` is made of."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ggufx.analysis.memory.graph.ggml import _T, _Fusion, _Graph, _ne, _strides, _type
from ggufx.analysis.memory.hparams import Hparams
from ggufx.analysis.memory.options import POOLING_TYPES
from ggufx.errors import ValidationError
from ggufx.model import GGUFModel

_MOE_REDUCTION_MAX = 15  # MOE_WEIGHTED_REDUCTION_MAX_EXPERTS (ggml-cuda.cu:3096)


@dataclass(frozen=True, slots=True)
class SimParams:
    """The resolved context of one reservation (what ``breakdown`` computes from the options)."""

    n_ubatch: int
    n_outputs: int  # outputs of the prompt-processing reserve
    n_seq_max: int
    n_kv: int  # cells per stream
    n_streams: int
    flash_attn: bool
    type_k: str = "F16"
    type_v: str = "F16"
    no_kv_offload: bool = False
    pipeline: bool = False
    n_kv_swa: int | None = None  # cells per stream of a sliding-window cache (None: without --swa-full)
    # the V cache's layout (llama_kv_cache's v_trans, from attn_v_trans = !cparams.flash_attn when the
    # context makes its memory, llama-model.cpp:2485). None: the layout of a cache made with this
    # flash-attention setting (transposed without). False with flash attention off: -fa auto that
    # resolve_fused_ops turns off (llama-context.cpp:509-561) after the memory was made for it (:232, :399)
    v_trans: bool | None = None
    # an embedding run (llama.cpp's cparams.embeddings: --embedding, llama-embedding): the pooling type
    # resolved (none, mean, cls, last, rank; llama-context.cpp:218-224), whose nodes build_pooling adds after
    # the model's graph (llama-model.cpp build_graph). None: no embeddings, no pooling nodes
    pooling: str | None = None
    # the recurrent state's rollback snapshots per sequence (cparams.n_rs_seq: --spec-draft-n-max under
    # --spec-type draft-mtp, llama-context.cpp:107-112): the Gated DeltaNet writes n_rs_seq + 1 states back
    # (delta-net-base.cpp:497-520, 563-596)
    n_rs_seq: int = 0

    @property
    def v_transposed(self) -> bool:
        """Whether the V cache is transposed (one row per channel, written element by element)."""
        return not self.flash_attn if self.v_trans is None else self.v_trans


@dataclass(frozen=True, slots=True)
class _Gdn:
    """The Gated DeltaNet dimensions (qwen35.cpp:54-61, :356-362)."""

    d_conv: int  # ssm.conv_kernel
    head_k: int  # ssm.state_size
    n_k_heads: int  # ssm.group_count
    n_v_heads: int  # ssm.time_step_rank
    head_v: int  # ssm.inner_size / n_v_heads


@dataclass(slots=True)
class _Ctx:
    """What a graph builder reads and adds to: the sizes, the options, the weights and the graph."""

    hp: Hparams
    sp: SimParams
    n_tokens: int
    n_outputs: int
    weights: dict[tuple[str, str | None], _T]  # (name, buft) -> tensor
    by_name: dict[str, list[tuple[str, _T]]]
    layer_buft: list[str]  # the buffer type of each layer's weights (index n_layer: the output layer)
    cache_buft: list[str]
    pin: list[int]  # the backend graph_get_cb pins each layer's "norm" to (-1: none)
    path: str = ""  # the model's file, for the error a missing tensor gets
    moe: int | None = None  # experts used per token (n_expert_used) of a mixture-of-experts FFN
    swa: list[bool] = field(default_factory=list)  # the sliding-window layers
    n_kv_swa: int = 0  # cells per stream of the sliding-window cache
    pos: _T | None = None  # the positions input, once built
    recurrent: list[bool] = field(default_factory=list)  # the Gated DeltaNet layers of a hybrid
    gdn: _Gdn | None = None  # their dimensions
    layers: list[int] = field(default_factory=list)  # the layers built, in order (all of them, or a plan's)
    model: GGUFModel | None = None  # the opened model: the hyper-parameters a builder reads beyond ``hp``
    host: int = -1  # the scheduler's index of the host backend (its last: after the GPUs)


def model_of(c: _Ctx) -> GGUFModel:
    """The model whose graph is built (graphsim's context carries it)."""
    if c.model is None:
        raise ValidationError(c.path, None, "the graph needs the model's header")
    return c.model


def _weight(c: _Ctx, name: str, il: int) -> _T | None:
    """The copy of a weight that layer ``il`` uses: a tensor loaded once per buffer type (the tied
    output, rope_freqs) is taken from the layer's own buffer type when it has one there."""
    copies = c.by_name.get(name)
    if not copies:
        return None
    if il < 0:  # the input layer: the first copy (llama-model.cpp loads token_embd on the host first)
        return copies[0][1]
    for buft, t in copies:
        if buft == c.layer_buft[il]:
            return t
    return copies[-1][1] if il == c.hp.n_layer else copies[0][1]


def _rot(g: _Graph, x: _T, rot: _T | None) -> _T:
    """The Hadamard rotation of a quantized cache (llama-graph.cpp ``ggml_rotate_hadamard``)."""
    if rot is None:
        return x
    n = rot.ne[0]
    r = g.reshape(x, n, math.prod(x.ne) // n)
    r = g.mul_mat(x.name, rot, r)
    return g.reshape(r, *x.ne)


@dataclass(slots=True)
class _AttnInp:
    """One KV cache's graph inputs (``build_attn_inp_kv``/``_iswa``, llama-graph.cpp:3470-3530):
    the rows to write, the mask, the Hadamard rotations of a quantized cache."""

    n_kv: int  # cells per stream
    k_idxs: _T
    v_idxs: _T
    mask: _T
    k_rot: _T | None
    v_rot: _T | None


def _attn_inp(c: _Ctx, g: _Graph, n_kv: int) -> _AttnInp:
    hp, sp, T = c.hp, c.sp, c.n_tokens
    hd, hv = hp.head_k, hp.head_v
    tk, tv = _type(sp.type_k), _type(sp.type_v)
    k_rot = g.input("attn_inp_k_rot", "F32", hd, hd) if tk.block_size > 1 and hd % 64 == 0 else None
    if k_rot is not None:
        n = 64
        while hd % (2 * n) == 0:
            n *= 2
        k_rot.ne, k_rot.nb = _ne(n, n), _strides(_ne(n, n), "F32")
    v_rot = g.input("attn_inp_v_rot", "F32", 64, 64) if tv.block_size > 1 and hv % 64 == 0 else None
    k_idxs = g.input("attn_inp_k_idxs", "I64", T)
    v_gqa = max(hp.n_head_kv) * hv
    v_idxs = g.input("attn_inp_v_idxs", "I64", T * (v_gqa if sp.v_transposed else 1))
    ns = sp.n_streams
    mask = g.input("attn_inp_kq_mask", "F16" if sp.flash_attn else "F32", n_kv, T // ns, 1, ns)
    return _AttnInp(n_kv, k_idxs, v_idxs, mask, k_rot, v_rot)


def _inp_embd(c: _Ctx, g: _Graph) -> _T:
    """``build_inp_embd`` (llama-graph.cpp:2413): the token branch, then the unselected embedding
    branches (all kept by ``ggml_build_forward_select``), then Gemma's scaling of the token rows."""
    T, E = c.n_tokens, c.hp.n_embd
    tok = _w(c, "token_embd.weight", -1)
    tokens = g.input("inp_tokens", "I32", T)
    embd = g.new("embd", "GET_ROWS", "F32", (E, T), tok, tokens)
    inp_embd = g.input("inp_embd", "F32", E, T)
    mixed_tokens = g.input("inp_mixed_tokens", "I32", T)
    mixed_slots = g.input("inp_mixed_slots", "I64", T)
    mixed_embd = g.input("inp_mixed_embd", "F32", E, T)
    rows = g.new("node_1", "GET_ROWS", "F32", (E, T), tok, mixed_tokens)
    dup = g.new("node_2", "DUP", "F32", (E, T), mixed_embd)
    sel = g.view(dup, dup.ne, dup.nb, "SET_ROWS")
    sel.src = [rows, mixed_slots, dup]
    for t in (embd, inp_embd, sel):
        g.expand(t)
    if c.hp.arch == "gemma3":  # tok_scale = sqrt(n_embd) (gemma3.cpp:89): MUL by the input scale_rows
        embd = g.op("inp_scaled", "MUL", embd, g.input("inp_scale_rows", "F32", 1, T))
        g.expand(embd)
    return embd


def _attn(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp, iswa: bool) -> _T:
    """Q/K/V and RoPE of one layer, its attention (:func:`_attn_kv`), then the output projection."""
    hp = c.hp
    T = c.n_tokens
    nh, nkv = hp.n_head[il], hp.n_head_kv[il]
    hd, hv = hp.head_k, hp.head_v
    pos = c.pos
    assert pos is not None
    rope_freqs = _weight(c, "rope_freqs.weight", il)
    rope_src = [pos, *([rope_freqs] if rope_freqs else [])]
    q = _proj(c, g, f"Qcur-{il}", f"blk.{il}.attn_q", x, il)
    q = _qk_norm(c, g, g.reshape(q, hd, nh, T), f"blk.{il}.attn_q_norm.weight", il)
    q = g.new(q.name, "ROPE", "F32", q.ne, q, *rope_src)
    if hp.arch == "gemma3":
        q = g.op(q.name, "SCALE", q)  # f_attention_scale (gemma3.cpp:138)
    k = _proj(c, g, f"Kcur-{il}", f"blk.{il}.attn_k", x, il)
    k = _qk_norm(c, g, g.reshape(k, hd, nkv, T), f"blk.{il}.attn_k_norm.weight", il)
    v = _proj(c, g, f"Vcur-{il}", f"blk.{il}.attn_v", x, il)
    v = g.reshape(v, hv, nkv, T)
    k = g.new(k.name, "ROPE", "F32", k.ne, k, *rope_src)
    cur = _attn_kv(c, g, q, k, v, il, inp, iswa)
    return _proj(c, g, f"attn_out-{il}", f"blk.{il}.attn_output", cur, il)


def merged_streams(g: _Graph, cache: _T, n_streams: int) -> _T:
    """``cpy_k``/``cpy_v`` (llama-kv-cache.cpp:1368, :1405): with several streams the cache (one slice per stream)
    is reshaped to one 2D tensor before its ``SET_ROWS``, "because the idxs are global" (a node of no bytes)."""
    return g.reshape(cache, *cache.ne[:2]) if n_streams > 1 else cache


def set_rows(g: _Graph, dst: _T, rows: _T, idxs: _T) -> _T:
    """``ggml_set_rows(ctx, dst, rows, idxs)``: a view of ``dst``, its sources in ggml.c's order (rows, idxs, dst)."""
    out = g.view(dst, dst.ne, dst.nb, "SET_ROWS")
    out.src = [rows, idxs, dst]
    return out


def _attn_kv(c: _Ctx, g: _Graph, q: _T, k: _T, v: _T, il: int, inp: _AttnInp, iswa: bool) -> _T:
    """The cache writes and the attention of one layer's roped Q, K and V (``build_attn``,
    llama-graph.cpp:2950-3060 and, with a sliding-window cache, :3195-3290), before the output
    projection."""
    return _attn_kv_impl(c, g, q, k, v, il, inp, iswa, False)


def attn_kv_strided(c: _Ctx, g: _Graph, q: _T, k: _T, v: _T, il: int, inp: _AttnInp, iswa: bool) -> _T:
    """:func:`_attn_kv` where Q, K or V may be strided views (of a fused QKV projection): llama.cpp copies
    such a tensor contiguous where it must, as ``CONT`` nodes of its own: before a Hadamard rotation
    (``llama_mul_mat_hadamard``, llama-impl.h:57-75) and, into a transposed V cache, when V's tokens are
    not rows of ``n_embd_v_gqa`` values (``cpy_v``, llama-kv-cache.cpp:1418-1424)."""
    return _attn_kv_impl(c, g, q, k, v, il, inp, iswa, True)


def is_contiguous(t: _T) -> bool:
    """``ggml_is_contiguous``: the elements in order, dimensions of one element skipped."""
    ty = _type(t.type)
    if t.nb[0] != ty.type_size:
        return False
    step = ty.type_size * (t.ne[0] // ty.block_size)
    for i in (1, 2, 3):
        if t.ne[i] != 1:
            if t.nb[i] != step:
                return False
            step *= t.ne[i]
    return True


def _rot_strided(g: _Graph, x: _T, rot: _T | None) -> _T:
    """:func:`_rot` of a tensor that may be strided: ``llama_mul_mat_hadamard`` copies it contiguous
    (``ggml_cont_2d``) instead of reshaping it (llama-impl.h:57-75)."""
    if rot is None or is_contiguous(x):
        return _rot(g, x, rot)
    n = rot.ne[0]
    r = g.new(f"{x.name} (cont)", "CONT", x.type, (n, math.prod(x.ne) // n), x)
    r = g.mul_mat(x.name, rot, r)
    return g.reshape(r, *x.ne)


def kv_cache_views(
    c: _Ctx,
    g: _Graph,
    q: _T,
    k: _T,
    v: _T,
    il: int,
    inp: _AttnInp,
    iswa: bool,
    fa: bool,
    strided: bool = False,
    v_rows: Callable[[_T], _T] | None = None,
) -> tuple[_T, _T, _T]:
    """The part of ``build_attn`` over the KV cache (llama-graph.cpp:2950-3060, :3195-3290) before the
    scores: the Hadamard rotations of a quantized cache; Q, K, V expanded (in that order over the iSWA
    cache's input, ``iswa``; else Q, V, K); layer ``il``'s cache tensors; K and V written into them
    (``cpy_k``/``cpy_v``, llama-kv-cache.cpp:1348-1440: ``SET_ROWS`` into views of the cache, into a
    transposed V cache as one-value rows); then ``build_attn_mha``'s operands (:2691-2720): Q permuted
    to (head, token, head index, stream), K and V read back from the cache, permuted
    (:func:`v_cache_view`; ``fa``: as flash attention reads them). Returns the three.

    ``strided``: Q, K or V may be strided views (:func:`attn_kv_strided`): rotated through a
    contiguous copy, and their rows viewed contiguous (without it, with the tensor's token stride
    ``nb[2]``, as ``cpy_k``/``cpy_v`` view them). ``v_rows``: V's rows (a column per token) into a
    transposed cache, before they are flattened; by default V reshaped."""
    hp, sp = c.hp, c.sp
    T, ns = c.n_tokens, sp.n_streams
    nh, nkv, hd, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_k, hp.head_v
    tk, tv = _type(sp.type_k), _type(sp.type_v)
    vt, n_kv = sp.v_transposed, inp.n_kv
    v_gqa = max(hp.n_head_kv) * hv
    rot = _rot_strided if strided else _rot
    q, k, v = rot(g, q, inp.k_rot), rot(g, k, inp.k_rot), rot(g, v, inp.v_rot)
    for t in (q, k, v) if iswa else (q, v, k):
        g.expand(t)
    buft = c.cache_buft[il]
    cache_k = g.leaf(f"cache_k_l{il}", tk.name, (hd * nkv, n_kv * ns), buft=buft)
    cache_v = g.leaf(f"cache_v_l{il}", tv.name, (v_gqa if vt else (hv * nkv), n_kv * ns), buft=buft)
    kv = g.view(k, (hd * nkv, T)) if strided else g.rows(k, hd * nkv, T)
    set_k = set_rows(g, merged_streams(g, cache_k, ns), kv, inp.k_idxs)
    g.expand(set_k)
    if not vt:
        vv = g.view(v, (hv * nkv, T)) if strided else g.rows(v, hv * nkv, T)
        set_v = set_rows(g, merged_streams(g, cache_v, ns), vv, inp.v_idxs)
    else:
        v2 = v_rows(v) if v_rows is not None else g.reshape(v, hv * nkv, T)
        vv = g.reshape(v2, 1, v2.ne[0] * T)
        set_v = set_rows(g, g.reshape(cache_v, 1, math.prod(cache_v.ne)), vv, inp.v_idxs)
    g.expand(set_v)
    qv = g.permute(g.view(q, (hd, nh, T // ns, ns), (q.nb[0], q.nb[1], q.nb[2], q.nb[2] * (T // ns))), 0, 2, 1, 3)
    krow = cache_k.nb[1]
    kview = g.view(cache_k, (hd, nkv, n_kv, ns), (cache_k.nb[0], krow // nkv, krow, krow * n_kv))
    kp = g.permute(kview, 0, 2, 1, 3)
    vp = v_cache_view(g, cache_v, il, nkv, hv, n_kv, ns, vt, v_gqa, fa)
    return qv, kp, vp


def _attn_kv_impl(c: _Ctx, g: _Graph, q: _T, k: _T, v: _T, il: int, inp: _AttnInp, iswa: bool, strided: bool) -> _T:
    hp, sp = c.hp, c.sp
    T, ns = c.n_tokens, sp.n_streams
    nh, nkv, hv = hp.n_head[il], hp.n_head_kv[il], hp.head_v
    fa = sp.flash_attn

    def v_rows(v: _T) -> _T:  # cpy_v's ggml_cont_2d of a V whose tokens are not rows of hv * nkv values
        if v.nb[2] != _type(v.type).type_size * hv * nkv:
            return g.new(f"{v.name} (cont)", "CONT", v.type, (hv * nkv, T), v)
        return g.reshape(v, hv * nkv, T)

    qv, kp, vp = kv_cache_views(c, g, q, k, v, il, inp, iswa, fa, strided, v_rows if strided else None)
    if fa:
        out = g.new(f"node_fa-{il}", "FLASH_ATTN_EXT", "F32", (hv, nh, T // ns, ns), qv, kp, vp, inp.mask)
        cur = g.reshape(out, hv * nh, T)
    else:
        cur = attn_no_flash(c, g, qv, kp, vp, inp.mask, il)
    g.expand(cur)  # build_attn_mha's expansion (llama-graph.cpp:2827), before the V rotation
    return _rot(g, cur, inp.v_rot) if inp.v_rot is not None else cur


def v_cache_view(
    g: _Graph, cache_v: _T, il: int, nkv: int, hv: int, n_kv: int, ns: int, vt: bool, v_gqa: int, fa: bool
) -> _T:
    """The V operand of ``build_attn_mha`` (llama-graph.cpp:2691-2820) from ``get_v``'s view of the
    cache (llama-kv-cache.cpp:1316-1342), permuted: as it is for flash attention (or transposed back,
    a view); without flash attention a transposed cache is read as it is, and an untransposed one
    (the cache -fa auto made for flash attention before turning it off) is copied transposed,
    ``ggml_cont(ggml_transpose(v))`` ("v_cont", :2801-2805), before the product. Not expanded: the
    product's first source, it joins the graph before the scores."""
    es = cache_v.nb[0]
    if vt:
        vview = g.view(cache_v, (n_kv, nkv, hv, ns), (es, es * n_kv * hv, es * n_kv, es * n_kv * v_gqa))
        vp = g.permute(vview, 0, 2, 1, 3)
        return g.permute(vp, 1, 0, 2, 3) if fa else vp  # (flash attention never has a transposed cache)
    vrow = cache_v.nb[1]
    vview = g.view(cache_v, (hv, nkv, n_kv, ns), (es, vrow // nkv, vrow, vrow * n_kv))
    vp = g.permute(vview, 0, 2, 1, 3)
    if fa:
        return vp
    vtr = g.permute(vp, 1, 0, 2, 3)  # ggml_transpose
    return g.new(f"v_cont-{il}", "CONT", cache_v.type, vtr.ne, vtr)


def _norm(c: _Ctx, g: _Graph, x: _T, weight: str, il: int, pin: bool = True) -> _T:
    """``build_norm`` with RMS: the norm (named "norm", which ``graph_get_cb`` pins to the layer's
    device when the call passes the layer) times its weight."""
    cur = g.op(f"norm-{il}", "RMS_NORM", x)
    if pin:
        cur.backend = c.pin[il]
    return g.op(f"normed-{il}", "MUL", cur, _w(c, weight, il))


def _qk_norm(c: _Ctx, g: _Graph, x: _T, weight: str, il: int) -> _T:
    """The RMS norm of each Q and K head (qwen3moe.cpp:104-116, gemma3.cpp:121-133)."""
    return x if c.hp.arch == "llama" else _norm(c, g, x, weight, il)


def _moe_ffn(
    c: _Ctx,
    g: _Graph,
    cur: _T,
    il: int,
    n_used: int | None = None,
    sigmoid: bool = False,
    probs_b: _T | None = None,
    shared_glu: _T | None = None,
) -> _T:
    """``build_moe_ffn`` with softmax (or ``sigmoid``) gating, an optional selection bias ``probs_b``
    (``exp_probs_b``: the experts are picked on the biased probabilities and weighted by the unbiased
    ones), normalized weights, separate gate and up experts (llama-graph.cpp:2044-2420), in its expansion
    order: the routing first (:func:`moe_select`), then the experts, then one view per used expert and
    the sum of those (:func:`moe_weighted_sum`). ``n_used``: the experts used per token (``c.moe`` by
    default); ``shared_glu``: a shared expert's GLU that CUDA moves right after the routed GLU (expanded
    there, ``ggml_cuda_match_shared_expert``, ggml-cuda.cu:1827-1876)."""
    if n_used is None:
        assert c.moe is not None
        n_used = c.moe
    T, E = cur.ne[1], cur.ne[0]
    logits = g.mul_mat(f"ffn_moe_logits-{il}", _w(c, f"blk.{il}.ffn_gate_inp.weight", il), cur)
    topk, w3 = moe_select(g, logits, il, n_used, sigmoid, probs_b)
    x = g.reshape(cur, E, 1, T)
    _, _, act, experts = moe_swiglu_experts(c, g, x, topk, il, n_used)
    if shared_glu is not None:
        g.expand(act)
        g.expand(shared_glu)
        g.fused.append(_Fusion([shared_glu], keep=[x, topk]))  # add_alloc_dep until the shared GLU
    return moe_weighted_sum(g, experts, w3, il, E, n_used)


def moe_select(
    g: _Graph, logits: _T, il: int, n_used: int, sigmoid: bool = False, probs_b: _T | None = None
) -> tuple[_T, _T]:
    """``build_moe_ffn``'s routing from the router's logits (llama-graph.cpp:2087-2208) with softmax (or
    sigmoid) gating, the optional selection bias, top-k and normalized weights, expanded early so that
    CUDA can fuse the top-k (:func:`topk_fusion`): the selected experts and their weights ``[1, n_used,
    n_tokens]``."""
    T = logits.ne[1]
    n_exp = logits.ne[0]
    if sigmoid:
        probs = g.op(f"ffn_moe_probs-{il}", "UNARY", logits)
    else:
        probs = g.op(f"ffn_moe_probs-{il}", "SOFT_MAX", logits)
    probs3 = g.reshape(probs, 1, n_exp, T)
    selection = probs if probs_b is None else g.op(f"ffn_moe_probs_biased-{il}", "ADD", probs, probs_b)
    argsort = g.new(f"ffn_moe_argsort-{il}", "ARGSORT", "I32", (n_exp, T), selection)
    topk = g.view(argsort, (n_used, T), argsort.nb[:2])
    weights = g.new(f"ffn_moe_weights-{il}", "GET_ROWS", "F32", (1, n_used, T), probs3, topk)
    norm = moe_weights_norm(g, weights, il)
    w3 = norm[-1]
    g.expand(w3)
    biased = [] if selection is probs else [selection]
    g.fused.extend(topk_fusion(n_exp, [probs, probs3, *biased, argsort, topk, weights, *norm]))
    return topk, w3


def topk_fusion(n_exp: int, members: list[_T]) -> list[_Fusion]:
    """The top-k routing group CUDA's ``graph_optimize`` keeps alive (ggml-cuda.cu:2875-3025: the gating,
    the optional selection bias, argsort, top-k, the weights, their normalization and scale, in that
    order; topk-moe.cu:403-412: expert counts it has a kernel for)."""
    if n_exp in (288, 576) or (n_exp & (n_exp - 1) == 0 and n_exp <= 512):
        return [_Fusion(members)]
    return []


def moe_weights_norm(g: _Graph, weights: _T, il: int) -> list[_T]:
    """``build_moe_ffn``'s ``norm_w`` (llama-graph.cpp:2185-2199): the weights ``[1, n_used, n_tokens]`` of
    each token divided by their sum (clamped away from zero). The nodes it makes, in order, the normalized
    weights ``[1, n_used, n_tokens]`` last."""
    n_used, T = weights.ne[1], weights.ne[2]
    w2 = g.reshape(weights, n_used, T)
    wsum = g.new(f"ffn_moe_weights_sum-{il}", "SUM_ROWS", "F32", (1, T), w2)
    clamped = g.op(f"ffn_moe_weights_sum_clamped-{il}", "CLAMP", wsum)
    wnorm = g.op(f"ffn_moe_weights_norm-{il}", "DIV", w2, clamped)
    return [w2, wsum, clamped, wnorm, g.reshape(wnorm, 1, n_used, T)]


def moe_swiglu_experts(
    c: _Ctx, g: _Graph, x: _T, ids: _T, il: int, n_used: int, part: str = "_exps"
) -> tuple[_T, _T, _T, _T]:
    """``build_moe_ffn``'s experts with separate gate and up weights and SiLU (llama-graph.cpp:2240-2360):
    ``ffn_up{part}`` and ``ffn_gate{part}`` of the selected experts ``ids`` of ``x`` (``[n_embd, 1,
    n_tokens]``), their ``swiglu_split``, ``ffn_down{part}``: the up, gate, GLU and down nodes."""
    T = x.ne[2]
    p = f"blk.{il}."
    up_w, gate_w, down_w = (_w(c, p + f"ffn_{r}{part}.weight", il) for r in ("up", "gate", "down"))
    up = g.new(f"ffn_moe_up-{il}", "MUL_MAT_ID", "F32", (up_w.ne[1], n_used, T), up_w, x, ids)
    gate = g.new(f"ffn_moe_gate-{il}", "MUL_MAT_ID", "F32", (gate_w.ne[1], n_used, T), gate_w, x, ids)
    act = g.new(f"ffn_moe_swiglu-{il}", "GLU", "F32", gate.ne, gate, up)
    down = g.new(f"ffn_moe_down-{il}", "MUL_MAT_ID", "F32", (down_w.ne[1], n_used, T), down_w, act, ids)
    return up, gate, act, down


def moe_weighted_sum(g: _Graph, experts: _T, weights: _T | None, il: int, n_embd: int, n_used: int) -> _T:
    """``build_moe_ffn``'s tail (llama-graph.cpp:2366-2409): the experts' output ``[n, n_used, n_tokens]``
    times their ``weights`` (None: llama4's ``weight_before_ffn``, weighted before the experts), expanded;
    one ``[n_embd, n_tokens]`` view per used expert, each expanded, then their sum, each ADD expanded (a
    CONT of the one view when one expert is used). With more than one and at most
    ``MOE_WEIGHTED_REDUCTION_MAX_EXPERTS``, CUDA's ``graph_optimize`` fuses the product, the views and the
    adds (``ggml_cuda_match_moe_weighted_reduction``, ggml-cuda.cu:3096-3175), keeping the experts and
    the weights alive until the group's last node."""
    T = experts.ne[2]
    weighted = experts if weights is None else g.op(f"ffn_moe_weighted-{il}", "MUL", experts, weights)
    g.expand(weighted)
    views = [g.rows(weighted, n_embd, T) for _ in range(n_used)]
    for v in views:
        g.expand(v)
    out = views[0]
    adds = []
    for v in views[1:]:
        out = g.op(f"ffn_moe_out-{il}", "ADD", out, v)
        g.expand(out)
        adds.append(out)
    if n_used == 1:
        out = g.new(f"ffn_moe_out-{il}", "CONT", "F32", (n_embd, T), out)
    elif n_used <= _MOE_REDUCTION_MAX and weights is not None:
        g.fused.append(_Fusion([weighted, *views, *adds], keep=[experts, weights]))
    return out


def _w(c: _Ctx, name: str, il: int) -> _T:
    """A weight the graph needs; llama.cpp refuses to load a model without it (``create_tensor``)."""
    t = _weight(c, name, il)
    if t is None:
        raise ValidationError(c.path, None, f"tensor {name} is missing (llama.cpp refuses to load the model)")
    return t


def _proj(c: _Ctx, g: _Graph, name: str, prefix: str, x: _T, il: int) -> _T:
    """``build_lora_mm`` plus the optional bias (llama-graph.cpp)."""
    cur = g.mul_mat(name, _w(c, prefix + ".weight", il), x)
    b = _weight(c, prefix + ".bias", il)
    return g.op(name, "ADD", cur, b) if b is not None else cur


def kqv_on_host(c: _Ctx, cur: _T) -> _T:
    """``build_attn_mha`` without flash attention (llama-graph.cpp:2821-2824): with ``-nkvo``
    (``offload_kqv`` off) the attention's output (the ``ggml_cont_2d`` of the heads) is set to the CPU
    backend, so the scheduler's GPU expansion stops at it and the scores, softmax and product over
    the host cache run on the host too (they follow the host cache's writes). Flash attention's
    output is left to the scheduler."""
    if c.sp.no_kv_offload:
        cur.backend = c.host
    return cur


def attn_no_flash(
    c: _Ctx,
    g: _Graph,
    q: _T,
    k: _T,
    v: _T,
    mask: _T,
    il: int,
    kq_b: _T | None = None,
    softcap: bool = False,
    v_cont: bool = False,
) -> _T:
    """``build_attn_mha``'s path without flash attention (llama-graph.cpp:2763-2824) over the permuted Q, K and V:
    the scores ``kq`` (K times Q), the logit soft-capping with ``softcap`` (scale, tanh, scale), the position bias
    ``kq_b`` added, the softmax with the mask (``ggml_soft_max_ext``: its scale and ALiBi fused), V made contiguous
    transposed with ``v_cont`` (a V that is not the transposed cache's: ``v_cont``, made here, after the softmax;
    :func:`v_cache_view` makes the cache's), the product ``kqv``, and the heads made contiguous
    (``ggml_cont_2d`` of its permutation: :func:`kqv_on_host`'s node). Not expanded: the caller expands it."""
    kq = g.new(f"kq-{il}", "MUL_MAT", "F32", (k.ne[1], q.ne[1], q.ne[2], q.ne[3]), k, q)
    if softcap:
        kq = g.op(f"kq_scaled_1-{il}", "SCALE", kq)
        kq = g.op(f"kq_tanh-{il}", "UNARY", kq)
        kq = g.op(f"kq_scaled_2-{il}", "SCALE", kq)
    if kq_b is not None:
        kq = g.op(f"kq_plus_kq_b-{il}", "ADD", kq, kq_b)
    kq = g.op(f"kq_soft_max-{il}", "SOFT_MAX", kq, mask)
    if v_cont:
        vtr = g.permute(v, 1, 0, 2, 3)  # ggml_transpose
        v = g.new(f"v_cont-{il}", "CONT", v.type, vtr.ne, vtr)
    kqv = g.new(f"kqv-{il}", "MUL_MAT", "F32", (v.ne[1], kq.ne[1], kq.ne[2], kq.ne[3]), v, kq)
    heads = g.permute(kqv, 0, 2, 1, 3)
    return kqv_on_host(
        c, g.new(f"kqv_out-{il}", "CONT", "F32", (heads.ne[0] * heads.ne[1], heads.ne[2] * heads.ne[3]), heads)
    )


def classifier_pooling(model: GGUFModel) -> str:
    """``hparams.pooling_type_cls`` (``{arch}.classifier.pooling_type``, llama-model.cpp:1328): how rank pooling
    gathers the rows before its head (mean, else the cls rows); modern-bert without the key means mean
    (modern-bert.cpp:26-29)."""
    arch = model.architecture
    key = model.metadata.get_int(f"{arch}.classifier.pooling_type")
    if key is None:
        return "mean" if arch == "modern-bert" else "none"
    return POOLING_TYPES[key] if 0 <= key < len(POOLING_TYPES) else "none"


def build_pooling(c: _Ctx, g: _Graph, t_embd: _T) -> _T:
    """``llm_graph_context::build_pooling`` (llama-graph.cpp:3797-3895) and ``build_dense_out`` (:3772-3794), which
    ``llama_model::build_graph`` adds after the model's own graph in an embedding run (``c.sp.pooling`` set):

    * none: the embeddings ``t_embd`` themselves;
    * mean: ``t_embd`` transposed and made contiguous (``[n_outputs, n_embd]``) times the ``mean`` input
      ``[n_tokens, n_seqs]`` (``build_inp_mean``; the reserve's ``n_seqs_unq`` is its ``n_seq_max``);
    * cls, last: the rows of the ``cls`` input ``[n_seqs]`` (I32, ``build_inp_cls``);
    * rank: mean or cls rows (``classifier.pooling_type``), then the classification head where the file has it
      (``cls`` + bias, tanh or modern-bert's GELU, ``cls.norm``; ``cls.output`` + bias), Qwen3's softmax;

    then the sentence-transformers dense projections (``dense_2`` + bias, ``dense_3``) where the file has them.
    The nodes are expanded after the model's (the caller expanded its outputs first); returns the last."""
    pooling, il = c.sp.pooling, c.hp.n_layer
    if pooling is None:
        return t_embd
    n_out, E = t_embd.ne[1], t_embd.ne[0]
    n_seqs = c.sp.n_seq_max
    cur = t_embd
    if pooling != "none":
        how = classifier_pooling(model_of(c)) if pooling == "rank" else pooling
        if how == "mean":
            tr = g.permute(t_embd, 1, 0, 2, 3)  # ggml_transpose: a view
            cont = g.new(f"{t_embd.name} (transposed) (cont)", "CONT", "F32", (n_out, E), tr)
            cur = g.mul_mat("result_embd_pooled", cont, g.input("mean", "F32", c.n_tokens, n_seqs))
        else:
            cur = g.new("result_embd_pooled", "GET_ROWS", "F32", (E, n_seqs), t_embd, g.input("cls", "I32", n_seqs))
        if pooling == "rank":
            cur = _cls_head(c, g, cur, il)
    g.expand(cur)
    dense = [_weight(c, n, il) for n in ("dense_2.weight", "dense_2.bias", "dense_3.weight")]
    if any(t is not None for t in dense):
        if dense[0] is not None:
            cur = g.mul_mat("result_embd_pooled", dense[0], cur)
        if dense[1] is not None:
            cur = g.op("result_embd_pooled", "ADD", cur, dense[1])
        if dense[2] is not None:
            cur = g.mul_mat("result_embd_pooled", dense[2], cur)
        g.expand(cur)
    return cur


def _cls_head(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """Rank pooling's classification head (llama-graph.cpp:3851-3883)."""
    cls = _weight(c, "cls.weight", il)
    if cls is not None:
        cur = g.mul_mat("result_embd_pooled", cls, cur)
        b = _weight(c, "cls.bias", il)
        if b is not None:
            cur = g.op("result_embd_pooled", "ADD", cur, b)
        cur = g.op("result_embd_pooled", "UNARY", cur)  # ggml_tanh, or modern-bert's ggml_gelu
        norm = _weight(c, "cls.norm.weight", il)
        if norm is not None:  # build_norm(LLM_NORM) without a bias
            cur = g.op("result_embd_pooled", "MUL", g.op("norm", "NORM", cur), norm)
    out = _weight(c, "cls.output.weight", il)
    if out is not None:
        cur = g.mul_mat("result_embd_pooled", out, cur)
        b = _weight(c, "cls.output.bias", il)
        if b is not None:
            cur = g.op("result_embd_pooled", "ADD", cur, b)
    if c.hp.arch in ("qwen3", "qwen3vl"):
        cur = g.op("result_embd_pooled", "SOFT_MAX", cur)
    return cur


def with_pooling(c: _Ctx, g: _Graph, out: _T, t_embd: _T) -> _T:
    """A builder's result in an embedding run: its outputs ``out`` expanded, then :func:`build_pooling` over its
    embeddings ``t_embd`` (``res->t_embd``: the encoders' last tensor, a decoder's ``result_norm``). Without
    embeddings ``out`` as it is."""
    if c.sp.pooling is None:
        return out
    g.expand(out)
    return build_pooling(c, g, t_embd)
