"""``graniteswitch`` (src/models/granite-switch.cpp): Granite with per-token switched LoRA adapters.

The tokens are embedded through their adapter substitutes (``GET_ROWS`` of the ``sub_tokens`` input, no
``build_inp_embd``: none of its mixed-input branches), times ``embedding_scale``. A one-head router attention
layer at index ``block_count`` (its own KV cache layer, no RoPE, ``kq_scale`` 1) attends over three input
lanes (Q, K, V: one value per token, ``PAD``-ded to the head size); its output's first row, made contiguous,
clamped to [0, adapters.count], rounded and cast to I32 (``CLAMP``, ``UNARY`` round, ``CPY``), picks each
token's adapter slot. Every layer then runs Granite's attention from the fused ``attn_qkv`` (each of Q, K, V a
``CONT`` of its slice) and Granite's scaled residuals with a SiLU-times-up FFN, each projection (Q, K, V, O,
gate, up, down) plus its switched delta ``B_a (A_a x)``: two ``MUL_MAT_ID`` over the stacked ``lora_a`` /
``lora_b`` with one id per token."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _attn_kv, _Ctx, _norm, _w, model_of
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._dense import _attn_kv as padded_attn_kv
from ggufx.analysis.memory.graph.models.granite import read_params, scaled_output
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

__all__ = ["build", "unbuildable"]

_ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def unbuildable(model: GGUFModel) -> str | None:
    """Why this file's graph cannot be built (None when it can): every tensor granite-switch.cpp's
    ``load_arch_tensors`` requires, the stacked adapters three-dimensional with adapters.count + 1 slots of
    adapters.lora_rank, and Q, K and V of one head size (the graph asserts it)."""
    md, arch = model.metadata, model.architecture or ""
    hp = hparams(model)
    n_adapters = md.get_int(f"{arch}.adapters.count")
    rank = md.get_int(f"{arch}.adapters.lora_rank")
    if n_adapters is None or rank is None:
        return "the graph needs graniteswitch.adapters.count and graniteswitch.adapters.lora_rank"
    if hp.head_k != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length"
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    needed = ["token_embd.weight", "output_norm.weight"]
    for il in range(hp.n_layer):
        b = f"blk.{il}."
        needed += [b + n + ".weight" for n in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm")]
        needed += [b + n + ".weight" for n in ("ffn_gate", "ffn_down", "ffn_up")]
        needed += [b + r + s for r in _ROLES for s in (".lora_a", ".lora_b")]
    missing = next((n for n in needed if n not in tensors), None)
    if missing:
        return f"the graph needs tensor {missing}, which the file lacks"
    for name in needed:
        if name.endswith(".lora_a") and (len(tensors[name]) != 3 or tensors[name][1:] != (rank, n_adapters + 1)):
            return f"the graph needs tensor {name} of {rank} x {n_adapters + 1} adapters"
    return None


def _delta(g: _Graph, name: str, a: _T, b: _T, x: _T, ids: _T) -> _T:
    """``build_switched_lora_delta``: ``B_a (A_a x)`` with each token's adapter slot."""
    n_in, T = x.ne[0], x.ne[1]
    x3 = g.reshape(x, n_in, 1, T)
    ids2 = g.reshape(ids, 1, T)
    lo = g.new(name, "MUL_MAT_ID", "F32", (a.ne[1], 1, T), a, x3, ids2)
    d = g.new(name, "MUL_MAT_ID", "F32", (b.ne[1], 1, T), b, lo, ids2)
    return g.reshape(d, d.ne[0], T)


def _lora(c: _Ctx, role: str, il: int) -> tuple[_T, _T]:
    p = f"blk.{il}.{role}"
    return _w(c, p + ".lora_a", il), _w(c, p + ".lora_b", il)


