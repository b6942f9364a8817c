"""``stablelm`` (src/models/stablelm.cpp: StableLM 2): layer norms with biases, partial rotary, optional
layer norms of each Q and K head; with ``ffn_norm`` (1.6B) the llama layer, without it (12B) the FFN
reads the attention's input norm and adds to the residual after the attention
(:data:`~._plain.STABLELM`)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, model_of
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense, build_dense
from ggufx.analysis.memory.graph.models._plain import STABLELM, Plain
from ggufx.model import GGUFModel


def spec(model: GGUFModel) -> Plain:
    """The file's graph: Q/K norms where ``blk.0.attn_q_norm`` exists, the parallel FFN where
    ``blk.0.ffn_norm`` does not (stablelm.cpp: both optional to the loader)."""
    names = {t.name for t in model.tensors}
    qk = "head" if "blk.0.attn_q_norm.weight" in names else ""
    residual = _plain.SEQ if "blk.0.ffn_norm.weight" in names else STABLELM
    return Plain(Dense(norm="NORM", qk_norm=qk), residual=residual)


def build(c: _Ctx, g: _Graph) -> _T:
    p = spec(model_of(c))
    return build_dense(c, g, p.attn) if p.residual == _plain.SEQ else _plain.build(c, g, p)


def unbuildable(model: GGUFModel) -> str | None:
    """Every layer like the first (each optional norm in all layers or none), and the tensors it reads."""
    p = spec(model)
    names = {t.name for t in model.tensors}
    n_layer = model.metadata.get_int("stablelm.block_count") or 0
    for role in ("attn_q_norm", "attn_k_norm", "ffn_norm"):
        have = [f"blk.{il}.{role}.weight" in names for il in range(n_layer)]
        if any(have) and not all(have):
            return f"stablelm graphs with {role} in some layers only are not simulated"
    return _plain.needs(model, _plain.layer_weights(p))
