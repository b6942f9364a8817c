"""``apertus`` (src/models/apertus.cpp): the llama-style decoder with RMS norms of each Q and K head
before RoPE (optional norm biases, rope factors) and a non-gated FFN: ``ffn_up``, the xIELU activation
(``ggml_xielu``: a ``UNARY`` op of its own result tensor), ``ffn_down``; the output projection is its own
tensor (no tied embeddings)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _AttnInp, _Ctx, _inp_embd, _proj, _w
from ggufx.analysis.memory.graph.models._dense import Dense, _attention, decoder
from ggufx.model import GGUFModel

SPEC = Dense(qk_norm="head")
XIELU_KEYS = ("xielu.alpha_n", "xielu.alpha_p", "xielu.beta", "xielu.eps")  # the activation's parameters


def _attn(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """apertus.cpp's attention: llama's, with the RMS norms of each Q and K head."""
    return _attention(c, g, x, il, inp, False, SPEC)


def _ffn(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    """apertus.cpp's FFN: up, xIELU, down (no gate)."""
    b = f"blk.{il}."
    up = g.mul_mat(f"ffn_up-{il}", _w(c, b + "ffn_up.weight", il), x)
    act = g.op(f"ffn_xielu-{il}", "UNARY", up)
    return g.mul_mat(f"ffn_down-{il}", _w(c, b + "ffn_down.weight", il), act)


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph of apertus.cpp."""
    hp = c.hp
    x = decoder(c, g, _inp_embd(c, g), _attn, _ffn, SPEC)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    logits = _proj(c, g, "result_output", "output", cur, hp.n_layer)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    """Why this apertus file's graph cannot be built: a metadata key or a tensor the graph reads that the
    file lacks (apertus.cpp's ``load_arch_hparams`` and ``load_arch_tensors`` read them required:
    llama.cpp refuses the file)."""
    arch = model.architecture or ""
    # load_arch_hparams reads them required (llama-arch.cpp: no architecture prefix)
    key = next((k for k in XIELU_KEYS if k not in model.metadata), None)
    if key is not None:
        return f"the graph needs the metadata key {key}, which the file lacks"
    names = {t.name for t in model.tensors}
    n_layer = model.metadata.get_int(f"{arch}.block_count") or 0
    needed = ["token_embd.weight", "output_norm.weight", "output.weight"]
    roles = ("attn_norm", "attn_output", "ffn_norm", "ffn_up", "ffn_down", "attn_q_norm", "attn_k_norm")
    for il in range(min(n_layer, 513)):
        needed += [f"blk.{il}.{role}.weight" for role in roles]
        if f"blk.{il}.attn_qkv.weight" not in names:
            needed += [f"blk.{il}.attn_{r}.weight" for r in "qkv"]
    missing = next((n for n in needed if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