def _lora_mm(c: _Ctx, g: _Graph, name: str, role: str, x: _T, ids: _T, il: int) -> _T:
    """``build_switched_lora_mm``: the base projection plus the switched delta."""
    base = g.mul_mat(name, _w(c, f"blk.{il}.{role}.weight", il), x)
    return g.op(name, "ADD", base, _delta(g, name, *_lora(c, role, il), x, ids))


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph of granite-switch.cpp."""
    hp, sp, T = c.hp, c.sp, c.n_tokens
    n_out, E, hd = c.n_outputs, hp.n_embd, hp.head_k
    model = model_of(c)
    gp = read_params(model)
    R = hp.router_layer
    sub = g.input("sub_tokens", "I32", T)
    lanes = [g.input(n, "F32", T) for n in ("router_ksig", "router_vval", "router_q")]
    x = g.new("inp_embd", "GET_ROWS", "F32", (E, T), _w(c, "token_embd.weight", -1), sub)
    if gp.embedding_scale:
        x = g.op("inp_embd", "SCALE", x)
    if gp.rope:
        c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    k_r, v_r, q_r = (g.new("router", "PAD", "F32", (hd, 1, T), g.reshape(s, 1, 1, T)) for s in lanes)
    # into a transposed V cache (flash attention off) cpy_v pads the router's one head to the widest layer's
    # n_embd_v_gqa ([TAG_V_CACHE_VARIABLE]): a PAD node before its SET_ROWS
    router = padded_attn_kv(c, g, q_r, k_r, v_r, R, inp, False, Dense())
    slot = g.new("router_out (cont)", "CONT", "F32", (1, T), g.view(router, (1, T), router.nb))
    slot = g.op("router_out", "CLAMP", g.reshape(slot, T))
    slot = g.op("router_out", "UNARY", slot)  # ggml_round
    ids = g.new("adapter_ids", "CPY", "I32", (T,), slot)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        nh, nkv = hp.n_head[il], hp.n_head_kv[il]
        qkv = g.mul_mat(f"wqkv-{il}", _w(c, f"blk.{il}.attn_qkv.weight", il), cur)
        parts = []
        for width in (hd * nh, hd * nkv, hd * nkv):  # the Q, K and V slices (views), each copied contiguous
            view = g.view(qkv, (width, T), (4, qkv.nb[1]))
            parts.append(g.new(f"qkv-{il} (cont)", "CONT", "F32", (width, T), view))
        heads = []
        for part, role, n in zip(parts, ("attn_q", "attn_k", "attn_v"), (nh, nkv, nkv), strict=True):
            t = g.op(f"{role}-{il}", "ADD", part, _delta(g, f"{role}-{il}", *_lora(c, role, il), cur, ids))
            t = g.reshape(t, hd, n, T)
            heads.append(t)
        q, k, v = heads
        if c.pos is not None:  # rope.scaling.finetuned (has_rope)
            q = g.new(q.name, "ROPE", "F32", q.ne, q, c.pos)
            k = g.new(k.name, "ROPE", "F32", k.ne, k, c.pos)
        attn = _attn_kv(c, g, q, k, v, il, inp, False)
        cur = _lora_mm(c, g, f"attn_out-{il}", "attn_output", attn, ids, il)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
            rows = g.new("adapter_ids", "GET_ROWS", "I32", (1, n_out), g.reshape(ids, 1, T), out_ids)
            ids = g.reshape(rows, n_out)
        if gp.residual_scale:
            cur = g.op(cur.name, "SCALE", cur)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _norm(c, g, ffn_inp, f"blk.{il}.ffn_norm.weight", il)
        gate = _lora_mm(c, g, f"ffn_gate-{il}", "ffn_gate", cur, ids, il)
        up = _lora_mm(c, g, f"ffn_up-{il}", "ffn_up", cur, ids, il)
        gate = g.op(f"ffn_silu-{il}", "UNARY", gate)
        cur = _lora_mm(c, g, f"ffn_out-{il}", "ffn_down", g.op(f"ffn_gu-{il}", "MUL", gate, up), ids, il)
        if gp.residual_scale:
            cur = g.op(cur.name, "SCALE", cur)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return scaled_output(c, g, x)
