"""``dots3note`` (src/models/dots3note.cpp): dots3-note. DeepSeek-V3.2's graph (:mod:`.deepseek32`: absorbed
multi-head latent attention with q_lora, the lightning indexer's top-k cells on the full layers) over
``llama_kv_cache_dsa_iswa``: the full layers (``attention.indexer.types``) attend sparsely over the DSA cache,
the sliding-window layers (``attention.sliding_window_pattern``) densely over a window cache of their own, in a
geometry of their own (``kv_lora_rank_swa``, ``key_length_mla_swa``, their head count); the rope key is RMS-normed
before its RoPE (``attn_k_norm``), and each head's output is gated by a sigmoid of ``attn_gate`` before the
output projection. The FFN (leading dense layers, sigmoid-routed experts plus a shared expert) is deepseek2's;
the NextN/MTP block is left out as llama.cpp leaves it."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph, _type
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _norm, _w
from ggufx.analysis.memory.graph.models.deepseek2 import (
    SIGMOID,
    cache_write,
    layer_tail,
    mha,
    moe_params,
    output_head,
)
from ggufx.analysis.memory.graph.models.deepseek2 import unbuildable as _deepseek2_unbuildable
from ggufx.analysis.memory.graph.models.deepseek32 import _Dsa, _indexer, _sparse_mask, _top_k, mla_qkv
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel


class _DsaIswa(_Dsa):
    """``llm_graph_input_attn_k_dsa_iswa`` (llama-graph.cpp:3451-3467): the DSA cache's inputs, then the window
    cache's rows and mask (no Hadamard matrix: its K-only input is built directly)."""

    def __init__(self, c: _Ctx, g: _Graph) -> None:
        super().__init__(c, g)
        sp, T, ns = c.sp, c.n_tokens, c.sp.n_streams
        self.k_idxs_swa = g.input("attn_inp_k_idxs", "I64", T)
        self.mask_swa = g.input("attn_inp_kq_mask", "F16" if sp.flash_attn else "F32", c.n_kv_swa, T // ns, 1, ns)


def _cache_k(c: _Ctx, g: _Graph, il: int, width: int, n_kv: int) -> tuple[_T, _T]:
    """One layer's K-only cache tensor (``n_kv`` cells per stream: the DSA cache's or the window's) and
    ``get_k``'s view of it: [width, 1 head, cells, streams]."""
    ns = c.sp.n_streams
    cache = g.leaf(f"cache_k_l{il}", _type(c.sp.type_k).name, (width, n_kv * ns), buft=c.cache_buft[il])
    row = cache.nb[1]
    return cache, g.view(cache, (width, 1, n_kv, ns), (cache.nb[0], row, row, row * n_kv))


def _attn(c: _Ctx, g: _Graph, x: _T, qr: _T, il: int, inp: _DsaIswa, top_k: _T | None) -> _T:
    """The attention of one layer (dots3note.cpp:214-400): Q from the compressed ``qr``, the compressed KV and the
    rope key (RMS-normed, then roped), the absorbed MLA over the window cache (a sliding layer) or over the DSA
    cache's ``top_k`` cells (a full layer), the head-wise sigmoid gate, the output projection."""
    T = c.n_tokens
    nh = c.hp.n_head[il]
    p = f"blk.{il}."
    qcur, kcur, rank, n_rot = mla_qkv(c, g, x, qr, il, k_pe_norm=True)
    width = rank + n_rot
    if top_k is None:  # a sliding layer: build_attn of the window cache's K-only input
        cache, k = _cache_k(c, g, il, width, c.n_kv_swa)
        g.expand(cache_write(c, g, cache, kcur, width, inp.k_idxs_swa))
        mask = inp.mask_swa
    else:
        cache, k = _cache_k(c, g, il, width, c.sp.n_kv)
        g.expand(cache_write(c, g, cache, kcur, width, inp.k_idxs))
        mask = _sparse_mask(c, g, inp, top_k, il)
    cur = mha(c, g, qcur, k, mask, il, rank)
    gate = g.mul_mat(f"attn_gate-{il}", _w(c, p + "attn_gate.weight", il), x)
    gate = g.op(f"attn_gate_sigmoid-{il}", "UNARY", gate)
    hv = cur.ne[0] // nh  # n_embd_head_v_mla(_swa)
    gated = g.op(f"attn_gated-{il}", "MUL", g.reshape(cur, hv, nh, T), g.reshape(gate, 1, nh, T))
    return g.mul_mat(f"attn_output-{il}", _w(c, p + "attn_output.weight", il), g.reshape(gated, hv * nh, T))


def build(c: _Ctx, g: _Graph) -> _T:
    """The transformer of ``dots3note`` (``graph::graph`` of dots3note.cpp): the trunk's layers (NextN left out),
    each full layer with its indexer and sparse attention, each sliding layer with dense attention over the
    window, then deepseek2's FFN tail (a dense FFN in the leading layers, sigmoid experts plus the shared one)."""
    hp = c.hp
    mp = moe_params(c)
    gating = mp.gating or SIGMOID
    T, n_out = c.n_tokens, c.n_outputs
    last = hp.n_layer_main - 1
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _DsaIswa(c, g)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        if il > last:  # the NextN/MTP block: not part of the decoder graph
            continue
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        qr = g.mul_mat(f"qr-{il}", _w(c, f"blk.{il}.attn_q_a.weight", il), cur)
        qr = _norm(c, g, qr, f"blk.{il}.attn_q_a_norm.weight", il)
        sliding = c.swa[il] if il < len(c.swa) else False
        top_k = None if sliding else _indexer(c, g, cur, qr, il, inp, _top_k(c))
        cur = _attn(c, g, cur, qr, il, inp, top_k)
        x = layer_tail(c, g, cur, inp_sa, il, il == last, out_ids, mp, gating)
    return output_head(c, g, x)


def unbuildable(model: GGUFModel) -> str | None:
    """Why the dots3note graph cannot be built from this file (None when it can): deepseek2's conditions
    (absorbed MLA, every trunk layer's tensors, experts split into gate and up), Q through ``q_lora``, the
    indexer's keys, an indexer key length the Hadamard matrix covers, the indexer on exactly the full layers
    (dots3note.cpp runs it on every layer that is not sliding and reads its tensors only where
    ``indexer.types`` says so), the rope key's norm and the output gate in every trunk layer."""
    why = _deepseek2_unbuildable(model)
    if why is not None:
        return why.replace("deepseek2", "dots3note")
    arch = model.architecture or ""
    md = model.metadata
    for key in ("attention.indexer.head_count", "attention.indexer.key_length", "attention.indexer.top_k"):
        if not md.get_int(f"{arch}.{key}"):
            return f"the graph needs {arch}.{key}, which the file lacks"
    hp = hparams(model)
    n = 64
    while hp.indexer_k % (2 * n) == 0:
        n *= 2
    if n != hp.indexer_k:
        return f"an indexer key length of {hp.indexer_k} is not a power of two from 64 (llama.cpp's Hadamard matrix)"
    from ggufx.analysis.layers import layer_kinds

    kinds = layer_kinds(model)
    names = {t.name for t in model.tensors}
    for il in range(min(hp.n_layer_main, 513)):
        sliding = il < len(kinds) and kinds[il].is_swa
        if not sliding and il not in hp.indexer_layers:
            return f"layer {il} is neither sliding nor an indexer layer (llama.cpp reads no indexer tensors for it)"
        need = ["attn_q_a", "attn_q_a_norm", "attn_q_b", "attn_k_norm", "attn_gate"]
        if not sliding:
            need += ["indexer.attn_q_b", "indexer.attn_k", "indexer.k_norm", "indexer.proj"]
        for role in need:
            if f"blk.{il}.{role}.weight" not in names:
                return f"the graph needs tensor blk.{il}.{role}.weight, which the file lacks"
        if not sliding and f"blk.{il}.indexer.k_norm.bias" not in names:
            return f"the graph needs tensor blk.{il}.indexer.k_norm.bias, which the file lacks"
    return None


__all__ = ["build", "unbuildable"]
