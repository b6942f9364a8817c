"""``command-r`` (src/models/command-r.cpp: Command-R 35B, Command-R+): layer norm (``LLM_NORM``), the
attention and the FFN in parallel on the one input norm, both added to the residual; the logits scaled
by ``logit_scale`` when it is set. The layer norms of each Q and K head that files of 64 layers or more
have (command-r.cpp's loader) are not built here: such files get the generic estimate."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, model_of
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import COHERE, Plain
from ggufx.model import GGUFModel

SPEC = Plain(Dense(norm="NORM"), residual=COHERE)


def spec(model: GGUFModel) -> Plain:
    """The file's graph: ``if (f_logit_scale)`` a SCALE of the logits (command-r.cpp:136-138)."""
    scale = model.metadata.get("command-r.logit_scale")
    return replace(SPEC, attn=replace(SPEC.attn, logit_scale=isinstance(scale, (int, float)) and scale != 0))


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build(c, g, spec(model_of(c)))


def unbuildable(model: GGUFModel) -> str | None:
    norm = next((t.name for t in model.tensors if t.name.endswith(("attn_q_norm.weight", "attn_k_norm.weight"))), None)
    if norm:
        return f"command-r graphs with Q/K norms ({norm}) are not simulated"
    return _plain.needs(model, _plain.layer_weights(SPEC))
