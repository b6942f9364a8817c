"""``plamo`` (src/models/plamo.cpp: PLaMo-13B): RMS norms, Q/K/V (fused or separate), RoPE over the whole
head, attention and a SwiGLU FFN in parallel on the one input norm, ``(FFN + attention) + x`` (falcon's
residual, without a second norm); the head (required)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._plain import FALCON, Classic
from ggufx.model import GGUFModel

SPEC = Classic(residual=FALCON)


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build_classic(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    # plamo.cpp's load_arch_tensors: no ffn_norm; the head is required
    return _plain.needs(model, ("attn_norm", "attn_output", "ffn_gate", "ffn_up", "ffn_down"), ("output.weight",))
