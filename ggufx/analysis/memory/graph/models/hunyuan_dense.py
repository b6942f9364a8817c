"""``hunyuan-dense`` and ``hunyuan_vl`` (src/models/hunyuan-vl.cpp's graph, ``llama_model_hunyuan_vl::graph``,
which ``llama_model_hunyuan_dense`` reuses: Hunyuan-7B, the 0.5-4B dense models and HunyuanOCR): the
llama-style attention whose K and Q heads are RMS-normed after RoPE (hunyuan-moe's attention,
:mod:`._moe_dense`), a dense SwiGLU FFN. With XD-RoPE (``rope.dimension_sections`` whose first two
sections are positive: ``hparams.use_mrope()``) the RoPE is ``ggml_rope_multi`` and the positions input
holds four positions per token."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, model_of
from ggufx.analysis.memory.graph.models import _moe_dense, _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._dense import _ffn as dense_ffn
from ggufx.analysis.memory.graph.models._moe_dense import MoeDense
from ggufx.format.values import GGUFArray
from ggufx.model import GGUFModel

_DENSE = Dense()
_LAYER = ("attn_norm", "attn_output", "attn_q_norm", "attn_k_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def _ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """hunyuan-vl.cpp: ``build_ffn`` with SiLU and a parallel gate."""
    return dense_ffn(c, g, cur, il, _DENSE)


SPEC = MoeDense(_ffn, qk_norm_after_rope=True)
_MROPE = replace(SPEC, attn=Dense(n_pos=4))


def uses_mrope(model: GGUFModel) -> bool:
    """``llama_hparams::use_mrope``: the first two of the four rope sections positive (``get_key_or_arr``:
    one integer is every section)."""
    v = model.metadata.get(f"{model.architecture}.rope.dimension_sections")
    items = v.tolist() if isinstance(v, GGUFArray) else [v, v] if isinstance(v, int) else []
    return len(items) >= 2 and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in items[:2])


def build(c: _Ctx, g: _Graph) -> _T:
    return _moe_dense.build(c, g, _MROPE if uses_mrope(model_of(c)) else SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    return _plain.needs(model, _LAYER)
