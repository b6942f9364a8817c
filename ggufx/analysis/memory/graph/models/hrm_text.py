"""``hrm_text`` (src/models/hrm-text.cpp, HRM-Text / DFM-Mimir): a low and a high stack of
``hrm.layers_per_stack`` layers run as ``h_cycles x (l_cycles + 1)`` stack passes over the same tokens: per
cycle ``l_cycles`` low passes ``zL = L(zH + zL)``, then a high pass ``zH = H(zH + zL)`` (zL starts as the
learned ``hrm.z_l_init`` row, broadcast; zH as the embeddings, scaled by ``embedding_scale`` when set).
``block_count`` is the slot count: each pass's layers have KV cache slots of their own (slot ``s`` =
``pass x layers_per_stack + il``) but read the weights of block ``il`` (low) or ``layers_per_stack + il``
(high), the only blocks in the file (load_arch_tensors aliases the rest). A layer: weightless RMS norms, the
sigmoid gate of the attention output (``attn_gate``, :func:`.muse_glimmer.gated_attention` without Q/K norms),
RoPE, a SwiGLU FFN; each pass ends in a weightless RMS norm (pinned to its first slot). No output norm: the
rows are picked from the last zH and projected by ``output`` (or the tied embeddings)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _w, model_of
from ggufx.analysis.memory.graph.models._dense import Dense, _ffn, tied_head
from ggufx.analysis.memory.graph.models._plain import norm
from ggufx.analysis.memory.graph.models.muse_glimmer import gated_attention
from ggufx.model import GGUFModel

_D = Dense()
_KEYS = ("hrm.layers_per_stack", "hrm.h_cycles", "hrm.l_cycles")


def _loop(model: GGUFModel) -> tuple[int, int, int] | str:
    """(layers_per_stack, h_cycles, l_cycles), or why the file does not have them as hrm-text.cpp requires
    (each above 0, block_count their slot count)."""
    arch = model.architecture or ""
    md = model.metadata
    vals = [md.get_int(f"{arch}.{k}") for k in _KEYS]
    for k, v in zip(_KEYS, vals, strict=True):
        if v is None or v <= 0:
            return f"the graph needs {arch}.{k} above 0"
    lps, h_cycles, l_cycles = (int(v) for v in vals if v is not None)
    n_slot = lps * h_cycles * (l_cycles + 1)
    if (md.get_int(f"{arch}.block_count") or 0) != n_slot:
        return f"the graph needs {arch}.block_count = layers_per_stack x h_cycles x (l_cycles + 1) = {n_slot}"
    return lps, h_cycles, l_cycles


def _where(c: _Ctx) -> tuple[int, int]:
    """layers_per_stack and l_cycles of the built model."""
    loop = _loop(model_of(c))
    assert not isinstance(loop, str), loop
    return loop[0], loop[2]


def slot(lps: int, l_cycles: int, s: int) -> tuple[int, int, int, int]:
    """Slot ``s``'s (h cycle, pass in the cycle (l_cycles: the high pass), layer in the stack, file block)."""
    p, il = divmod(s, lps)
    h, lp = divmod(p, l_cycles + 1)
    return h, lp, il, (lps if lp == l_cycles else 0) + il


def graph_kinds(c: _Ctx) -> list[object]:
    """Each slot's kind, for graphsim's layer signatures (which see a slot's cache, pin and heads, and
    ``blk.<slot>``'s weights: not the block's whose weights the slot reads): whether it is its pass's
    first layer (the ``zH + zL`` before it, read from earlier passes) or its last (the stack norm, pinned
    to the pass's first slot: that pin), which of zH and zL its pass makes, and the block it reads: the
    buffer type of that block's layer (which copy of a weight it takes) and the buffer type, type and
    shape of each of its weights. Slots of one kind make identical nodes: the middle layers of a pass
    are one run the replay shortens."""
    lps, l_cycles = _where(c)
    blocks: dict[int, object] = {}
    kinds: list[object] = []
    for s in range(c.hp.n_layer):
        _, lp, il, bid = slot(lps, l_cycles, s)
        if bid not in blocks:
            p = f"blk.{bid}."
            weights = sorted(
                (name[len(p) :], tuple((b, t.type, t.ne) for b, t in copies))
                for name, copies in c.by_name.items()
                if name.startswith(p)
            )
            blocks[bid] = (c.layer_buft[bid], tuple(weights))
        last = il == lps - 1
        kinds.append((il == 0, last, lp == l_cycles, blocks[bid], c.pin[s - il] if last else None))
    return kinds


def build(c: _Ctx, g: _Graph) -> _T:
    """hrm-text.cpp ``graph::graph`` and ``build_stack``, slot by slot (the slots' kinds: :func:`graph_kinds`)."""
    lps, l_cycles = _where(c)
    T, n_out = c.n_tokens, c.n_outputs
    z_h = _inp_embd(c, g)
    scale = model_of(c).metadata.get(f"{c.hp.arch}.embedding_scale")
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale != 0:  # build_inp_embd's SCALE
        z_h = g.op("inp_scaled", "SCALE", z_h)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, c.sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    z_l = _w(c, "hrm.z_l_init", -1)
    cur = z_h
    for pos, s in enumerate(c.layers):
        g.at(pos)
        _, lp, il, bid = slot(lps, l_cycles, s)
        if il == 0:
            cur = g.op(f"stack_in-{s}", "ADD", z_h, z_l)
        inp_sa = cur
        cur = norm(c, g, cur, "", s, _D)
        cur = gated_attention(c, g, cur, s, inp, True, qk_norm=False, block=bid)
        cur = g.op(f"attn_add-{s}", "ADD", cur, inp_sa)
        inp_sa = cur
        cur = _ffn(c, g, norm(c, g, cur, "", s, _D), bid, _D)  # block bid's weights
        cur = g.op(f"ffn_add-{s}", "ADD", cur, inp_sa)
        if il == lps - 1:
            cur = norm(c, g, cur, "", s - il, _D)  # stack_norm, pinned to the pass's first slot
            if lp == l_cycles:
                z_h = cur
            else:
                z_l = cur
    g.at(GLOBAL)
    cur = g.new("result_norm", "GET_ROWS", "F32", (c.hp.n_embd, n_out), z_h, out_ids)
    cur.flags |= OUTPUT
    out_w = tied_head(c)
    logits = g.mul_mat("result_output", out_w, cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """The loop keys and the tensors hrm-text.cpp's loader requires: the embeddings, ``hrm.z_l_init``, and per
    file block (2 x layers_per_stack) Q/K/V (or the fused projection), the gate, the output projection, the FFN."""
    loop = _loop(model)
    if isinstance(loop, str):
        return loop
    names = {t.name for t in model.tensors}
    for top in ("token_embd.weight", "hrm.z_l_init"):
        if top not in names:
            return f"the graph needs tensor {top}, which the file lacks"
    for bid in range(2 * loop[0]):
        p = f"blk.{bid}."
        qkv = ["attn_qkv"] if p + "attn_qkv.weight" in names else ["attn_q", "attn_k", "attn_v"]
        for role in (*qkv, "attn_gate", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            if p + role + ".weight" not in names:
                return f"the graph needs tensor {p}{role}.weight, which the file lacks"
    return None
