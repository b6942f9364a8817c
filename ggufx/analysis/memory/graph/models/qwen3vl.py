"""``qwen3vl`` (src/models/qwen3vl.cpp), the text decoder of Qwen3-VL: the qwen3 graph (RMS norms of
each Q and K head) with M-RoPE (four positions per token) and deepstack: the input embeddings are
``n_embd * (1 + n_deepstack_layers)`` wide (``hparams.n_embd_inp()``, llama-hparams.cpp:118), the
token rows padded to that width (``build_inp_embd``, llama-graph.cpp:2452), the decoder reads the first
``n_embd`` columns of each row, and layer ``il < n_deepstack_layers`` adds the ``il + 1``-th slice of
the embeddings to its output (so the padded embeddings stay alive until the last such layer)."""

from __future__ import annotations

from collections.abc import Callable

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _w, model_of
from ggufx.analysis.memory.graph.models._dense import Dense, _attention, _ffn, _n, dense_unbuildable, output, tied_head
from ggufx.model import GGUFModel

SPEC = Dense(qk_norm="head", n_pos=4)


def read_deepstack(model: GGUFModel) -> int:
    """``n_deepstack_layers`` (qwen3vl.cpp:4: optional, 0 without it)."""
    arch = model.architecture or ""
    return max(model.metadata.get_int(f"{arch}.n_deepstack_layers") or 0, 0)


def n_deepstack(c: _Ctx) -> int:
    """The model's deepstack layers."""
    return read_deepstack(model_of(c))


def inp_embd_wide(c: _Ctx, g: _Graph, n_embd_inp: int) -> tuple[_T, _T]:
    """``build_inp_embd`` (llama-graph.cpp:2413-2530) of a model whose input rows are ``n_embd_inp``
    wide: each token branch's rows padded to that width (``ggml_pad``), the three branches of
    ``ggml_build_forward_select``, then the view of the first ``n_embd`` columns of the selected
    (token) branch. Returns that view (the embeddings) and the padded rows (``res->t_inp_embd``'s
    source, which the deepstack slices view)."""
    T, E = c.n_tokens, c.hp.n_embd
    tok = _w(c, "token_embd.weight", -1)
    tokens = g.input("inp_tokens", "I32", T)
    rows = g.new("inp_rows", "GET_ROWS", "F32", (E, T), tok, tokens)
    padded = g.new("inp_pad", "PAD", "F32", (n_embd_inp, T), rows)
    inp_embd = g.input("inp_embd", "F32", n_embd_inp, T)
    mixed_tokens = g.input("inp_mixed_tokens", "I32", T)
    mixed_slots = g.input("inp_mixed_slots", "I64", T)
    mixed_embd = g.input("inp_mixed_embd", "F32", n_embd_inp, T)
    mixed_rows = g.new("node_1", "GET_ROWS", "F32", (E, T), tok, mixed_tokens)
    mixed_pad = g.new("node_1_pad", "PAD", "F32", (n_embd_inp, T), mixed_rows)
    dup = g.new("node_2", "DUP", "F32", (n_embd_inp, T), mixed_embd)
    sel = g.view(dup, dup.ne, dup.nb, "SET_ROWS")
    sel.src = [mixed_pad, mixed_slots, dup]
    for t in (padded, inp_embd, sel):
        g.expand(t)
    embd = g.view(padded, (E, T), padded.nb[:2])
    g.expand(embd)
    return embd, padded


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph of qwen3vl.cpp."""
    return decoder(c, g, lambda cur, il: _ffn(c, g, cur, il, SPEC))


def decoder(c: _Ctx, g: _Graph, ffn: Callable[[_T, int], _T]) -> _T:
    """qwen3vl.cpp's decoder with ``ffn(cur, il)`` for each layer's FFN (qwen3vlmoe.cpp: the experts)."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    n_ds = n_deepstack(c)
    x, padded = inp_embd_wide(c, g, E * (1 + n_ds)) if n_ds else (_inp_embd(c, g), None)
    c.pos = g.input("inp_pos", "I32", T * SPEC.n_pos)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        inp_sa = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, SPEC)
        cur = _attention(c, g, cur, il, inp, False, SPEC)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _n(c, g, ffn_inp, b + "ffn_norm.weight", il, SPEC)
        cur = ffn(cur, il)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
        if il < n_ds:  # qwen3vl.cpp, qwen3vlmoe.cpp:164-168: + a view of the il+1-th n_embd columns of the input rows
            assert padded is not None
            ds = g.view(padded, (E, T), padded.nb[:2])
            x = g.op(f"deepstack_out-{il}", "ADD", x, ds)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """Why this qwen3vl file's graph cannot be built: the M-RoPE sections or a tensor the graph reads
    missing (llama.cpp refuses the file); a
    Qwen3-TTS codec head (an output narrower than the vocabulary: qwen3vl.cpp pads the logits)."""
    if f"{model.architecture}.rope.dimension_sections" not in model.metadata:  # read required (qwen3vl.cpp:5)
        return f"the graph needs the metadata key {model.architecture}.rope.dimension_sections, which the file lacks"
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    out, tok = tensors.get("output.weight"), tensors.get("token_embd.weight")
    if out and tok and len(out) == 2 and len(tok) == 2 and out[1] != tok[1]:
        return "qwen3vl graphs with an output narrower than the vocabulary (Qwen3-TTS) are not simulated"
    return dense_unbuildable(model, SPEC)
