"""``gemma4-assistant`` (src/models/gemma4-assistant.cpp): Gemma 4's speculative-decoding drafter, run by
``llama-server -md assistant.gguf --spec-type draft-mtp`` in a context of its own whose ``ctx_other`` is the
target's (common/speculative.cpp: the draft context gets the target's ``n_ctx``). Every layer is a NextN layer
(``block_count = nextn_predict_layers``) that computes Q only and attends the *target's* cache: its sliding-window
layers the cache of the target's layer ``n_layer - 2``, its full layers that of ``n_layer - 1`` (llama-model.cpp
create_memory's ``share``: the draft's KV cache makes no tensor of its own, its cells follow the target's).

The graph: the target's token rows (``ggml_get_rows`` of the target's ``token_embd``, ``embedding_length_out``
wide) scaled by ``sqrt(n_embd_backbone)`` and concatenated with the target's hidden state (the ``inp_h`` input),
``nextn.pre_projection`` down to the drafter's width; per layer the RMS-normed Q (its head norm, RoPE with the
frequency factors on full layers), ``build_attn`` over the shared cache (no cache writes), the post-attention
norm and residual, a GEGLU FFN between RMS norms (the post norm unpinned), the residual and ``layer_output_scale``;
the output rows picked in the last layer; the output norm, the logits over the tied embeddings and
``h_nextn`` (``nextn.post_projection``: the next hidden state), both outputs.

The cache views need the target's cache geometry; the drafter's own head sizes, KV heads and window pattern
describe the target's last layers (llama.cpp views the shared tensors with the drafter's hparams), so they are
read from the drafter's file: the full cache has the context's cells, the sliding-window cache the cells
``llama_kv_cache_iswa`` gives the drafter's window (llama.cpp overrides them to the target's, which are the same
where the two windows are). The target's ``token_embd`` is a weight of the target (on the host, as llama.cpp
loads the input layer): outside this context's buffers."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _rot, _w, model_of
from ggufx.analysis.memory.graph.models import _plain, gemma4
from ggufx.analysis.memory.hparams import pad
from ggufx.model import GGUFModel

ARCH = "gemma4-assistant"
LAYER = (
    "attn_norm", "attn_q", "attn_output", "attn_q_norm", "post_attention_norm", "layer_output_scale", "ffn_norm",
    "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm",
)  # fmt: skip


def _pattern(model: GGUFModel, n_layer: int) -> list[bool]:
    """``attention.sliding_window_pattern`` (read with ``get_arr`` into ``is_swa_impl``: required)."""
    v = model.metadata.get(f"{ARCH}.attention.sliding_window_pattern")
    return [bool(x) for x in v][:n_layer] if v is not None else [False] * n_layer


def _n_kv_swa(c: _Ctx) -> int:
    """The sliding-window cache's cells (llama-kv-cache-iswa.cpp:73): ``n_swa`` per sequence of a stream plus a
    micro-batch, padded to 256, at most the context; the context's with ``--swa-full``."""
    sp = c.sp
    if sp.n_kv_swa is not None:
        return sp.n_kv_swa
    n_swa = model_of(c).metadata.get_int(f"{ARCH}.attention.sliding_window") or 0
    return pad(min(sp.n_kv, n_swa * (sp.n_seq_max if sp.n_streams == 1 else 1) + sp.n_ubatch))


