"""The ``mamba`` and ``mamba2`` decoders (src/models/mamba.cpp, the graph ``llama_model_mamba2`` shares
with Mamba-1): every layer an RMS norm, a Mamba-1 mixer (``build_mamba_layer``,
:func:`~ggufx.analysis.memory.graph.models.ssm.mamba_layer`) or a Mamba-2 one (``build_mamba2_layer``,
:func:`~ggufx.analysis.memory.graph.models.ssm.mamba2_layer`) and the residual; no attention, no FFN."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _norm
from ggufx.analysis.memory.graph.models._dense import output, tied_head
from ggufx.analysis.memory.graph.models.ssm import (
    MambaDims,
    check_shapes,
    mamba2_dims,
    mamba2_layer,
    mamba_dims,
    mamba_layer,
    rs_inp,
)
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph's logits (mamba.cpp:105-150)."""
    hp = c.hp
    layer = mamba2_layer if hp.arch == "mamba2" else mamba_layer
    n_out, E = c.n_outputs, hp.n_embd
    x = _inp_embd(c, g)
    rs = rs_inp(c, g)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        cur = layer(c, g, cur, il, rs)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            x = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), x, out_ids)
        x = g.op(f"l_out-{il}", "ADD", cur, x)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """Why the mamba / mamba2 graph cannot be built from this file (None when it can): the Mamba or
    Mamba-2 dimensions and every tensor the graph reads in the shape mamba.cpp:35-83 / mamba2.cpp:35-80
    creates it."""
    d = mamba2_dims(model) if model.architecture == "mamba2" else mamba_dims(model)
    if isinstance(d, str):
        return d
    hp = hparams(model)
    E = hp.n_embd
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,)}
    for il in range(hp.n_layer):
        w = {"attn_norm.weight": (E,), **(d.tensors(E) if isinstance(d, MambaDims) else d.tensors(E, norm=True))}
        shapes |= {f"blk.{il}.{n}": s for n, s in w.items()}
    return check_shapes(model, shapes)
