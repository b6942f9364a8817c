"""``hunyuan-dense`` (src/models/hunyuan-vl.cpp's graph, ``llama_model_hunyuan_vl::graph``: Hunyuan-7B and
the 0.5-4B dense models): the llama-style attention whose K and Q heads are RMS-normed after RoPE
(hunyuan-moe's attention, :mod:`._moe_dense`), a dense SwiGLU FFN. M-RoPE (``hunyuan_vl`` files) is not
built here."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _moe_dense, _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._dense import _ffn as dense_ffn
from ggufx.analysis.memory.graph.models._moe_dense import MoeDense
from ggufx.model import GGUFModel

_DENSE = Dense()
_LAYER = ("attn_norm", "attn_output", "attn_q_norm", "attn_k_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """hunyuan-vl.cpp: ``build_ffn`` with SiLU and a parallel gate."""
    return dense_ffn(c, g, cur, il, _DENSE)


SPEC = MoeDense(_ffn, qk_norm_after_rope=True)


def build(c: _Ctx, g: _Graph) -> _T:
    return _moe_dense.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    """Files with M-RoPE sections (``hparams.use_mrope()``: the first two positive; the graph then
    reads four positions per token) are not built; else the tensors the graph reads."""
    sections = model.metadata.get("hunyuan-dense.rope.dimension_sections")
    if (
        isinstance(sections, (list, tuple))
        and len(sections) >= 2
        and all(isinstance(s, int) and s > 0 for s in sections[:2])
    ):
        return "hunyuan-dense graphs with M-RoPE sections are not simulated"
    return _plain.needs(model, _LAYER)
