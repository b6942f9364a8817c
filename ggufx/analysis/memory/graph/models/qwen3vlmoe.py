"""``qwen3vlmoe`` (src/models/qwen3vlmoe.cpp), the text decoder of Qwen3-VL-30B-A3B / 235B-A22B: the
``qwen3vl`` graph (:mod:`ggufx.analysis.memory.graph.models.qwen3vl`: RMS norms of each Q and K head,
M-RoPE, deepstack input rows ``n_embd * (1 + n_deepstack_layers)`` wide whose slices the first layers
add) with ``build_moe_ffn`` in place of the dense FFN (softmax routing, normalized weights, no shared
expert), and without qwen3vl.cpp's Qwen3-TTS logit padding."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _moe_dense
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, routed
from ggufx.analysis.memory.graph.models.qwen3vl import decoder
from ggufx.model import GGUFModel


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph of qwen3vlmoe.cpp (qwen3vl.cpp's, the experts for the FFN: qwen3vlmoe.cpp:144-157)."""
    return decoder(c, g, lambda cur, il: routed(c, g, cur, il, norm_w=True)[0])


def unbuildable(model: GGUFModel) -> str | None:
    """Why this qwen3vlmoe file's graph cannot be built: the M-RoPE sections (read required,
    qwen3vlmoe.cpp:5), the expert counts, or a tensor the graph reads missing (llama.cpp refuses the file)."""
    if f"{model.architecture}.rope.dimension_sections" not in model.metadata:
        return f"the graph needs the metadata key {model.architecture}.rope.dimension_sections, which the file lacks"
    return _moe_dense.unbuildable(model, lambda il: (["attn_q_norm", "attn_k_norm", *ROUTER], EXPERTS))