def build(c: _Ctx, g: _Graph) -> _T:
    hp, sp = c.hp, c.sp
    model = model_of(c)
    T, n_out, L = c.n_tokens, c.n_outputs, hp.n_layer
    c.swa = _pattern(model, L)
    c.n_kv_swa = _n_kv_swa(c)
    backbone = model.metadata.get_int(f"{ARCH}.embedding_length_out") or hp.n_embd
    tokens = g.input("inp_tokens", "I32", T)
    inp_h = g.input("inp_h", "F32", backbone, T)
    target_embd = g.leaf("token_embd.weight (target)", "F32", (backbone, hp.n_vocab), buft="CPU")
    target_embd.weight = True
    x = g.new("inp_embd_target", "GET_ROWS", "F32", (backbone, T), target_embd, tokens)
    x = g.op("inp_embd_target", "SCALE", x)
    xh = g.new("inp_xh", "CONCAT", "F32", (2 * backbone, T), x, inp_h)
    cur = g.mul_mat("pre_proj", _w(c, "nextn.pre_projection.weight", 0), xh)
    full = gemma4._attn_inp(c, g, sp.n_kv, hp.head_k)
    swa = gemma4._attn_inp(c, g, c.n_kv_swa, hp.head_k_swa)
    c.pos = g.input("inp_pos", "I32", T)
    out_ids = g.input("out_ids", "I32", n_out)
    inp_l = cur
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        nh, _, hd, _ = gemma4._dims(c, il)
        inp = swa if c.swa[il] else full
        normed = gemma4._norm(c, g, inp_l, b + "attn_norm.weight", il)
        q = g.reshape(g.mul_mat(f"Qcur-{il}", _w(c, b + "attn_q.weight", il), normed), hd, nh, T)
        q = gemma4._norm(c, g, q, b + "attn_q_norm.weight", il)
        freqs = None if c.swa[il] else _w(c, "rope_freqs.weight", il)
        q = g.new(f"Qcur_pos-{il}", "ROPE", "F32", q.ne, q, c.pos, *([freqs] if freqs is not None else []))
        q = _rot(g, q, inp.k_rot)  # the Hadamard rotations of the target's quantized cache (n_rot_k of `other`)
        g.expand(q)  # build_attn expands Q (K and V are null: the shared cache is only read)
        cur = _rot(g, gemma4._mha(c, g, q, il, il, inp), inp.v_rot)
        g.expand(cur)
        cur = g.mul_mat(f"attn_out-{il}", _w(c, b + "attn_output.weight", il), cur)
        if il == L - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (cur.ne[0], n_out), cur, out_ids)
            inp_l = g.new("node_rows", "GET_ROWS", "F32", (inp_l.ne[0], n_out), inp_l, out_ids)
        cur = gemma4._norm(c, g, cur, b + "post_attention_norm.weight", il)
        attn_out = g.op(f"attn_out-{il}", "ADD", cur, inp_l)
        cur = gemma4._ffn(c, g, gemma4._norm(c, g, attn_out, b + "ffn_norm.weight", il), il)
        cur = gemma4._norm(c, g, cur, b + "post_ffw_norm.weight", il, pin=False)  # built with il = -1
        cur = g.op(f"ffn_out-{il}", "ADD", cur, attn_out)
        inp_l = g.op(f"out_scaled-{il}", "MUL", cur, _w(c, b + "layer_output_scale.weight", il))
    g.at(GLOBAL)
    cur = gemma4._norm(c, g, inp_l, "output_norm.weight", L, pin=False)
    logits = g.mul_mat("result_output", _w(c, "token_embd.weight", L), cur)  # output: the duplicated embeddings
    logits.flags |= OUTPUT
    h_next = g.mul_mat("h_nextn", _w(c, "nextn.post_projection.weight", L), cur)
    h_next.flags |= OUTPUT
    g.expand(logits)
    return h_next


def unbuildable(model: GGUFModel) -> str | None:
    """gemma4-assistant.cpp's loader requires every layer's weights, the two projections and the window pattern;
    every layer must be a NextN layer (the graph runs ``n_layer_nextn`` layers, the cache shares them all)."""
    md = model.metadata
    n_layer = md.get_int(f"{ARCH}.block_count") or 0
    if (md.get_int(f"{ARCH}.nextn_predict_layers") or 0) != n_layer:
        return "the gemma4-assistant graph needs nextn_predict_layers = block_count (every layer a drafter layer)"
    if md.get(f"{ARCH}.attention.sliding_window_pattern") is None:
        return "the gemma4-assistant graph needs attention.sliding_window_pattern, which llama.cpp requires"
    if (md.get_int(f"{ARCH}.embedding_length_out") or 0) in (0, md.get_int(f"{ARCH}.embedding_length")):
        return "the gemma4-assistant graph needs embedding_length_out, the target's width, which llama.cpp requires"
    return _plain.needs(model, LAYER, ("nextn.pre_projection.weight", "nextn.post_projection.weight"), qkv=False)
