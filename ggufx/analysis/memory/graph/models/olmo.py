"""``olmo`` (src/models/olmo.cpp: OLMo 1): layer norms without weights or biases (``build_norm(x, NULL,
NULL, LLM_NORM)``), llama's attention and SwiGLU FFN without biases, the head (tied embeddings without
``output``); ``attention.clamp_kqv`` (OLMo 1.7) clamps Q, K and V in ``build_qkv``."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import Classic, Plain
from ggufx.model import GGUFModel

SPEC = Classic(Plain(Dense(norm="NORM")), clamp=True)


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build_classic(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    names = {t.name for t in model.tensors}
    n_layer = model.metadata.get_int("olmo.block_count") or 0
    needed = ["token_embd.weight"]  # olmo.cpp's load_arch_tensors: no norm weights at all
    for il in range(min(n_layer, 513)):
        needed += [f"blk.{il}.{r}.weight" for r in ("attn_output", "ffn_gate", "ffn_up", "ffn_down")]
        if f"blk.{il}.attn_qkv.weight" not in names:
            needed += [f"blk.{il}.attn_{r}.weight" for r in "qkv"]
    missing = next((n for n in needed if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
