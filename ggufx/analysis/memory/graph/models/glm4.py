"""``glm4`` (src/models/glm4.cpp): Q/K/V biases (or the fused projection), partial rotary, a norm after
attention, the fused gate-up FFN (``LLM_FFN_SWIGLU``) and a norm after it (built with the layer's
``il``, so pinned). Files with M-RoPE sections (GLM-4.1V: four positions per token) or NextN layers
are not built."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models._dense import Dense, build_dense, dense_unbuildable
from ggufx.format.values import GGUFArray
from ggufx.model import GGUFModel

SPEC = Dense(post_attn_norm=True, post_ffn_norm=True, post_ffn_norm_pin=True, fused_up=True)


def build(c: _Ctx, g: _Graph) -> _T:
    return build_dense(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    md = model.metadata
    if (md.get_int("glm4.nextn_predict_layers") or 0) > 0:
        return "glm4 graphs with NextN layers are not simulated"
    sections = md.get("glm4.rope.dimension_sections")
    rs = sections.tolist() if isinstance(sections, GGUFArray) else []
    if len(rs) >= 2 and rs[0] > 0 and rs[1] > 0:  # use_mrope (llama-hparams.cpp:352): 4 positions a token
        return "glm4 graphs with M-RoPE sections are not simulated"
    return dense_unbuildable(model, SPEC)
